#!/bin/bash
# The GPU suite alone (tests/test_cuda.py, tests/test_cuda_graphs.py) under `timeout -s ABRT` with faulthandler on (a
# hang prints every thread's stack). Carries .wheelhouse/issue12 and .wheelhouse/pytest.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; PY=${PY:-python3}; ROOT=/tmp/gs
exec > >(tee "$OUT/log.txt") 2>&1
date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null
source "$PWD/experiments/box_install.sh"
NEED="gymnasium, hydra, mujoco, pytest" WHEELS="$PWD/.wheelhouse/issue12/*.whl $PWD/.wheelhouse/pytest/*.whl" box_install || exit 1
timeout -s ABRT 200 $PY -X faulthandler -m pytest tests/test_cuda.py tests/test_cuda_graphs.py -v -p no:cacheprovider \
  -rs --tb=short -W ignore::DeprecationWarning > $OUT/suite.txt 2>&1
echo "suite rc=$?"; grep -E "PASSED|FAILED|ERROR|passed|failed|Timeout|Fatal|File " $OUT/suite.txt | cut -c1-160 | head -60
date -u
