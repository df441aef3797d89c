#!/bin/bash
# Round 5, one device call: install (into .box/pfx, where sweep_box.sh finds it); the GPU suite; then the sweep's two
# layouts side by side, interleaved (one / two / one / two), UPD updates each with experiments/cuda_eager/group_run.py:
#   one: the 60 members (6 cells x 10 seeds) in ONE process with W1 env workers (the launcher's default on CUDA);
#   two: TWO processes at once on the one GPU, 30 members each (3 cells x 10 seeds, the cells the launcher puts
#        together with hydra.launcher.max_members=30: members sorted by precision, then GELU) with W2 workers each,
#        so that one group can update on the GPU while the other steps its envs on the CPUs.
# Then sweep_box.sh in the faster layout for what is left of BUDGET seconds (not if the suite failed); the layout is
# written to .box/layout, where later calls (`LAYOUT=$(cat .box/layout) ...`) find it.
#   BUDGET=575 bash experiments/gpu_throughput/round5_box.sh
set -u
S=$(date +%s); OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; PY=${PY:-python3}; ROOT=${ROOT:-/tmp/r5}; UPD=${UPD:-6}
DEV=${DEV:-cuda}; ENV=${ENV:-halfcheetah}; SUITE=${SUITE:-1}
W1=${W1:-15}; W2=${W2:-7}; SPIN=${SPIN:-1000}; BUDGET=${BUDGET:-575}; ORDER=${ORDER:-one two one two}
GR=$PWD/experiments/cuda_eager/group_run.py
ALL=exact/fp32,tanh/fp32,exact/bf16,tanh/bf16,exact/fp16,tanh/fp16
HALF_A=exact/bf16,tanh/bf16,exact/fp16  # launcher order: (precision, gelu) sorted -> bf16/exact, bf16/tanh, fp16/exact
HALF_B=tanh/fp16,exact/fp32,tanh/fp32   #                                        | fp16/tanh, fp32/exact, fp32/tanh
exec > >(tee "$OUT/round5_log.txt") 2>&1
source "$PWD/experiments/box_install.sh"
box_setup "gymnasium, hydra, mujoco, pytest" "$PWD/.wheelhouse/sweep/*.whl $PWD/.wheelhouse/pytest/*.whl" || exit 1
rm -rf "$ROOT"; mkdir -p "$ROOT"
suite=0; [ "$SUITE" = 1 ] && { box_suite "$OUT/suite.txt"; suite=$?; }
n=0
for v in $ORDER; do
  n=$((n + 1)); d=$ROOT/$v$n
  if [ "$v" = one ]; then
    echo "== one: K=60 mixed in one process, env_workers=$W1"
    timeout 150 $PY $GR --k 60 --device $DEV --updates $UPD --env $ENV --out $d --cells $ALL \
      env_workers=$W1 env_spin_us=$SPIN > $d.log 2>&1 || tail -5 $d.log
    $PY experiments/gpu_throughput/timing_summary.py $d
  else
    echo "== two: 2 x K=30 mixed, two processes at once, env_workers=$W2 each"
    pids=()
    for h in a b; do
      cells=$HALF_A; [ $h = b ] && cells=$HALF_B
      timeout 150 $PY $GR --k 30 --device $DEV --updates $UPD --env $ENV --out $d$h --cells $cells \
        env_workers=$W2 env_spin_us=$SPIN > $d$h.log 2>&1 & pids+=($!)
    done
    wait "${pids[@]}" || { tail -5 ${d}a.log; tail -5 ${d}b.log; }
    $PY experiments/gpu_throughput/timing_summary.py ${d}a ${d}b
  fi
done
$PY experiments/gpu_throughput/timing_summary.py --collect "$OUT/round5_timings.json" "$ROOT"
layout=$($PY - "$ROOT" <<'PYEOF'
import json, pathlib, statistics, sys
sys.path.insert(0, "experiments/gpu_throughput")
from timing_summary import rate  # env steps/s over the updates after the first (graph capture)
rates = {"one": [], "two": []}
root = pathlib.Path(sys.argv[1])
for d in sorted(p for p in root.iterdir() if p.is_dir()):
    try:
        if d.name.startswith("one"):
            rates["one"].append(rate(d))
        elif d.name.startswith("two") and d.name.endswith("a"):
            rates["two"].append(rate(d) + rate(d.with_name(d.name[:-1] + "b")))
    except (OSError, ValueError, KeyError):
        pass
print(json.dumps({k: [round(r) for r in v] for k, v in rates.items()}), file=sys.stderr)
ok = {k: statistics.median(v) for k, v in rates.items() if v}
print(max(ok, key=ok.get) if ok else "one")
PYEOF
)
echo "faster layout: $layout"; echo "$layout" > .box/layout
left=$(( BUDGET - ($(date +%s) - S) - 70 ))
echo "== $(( $(date +%s) - S )) s used; sweep ($layout) for $left s"
if [ $suite = 0 ] && [ $left -gt 60 ]; then
  if [ "$layout" = two ]; then
    LIMIT=$left NJ=2 W=$W2 EXTRA=hydra.launcher.max_members=30 WH=$PWD/.wheelhouse/sweep OUT=$OUT SPIN=$SPIN \
      bash experiments/gpu_throughput/sweep_box.sh
  else
    LIMIT=$left W=$W1 WH=$PWD/.wheelhouse/sweep OUT=$OUT SPIN=$SPIN bash experiments/gpu_throughput/sweep_box.sh
  fi
fi
date -u
