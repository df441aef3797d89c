#!/bin/bash
# Round 6, one device call (planned for the session after round 5): install (sweep + SB3 wheels into .box/pfx); finish
# round 5's sweep from its carried state (.carry/, RESTORE: 36 updates per run left); SB3 PPO over 16 processes on
# the same box; then the rollout's parts side by side, interleaved (ESPER_ENV_PARTS=segments / one / segments / one):
# K = 60 HalfCheetah, 6 cells mixed, W workers, UPD updates each (experiments/cuda_eager/group_run.py); then, if
# the call has time left (PROFILE=1), one more run of each layout under py-spy (12 s of samples after the start-up, the
# main process and the env workers: $OUT/pyspy_<parts>.txt, collapsed stacks), to see where the main process's time
# per step goes (round 5: the rollout's host time is ~1.0 s of 2.2 s per update); summarise with spy_summary.py.
# The carry (state 48.6 MB + wheels) fits the 64 MiB only beside a slim tree: run `box_tree.sh slim` before the call
# and `box_tree.sh full` after it. Carry: .carry, .wheelhouse/sweep, .wheelhouse/sb3, .wheelhouse/pyspy.
#   LIMIT=240 bash experiments/gpu_throughput/round6_box.sh
set -u
S=$(date +%s); PROFILE=${PROFILE:-1}
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; PY=${PY:-python3}; ROOT=${ROOT:-/tmp/r6}; UPD=${UPD:-6}
W=${W:-15}; SPIN=${SPIN:-1000}; LIMIT=${LIMIT:-240}; ORDER=${ORDER:-segments one segments one}
GR=$PWD/experiments/cuda_eager/group_run.py
ALL=exact/fp32,tanh/fp32,exact/bf16,tanh/bf16,exact/fp16,tanh/fp16
exec > >(tee "$OUT/round6_log.txt") 2>&1
source "$PWD/experiments/box_install.sh"
box_setup "gymnasium, hydra, mujoco, stable_baselines3" "$PWD/.wheelhouse/sweep/*.whl $PWD/.wheelhouse/sb3/*.whl" || exit 1
rm -rf "$ROOT"; mkdir -p "$ROOT"
echo "== finish the sweep (RESTORE=.carry, at most $LIMIT s)"
RESTORE=.carry LIMIT=$LIMIT W=$W SPIN=$SPIN WH=$PWD/.wheelhouse/sweep OUT=$OUT \
  bash experiments/gpu_throughput/sweep_box.sh > "$ROOT/sweep_stdout.txt" 2>&1
grep -v "interrupted | SIGTERM" "$ROOT/sweep_stdout.txt" | tail -30
box_sb3 16 20480 "$ROOT/sb3"
n=0
for v in $ORDER; do
  n=$((n + 1)); d=$ROOT/$v$n
  echo "== K=60 mixed, ESPER_ENV_PARTS=$v, env_workers=$W"
  ESPER_ENV_PARTS=$v timeout 150 $PY $GR --k 60 --device cuda --updates $UPD --env halfcheetah --out $d \
    --cells $ALL env_workers=$W env_spin_us=$SPIN > $d.log 2>&1 || tail -5 $d.log
  $PY experiments/gpu_throughput/timing_summary.py $d
done
if [ "$PROFILE" = 1 ] && [ $(( $(date +%s) - S )) -lt 430 ]; then
  $PY -m pip install -q --no-deps --no-index --prefix "$PWD/.box/pyspy" --break-system-packages \
    "$PWD"/.wheelhouse/pyspy/*.whl && SPY=$(ls "$PWD"/.box/pyspy/bin/py-spy) || SPY=
  for v in segments one; do
    [ -n "$SPY" ] || break
    d=$ROOT/profile_$v
    echo "== py-spy: K=60 mixed, ESPER_ENV_PARTS=$v"
    ESPER_ENV_PARTS=$v timeout 150 $PY $GR --k 60 --device cuda --updates 8 --env halfcheetah --out $d \
      --cells $ALL env_workers=$W env_spin_us=$SPIN > $d.log 2>&1 & pid=$!
    sleep 30
    timeout 40 "$SPY" record --nonblocking --subprocesses -r 100 -d 12 -f raw -p $pid -o "$OUT/pyspy_$v.txt" \
      > $d.spy.log 2>&1 || tail -3 $d.spy.log
    wait $pid
    $PY experiments/gpu_throughput/timing_summary.py $d
  done
fi
$PY experiments/gpu_throughput/timing_summary.py --collect "$OUT/round6_timings.json" "$ROOT"
date -u
