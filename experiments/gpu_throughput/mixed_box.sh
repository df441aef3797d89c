#!/bin/bash
# One device call: the GPU suite (incl. the mixed-group test), then one process of K=60 HalfCheetah members with 15 env
# workers, pure (one cell) and mixed (the sweep's 6 GELU x precision cells, 10 seeds each), UPD updates each.
# Carries .wheelhouse/issue12 and .wheelhouse/pytest.   OUT=... bash experiments/gpu_throughput/mixed_box.sh
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; PY=${PY:-python3}; ROOT=${ROOT:-/tmp/gm}; UPD=${UPD:-4}; W=${W:-15}
SUITE=${SUITE:-1}; VARIANTS=${VARIANTS:-pure mixed}; SPINS=${SPINS:-0}; SUITE_K=${SUITE_K:-}
GR=$PWD/experiments/cuda_eager/group_run.py
CELLS=exact/fp32,tanh/fp32,exact/bf16,tanh/bf16,exact/fp16,tanh/fp16
exec > >(tee "$OUT/mixed_log.txt") 2>&1
source "$PWD/experiments/box_install.sh"
box_banner
NEED="gymnasium, hydra, mujoco, pytest" WHEELS="$PWD/.wheelhouse/issue12/*.whl $PWD/.wheelhouse/pytest/*.whl" box_install || exit 1
rm -rf "$ROOT"; mkdir -p "$ROOT"
if [ "$SUITE" = 1 ]; then
  echo "== GPU suite"; s=$(date +%s)
  timeout 240 $PY -m pytest tests/test_cuda.py tests/test_cuda_graphs.py -q -p no:cacheprovider -rs ${SUITE_K:+-k "$SUITE_K"} 2>&1 | tail -15
  echo "suite wall_s=$(( $(date +%s) - s ))"
fi
for v in $VARIANTS; do for spin in $SPINS; do
  echo "== K=60 $v, env_workers=$W env_spin_us=$spin"
  extra=""; [ "$v" = mixed ] && extra="--cells $CELLS"
  timeout 200 $PY $GR --k 60 --device cuda --updates $UPD --env halfcheetah --out $ROOT/${v}_s$spin $extra \
    env_workers=$W env_spin_us=$spin > $ROOT/${v}_s$spin.log 2>&1 || tail -5 $ROOT/${v}_s$spin.log
  $PY experiments/gpu_throughput/timing_summary.py $ROOT/${v}_s$spin
  cp $ROOT/${v}_s$spin/timing.json $OUT/timing_${v}_s$spin.json 2>/dev/null
done; done
date -u
