#!/bin/bash
# One short grouped training on CPU, for timing exact vs tanh GELU end to end (the closing section of
# experiments/mujoco_gelu_amp): HalfCheetah-v5, the CPU twin's config (mujoco_gelu_amp_cpu), one cell, 10 members
# (seeds 1-10), UPDATES updates of 2,048 steps each, one process on one thread, into a fresh directory under ROOT.
#   bash experiments/gelu_fusion/train_once.sh GELU PRECISION    e.g. exact fp32 / tanh bf16
# Time it whole, A and B interleaved (the README gives the command); the run directories stay for their own per-phase
# timings (metrics.jsonl: time_env, time_inference, time_update).
set -eu
GELU=$1; PREC=$2; UPDATES=${UPDATES:-10}; ROOT=${ROOT:-/tmp/train_once}
mkdir -p "$ROOT"; d=$(mktemp -d "$ROOT/$GELU-$PREC.XXXXXX")
"${ESPER_TRAIN:-esper-train}" -m experiment=mujoco_gelu_amp_cpu hydra/launcher=grouped "model.gelu=$GELU" \
  "precision=$PREC" 'seed=range(1,11)' "ppo.total_timesteps=$((UPDATES * 2048))" "hydra.sweep.dir=$d" > "$d.log" 2>&1
