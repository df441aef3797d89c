#!/bin/bash
# The primary's analysis as registered ("Analysis" in the README), on the dev side, once all 480 runs have completed
# (minutes; the session-14 rehearsal on a synthetic sweep of the same shape took 35 s for the report):
#   bash experiments/mujoco_gelu_amp/analyse.sh [SWEEP [OUT]]
# 1. inventory.py --require-complete: exit 1, nothing computed, while any registered run has not completed in SWEEP
#    (the study is blind until complete; a new checkout unpacks the kept runs first, as inventory.py says);
# 2. esper-report by the rule stored in the runs (--reps 20000 --seed 0, as registered) into OUT/report;
# 3. esper-report --recompute OUT/report: the verdicts again from the report's per-run CSVs alone (exit 1 on a
#    difference);
# 4. the CPU twin against the CUDA cells (`--vs`, descriptive) into OUT/exploratory/cpu_vs_cuda, when the twin's runs
#    are unpacked in TWIN (outputs/sweeps/mujoco_gelu_amp_cpu: archive.py unpack exploratory/cpu/runs/*.tar.xz).
# PY: the Python with esper-exp installed (default .venv/bin/python where it exists, else python3).
set -eu
SWEEP=${1:-outputs/sweeps/mujoco_gelu_amp}; OUT=${2:-experiments/mujoco_gelu_amp}
TWIN=${TWIN:-outputs/sweeps/mujoco_gelu_amp_cpu}
PY=${PY:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
report() { "$PY" -m esper_exp.analysis.report "$@"; }  # esper-report
"$PY" experiments/mujoco_gelu_amp/inventory.py --sweep "$SWEEP" --require-complete > /dev/null
echo "== all registered runs completed in $SWEEP: the report"
report "$SWEEP" --out "$OUT/report" --reps 20000 --seed 0
echo "== recompute"
report --recompute "$OUT/report"
if [ -d "$TWIN" ]; then
  echo "== the CPU twin against the CUDA cells (descriptive)"
  report "$SWEEP" --vs "$TWIN" --out "$OUT/exploratory/cpu_vs_cuda" --reps 20000 --seed 0
else
  echo "no $TWIN: for the CPU-vs-CUDA comparison, python experiments/gpu_throughput/archive.py unpack" \
    "experiments/mujoco_gelu_amp/exploratory/cpu/runs/*.tar.xz outputs/sweeps; then this script again"
fi
