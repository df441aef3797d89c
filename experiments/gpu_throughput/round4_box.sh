#!/bin/bash
# Round 4, one device call, then the sweep in the same call: install (into .box/pfx, where sweep_box.sh finds it);
# the GPU suite; K=60 HalfCheetah with the sweep's 6 cells mixed (group_run.py, UPD updates, W workers) timed with
# this tree and with the tree in ab_old/ (OLD: an earlier commit's esper_exp, put there by the caller:
# `git archive <commit> esper_exp | tar -x -C ab_old`) side by side, interleaved new / old / new; one run per process
# (K=1, in-process envs) and SB3 PPO over 16 processes (REF=1); then sweep_box.sh for what is left of BUDGET seconds (not if
# the suite failed or this tree was slower than ab_old). Carries .wheelhouse/sweep, .wheelhouse/pytest, .wheelhouse/sb3.
#   BUDGET=570 bash experiments/gpu_throughput/round4_box.sh
set -u
S=$(date +%s); OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; PY=${PY:-python3}; ROOT=${ROOT:-/tmp/r4}; UPD=${UPD:-6}
W=${W:-15}; SPIN=${SPIN:-1000}; BUDGET=${BUDGET:-570}; SWEEP=${SWEEP:-1}; REF=${REF:-1}; VARIANTS=${VARIANTS:-new old new2}
GR=$PWD/experiments/cuda_eager/group_run.py
CELLS=exact/fp32,tanh/fp32,exact/bf16,tanh/bf16,exact/fp16,tanh/fp16
exec > >(tee "$OUT/round4_log.txt") 2>&1
source "$PWD/experiments/box_install.sh"
box_setup "gymnasium, hydra, mujoco, pytest, stable_baselines3" \
  "$PWD/.wheelhouse/sweep/*.whl $PWD/.wheelhouse/pytest/*.whl $PWD/.wheelhouse/sb3/*.whl" || exit 1
rm -rf "$ROOT"; mkdir -p "$ROOT"
box_suite "$OUT/suite.txt"; suite=$?
for v in $VARIANTS; do
  echo "== K=60 mixed ($v), env_workers=$W env_spin_us=$SPIN"
  pp=$PYTHONPATH; [ "$v" = old ] && pp=$PWD/ab_old:$PYTHONPATH
  PYTHONPATH=$pp timeout 150 $PY $GR --k 60 --device cuda --updates $UPD --env halfcheetah --out $ROOT/$v \
    --cells $CELLS env_workers=$W env_spin_us=$SPIN > $ROOT/$v.log 2>&1 || tail -5 $ROOT/$v.log
  $PY experiments/gpu_throughput/timing_summary.py $ROOT/$v
done
if [ "$REF" = 1 ]; then
echo "== one run per process (HalfCheetah, exact/fp32, device=cuda, in-process envs)"
timeout 120 $PY $GR --k 1 --device cuda --updates 8 --env halfcheetah --out $ROOT/single > $ROOT/single.log 2>&1 \
  || tail -3 $ROOT/single.log
$PY experiments/gpu_throughput/timing_summary.py $ROOT/single
box_sb3 16 ${SB3_STEPS:-20480} $ROOT/sb3
fi
$PY - "$ROOT" $VARIANTS single > "$OUT/timings.json" <<'PYEOF'
import json, sys
out = {}
for v in sys.argv[2:]:
    try:
        out[v] = json.load(open(f"{sys.argv[1]}/{v}/timing.json"))
    except (OSError, ValueError) as e:
        out[v] = {"error": str(e)}
print(json.dumps(out))
PYEOF
faster=$($PY - "$ROOT" <<'PYEOF'
import json, sys
def rate(v):
    try:
        t = json.load(open(f"{sys.argv[1]}/{v}/timing.json"))
    except (OSError, ValueError):
        return None
    u = t["updates"][1:] or t["updates"]
    return t["steps_per_update"] * len(u) / sum(x["wall_s"] for x in u)
new = [r for r in (rate("new"), rate("new2")) if r]
old = rate("old")
print(1 if new and (old is None or min(new) >= old) else 0)
PYEOF
)
echo "this tree at least as fast as ab_old in every pair: $faster"
left=$(( BUDGET - ($(date +%s) - S) - 70 ))
echo "== $(( $(date +%s) - S )) s used; sweep for $left s"
if [ "$SWEEP" = 1 ] && [ $suite = 0 ] && [ "$faster" = 1 ] && [ $left -gt 60 ]; then
  LIMIT=$left WH=$PWD/.wheelhouse/sweep OUT=$OUT W=$W SPIN=$SPIN bash experiments/gpu_throughput/sweep_box.sh
fi
date -u
