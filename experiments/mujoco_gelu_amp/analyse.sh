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
# 5. each CUDA exploratory arm whose registered runs (`inventory.py --registered ARM`: 20 or 40) have all completed
#    in ARMS/mujoco_gelu_amp_<arm> (default: SWEEP's parent; a new checkout unpacks exploratory/<arm>/runs/*.tar.xz):
#    its report by its own stored rule into OUT/exploratory/<arm>, the recompute, and for fp16, alpha1, width384 and
#    compile the comparison with the primary's cells (`--vs`, descriptive; compile's compiled bf16 cells against the
#    primary's eager bf16 ones, added in session 21 before the arm completed); an arm with fewer is named and left out.
#    fp16_fixed (added in session 22, before any of its runs): the fp16 arm again after the flat-gradient fix
#    (df46b10), reported as fp16 is, into exploratory/fp16_fixed and exploratory/fp16_fixed_vs_fp32.
# PY: the Python with esper-exp installed (default .venv/bin/python where it exists, else python3).
set -eu
SWEEP=${1:-outputs/sweeps/mujoco_gelu_amp}; OUT=${2:-experiments/mujoco_gelu_amp}
TWIN=${TWIN:-outputs/sweeps/mujoco_gelu_amp_cpu}; ARMS=${ARMS:-$(dirname "$SWEEP")}
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
completed() {  # how many runs of sweep dir $1 have run.json status "completed"
  "$PY" -c 'import json, pathlib, sys
runs = pathlib.Path(sys.argv[1]).glob("*/seed=*/run.json")
print(sum(json.loads(p.read_text()).get("status") == "completed" for p in runs))' "$1"
}
for arm in fp16 fp16_fixed width384 compile alpha1 3m; do
  want=$("$PY" experiments/mujoco_gelu_amp/inventory.py --registered "$arm"); d=$ARMS/mujoco_gelu_amp_$arm
  if [ ! -d "$d" ]; then echo "arm $arm: no $d (python experiments/gpu_throughput/archive.py unpack" \
    "experiments/mujoco_gelu_amp/exploratory/$arm/runs/*.tar.xz outputs/sweeps, where kept)"; continue; fi
  n=$(completed "$d")
  if [ "$n" != "$want" ]; then echo "arm $arm: $n of $want registered runs completed in $d: not analysed"; continue; fi
  echo "== arm $arm ($n runs): its report, the recompute"
  report "$d" --out "$OUT/exploratory/$arm" --reps 20000 --seed 0
  report --recompute "$OUT/exploratory/$arm"
  case $arm in
    fp16|fp16_fixed) report "$SWEEP" --vs "$d" --pair exact/fp16=exact/fp32 --pair tanh/fp16=tanh/fp32 \
            --out "$OUT/exploratory/${arm}_vs_fp32" --reps 20000 --seed 0;;
    alpha1) report "$SWEEP" --vs "$d" --out "$OUT/exploratory/alpha1_vs_ramp" --reps 20000 --seed 0;;
    width384) report "$SWEEP" --vs "$d" --out "$OUT/exploratory/width384_vs_64" --reps 20000 --seed 0;;
    compile) report "$SWEEP" --vs "$d" --pair exact/bf16/compiled=exact/bf16 --pair tanh/bf16/compiled=tanh/bf16 \
               --out "$OUT/exploratory/compile_vs_eager" --reps 20000 --seed 0;;
  esac
done
