#!/bin/bash
# Round 3, one device call: the GPU suite; the env side's ceiling (env_ceiling.py: K=60 HalfCheetah, W workers, no
# policy); K=60 groups timed (group_run.py, UPD updates): one cell, and the sweep's 6 cells mixed with their precision
# segments on separate CUDA streams and on one (ESPER_SEGMENT_STREAMS=0); SB3 PPO over 16 processes (SB3=1).
# Carries .wheelhouse/issue12, .wheelhouse/pytest and .wheelhouse/sb3.   bash experiments/gpu_throughput/round3_box.sh
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; PY=${PY:-python3}; ROOT=${ROOT:-/tmp/r3}; UPD=${UPD:-6}; W=${W:-15}
SPIN=${SPIN:-1000}; SUITE=${SUITE:-1}; SB3=${SB3:-1}; VARIANTS=${VARIANTS:-mixed mixed_one_stream pure}
GR=$PWD/experiments/cuda_eager/group_run.py
CELLS=exact/fp32,tanh/fp32,exact/bf16,tanh/bf16,exact/fp16,tanh/fp16
exec > >(tee "$OUT/round3_log.txt") 2>&1
source "$PWD/experiments/box_install.sh"
box_banner
NEED="gymnasium, hydra, mujoco, pytest, stable_baselines3" \
  WHEELS="$PWD/.wheelhouse/issue12/*.whl $PWD/.wheelhouse/pytest/*.whl $PWD/.wheelhouse/sb3/*.whl" box_install || exit 1
rm -rf "$ROOT"; mkdir -p "$ROOT"
[ "$SUITE" = 1 ] && box_suite "$OUT/suite.txt"
echo "== env ceiling (no policy)"
timeout 120 $PY experiments/gpu_throughput/env_ceiling.py --k 60 --workers $W --parts 1 3 --spin $SPIN --steps 2000 \
  | tee "$OUT/env_ceiling.jsonl"
for v in $VARIANTS; do
  echo "== K=60 $v, env_workers=$W env_spin_us=$SPIN"
  extra=""; [ "$v" != pure ] && extra="--cells $CELLS"
  streams=1; [ "$v" = mixed_one_stream ] && streams=0
  ESPER_SEGMENT_STREAMS=$streams timeout 200 $PY $GR --k 60 --device cuda --updates $UPD --env halfcheetah \
    --out $ROOT/$v $extra env_workers=$W env_spin_us=$SPIN > $ROOT/$v.log 2>&1 || tail -5 $ROOT/$v.log
  $PY experiments/gpu_throughput/timing_summary.py $ROOT/$v
  cp $ROOT/$v/timing.json $OUT/timing_$v.json 2>/dev/null
done
[ "$SB3" = 1 ] && box_sb3 16 ${SB3_STEPS:-20480} $ROOT/sb3
date -u
