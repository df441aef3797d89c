#!/bin/bash
# Issue 12 items 4-5 and the one-process ceiling, in ONE device call (<= ~9 min). Carries .wheelhouse/issue12 and
# .wheelhouse/pytest.
#   1. the GPU test suite: pytest tests/test_cuda.py tests/test_cuda_graphs.py (CUDA runs, bf16 on CUDA, drift
#      controls, deterministic rerun + esper-repro of a group member);
#   2. one process, one group of K=60 HalfCheetah seeds (exact/fp32), env_workers 0 and 15, alone on the GPU;
#   3. two processes of K=30 (env_workers 7 each) at once: what a second process on the same GPU costs.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; PY=${PY:-python3}; ROOT=${ROOT:-/tmp/gc}; UPD=${UPD:-4}
GR=$PWD/experiments/cuda_eager/group_run.py
exec > >(tee "$OUT/log.txt") 2>&1
source "$PWD/experiments/box_install.sh"
box_banner
NEED="gymnasium, hydra, mujoco, pytest" WHEELS="$PWD/.wheelhouse/issue12/*.whl $PWD/.wheelhouse/pytest/*.whl" box_install || exit 1
rm -rf "$ROOT"; mkdir -p "$ROOT"
echo "== 1. GPU suite"
s=$(date +%s)
timeout 300 $PY -m pytest tests/test_cuda.py tests/test_cuda_graphs.py -q -p no:cacheprovider -rs 2>&1 | tail -25
echo "suite wall_s=$(( $(date +%s) - s ))"
summ() { $PY experiments/gpu_throughput/timing_summary.py "$@"; }
echo "== 2. one process, K=60"
for W in 0 15; do
  timeout 120 $PY $GR --k 60 --device cuda --updates $UPD --env halfcheetah --out $ROOT/k60_w$W env_workers=$W \
    > $ROOT/k60_w$W.log 2>&1 || tail -3 $ROOT/k60_w$W.log
  summ $ROOT/k60_w$W
done
echo "== 3. two processes of K=30 at once"
pids=()
for i in 1 2; do
  timeout 150 $PY $GR --k 30 --device cuda --updates $UPD --env halfcheetah --out $ROOT/k30_p$i env_workers=7 \
    $([ $i = 2 ] && echo model.gelu=tanh) > $ROOT/k30_p$i.log 2>&1 & pids+=($!)
done
wait "${pids[@]}"  # not a bare wait: that also waits for the tee of the log (never ends)
summ $ROOT/k30_p1 $ROOT/k30_p2
for f in $ROOT/*.log; do echo "--- $f"; tail -2 $f | cut -c1-300; done > $OUT/logs_tail.txt
cp $ROOT/*/timing.json $OUT/ 2>/dev/null; for d in $ROOT/*/; do cp $d/timing.json $OUT/timing_$(basename $d).json 2>/dev/null; done
date -u
