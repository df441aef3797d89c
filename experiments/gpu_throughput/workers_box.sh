#!/bin/bash
# Round 3, second call: is the env side starved of cores? K=60 mixed (6 cells) group_run with WS env workers each,
# the env ceiling at the same counts, CPU steal sampled from /proc/stat meanwhile, and SB3 PPO over 16 processes
# (1 thread each). Carries .wheelhouse/sweep and .wheelhouse/sb3.   WS="15 14" bash experiments/gpu_throughput/workers_box.sh
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; PY=${PY:-python3}; ROOT=${ROOT:-/tmp/wb}; UPD=${UPD:-8}; WS=${WS:-15 14}
SPIN=${SPIN:-1000}; SB3_STEPS=${SB3_STEPS:-20480}
GR=$PWD/experiments/cuda_eager/group_run.py
CELLS=exact/fp32,tanh/fp32,exact/bf16,tanh/bf16,exact/fp16,tanh/fp16
exec > >(tee "$OUT/workers_log.txt") 2>&1
source "$PWD/experiments/box_install.sh"
box_banner
NEED="gymnasium, hydra, mujoco, stable_baselines3" \
  WHEELS="$PWD/.wheelhouse/sweep/*.whl $PWD/.wheelhouse/sb3/*.whl" box_install || exit 1
rm -rf "$ROOT"; mkdir -p "$ROOT"
steal() {  # cpu steal share (percent of all cpu time) over the next $1 seconds, from /proc/stat
  local a b; a=($(head -1 /proc/stat)); sleep "$1"; b=($(head -1 /proc/stat))
  local tot=0 i; for i in 1 2 3 4 5 6 7 8; do tot=$(( tot + b[i] - a[i] )); done
  echo "steal $(( 100 * (b[8] - a[8]) / (tot > 0 ? tot : 1) ))% user $(( 100 * (b[1] - a[1]) / (tot > 0 ? tot : 1) ))% idle $(( 100 * (b[4] - a[4]) / (tot > 0 ? tot : 1) ))% over ${1}s"
}
echo "== idle box"; steal 3
for w in $WS; do
  echo "== env ceiling, $w workers"
  timeout 90 $PY experiments/gpu_throughput/env_ceiling.py --k 60 --workers $w --parts 3 --spin $SPIN --steps 2000
  echo "== K=60 mixed, env_workers=$w env_spin_us=$SPIN, $UPD updates"
  timeout 150 $PY $GR --k 60 --device cuda --updates $UPD --env halfcheetah --out $ROOT/w$w --cells $CELLS \
    env_workers=$w env_spin_us=$SPIN > $ROOT/w$w.log 2>&1 &
  pid=$!; sleep 30; steal 10; top -b -n 1 -w 200 | head -30 | tail -24; wait $pid
  $PY experiments/gpu_throughput/timing_summary.py $ROOT/w$w
  cp $ROOT/w$w/timing.json $OUT/timing_mixed_w$w.json 2>/dev/null
done
box_sb3 16 $SB3_STEPS $ROOT/sb3
date -u
