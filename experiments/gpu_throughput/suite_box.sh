#!/bin/bash
# The GPU suite alone (pytest -m cuda files), then two group_run.py processes with env workers started at once, each
# under `timeout -s ABRT` with faulthandler on (a hang prints every thread's stack). Carries .wheelhouse/issue12 and
# .wheelhouse/pytest.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; PY=${PY:-python3}; ROOT=/tmp/gs
exec > >(tee "$OUT/log.txt") 2>&1
date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null
$PY -m pip install -q --no-deps --no-index --prefix /tmp/pfx --break-system-packages .wheelhouse/issue12/*.whl \
  .wheelhouse/pytest/*.whl || exit 1
SP=$(ls -d /tmp/pfx/lib/python3*/site-packages /tmp/pfx/local/lib/python3*/*-packages 2>/dev/null | head -1)
export PYTHONPATH=$PWD:$SP WANDB_MODE=disabled
timeout 240 $PY -m pytest tests/test_cuda.py tests/test_cuda_graphs.py -q -p no:cacheprovider -rs --tb=short \
  2>&1 | grep -v -E "Warning|warn" > $ROOT.suite.txt; grep -E "passed|failed|Error|error|assert" $ROOT.suite.txt | head -40
cp $ROOT.suite.txt $OUT/suite.txt
mkdir -p $ROOT
for i in 1 2; do
  timeout -s ABRT 90 $PY -X faulthandler experiments/cuda_eager/group_run.py --k 10 --device cuda --updates 3 \
    --env halfcheetah --out $ROOT/p$i env_workers=2 seed=$i > $ROOT/p$i.log 2>&1 &
done
wait
$PY experiments/gpu_throughput/timing_summary.py $ROOT/p1 $ROOT/p2
for i in 1 2; do echo "--- p$i"; grep -v "^\s*$" $ROOT/p$i.log | tail -40 | cut -c1-200; done > $OUT/conc.txt
head -c 6000 $OUT/conc.txt; date -u
