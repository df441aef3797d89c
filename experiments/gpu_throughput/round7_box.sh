#!/bin/bash
# Round 7 (optional, for a session whose pilot calls leave device time): what helps an env-bound group? Issue 13's
# Hopper pilot (40 members, 4 cells: one fp32 and one bf16 segment, 15 env workers, spin 1000, ESPER_ENV_PARTS=one)
# ran at 28.4k env steps/s per update with the env wait 1.98 s of 2.9 s, CPUs ~82% busy, GPU ~10%: the physics on 15
# workers sharing ~8 physical cores is the bottleneck. Side by side, interleaved (two rounds of every layout):
#   one / segments (the two precision parts pipelined: one part's inference while the other's envs step),
#   env_workers 15 / 8 (one per physical core, no hyperthread sibling stepping physics), env_spin_us 1000 / 0
# each experiments/cuda_eager/group_run.py --k 40 over the pilot's 4 cells, UPD updates, HalfCheetah's round 6 harness.
# Carry: .wheelhouse/sweep.   BUDGET=400 bash experiments/gpu_throughput/round7_box.sh
set -u
S=$(date +%s); BUDGET=${BUDGET:-400}
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; PY=${PY:-python3}; ROOT=${ROOT:-/tmp/r7}; UPD=${UPD:-6}; ENV=${ENV:-hopper}
GR=$PWD/experiments/cuda_eager/group_run.py
CELLS=exact/fp32,tanh/fp32,exact/bf16,tanh/bf16
exec > >(tee "$OUT/round7_log.txt") 2>&1
source "$PWD/experiments/box_install.sh"
box_setup "gymnasium, hydra, mujoco" "$PWD/.wheelhouse/sweep/*.whl" || exit 1
rm -rf "$ROOT"; mkdir -p "$ROOT"
n=0
for round in 1 2; do
  for v in "one 15 1000" "segments 15 1000" "one 8 1000" "one 15 0"; do
    set -- $v; n=$((n + 1)); d=$ROOT/${1}_w${2}_s${3}_$n
    [ $(( $(date +%s) - S )) -lt "$BUDGET" ] || { echo "budget: stop before $d"; break 2; }
    echo "== $ENV K=40 4 cells, ESPER_ENV_PARTS=$1 env_workers=$2 env_spin_us=$3"
    ESPER_ENV_PARTS=$1 timeout 150 $PY $GR --k 40 --device cuda --updates $UPD --env $ENV --out $d --cells $CELLS \
      env_workers=$2 env_spin_us=$3 > $d.log 2>&1 || tail -5 $d.log
    $PY experiments/gpu_throughput/timing_summary.py $d
  done
done
$PY experiments/gpu_throughput/timing_summary.py --collect "$OUT/round7_timings.json" "$ROOT"
date -u
