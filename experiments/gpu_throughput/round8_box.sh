#!/bin/bash
# Round 8 (optional, ~1-2 minutes held, on a fresh box before its sweep starts): where does an env-bound group's env
# wait go? Round 7's Hopper group (K = 40, 15 env workers, spin 1000) waited ~0.98 ms per env step, while one
# Hopper-v5 step costs ~110-125 us on the dev VM (x at most 3 sub-envs per worker = ~0.35-0.4 ms). The env side alone
# (env_ceiling.py: zero actions, no policy, the trainer's order), for K = 40 and W env workers in WORKERS, two
# interleaved rounds: the trainer's wait per step against the workers' busy time per sub-env step. 14 workers keep 3
# sub-envs per busiest worker and leave a core free; 20 give 2 per worker on 16 cores. Env workers are not part of a
# run's identity, so a faster W can serve the remaining runs at once.
#   bash experiments/gpu_throughput/round8_box.sh      (carry .wheelhouse/sweep; OUT, ENV, WORKERS, STEPS)
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; PY=${PY:-python3}; ENV=${ENV:-hopper}; STEPS=${STEPS:-2000}
WORKERS=${WORKERS:-15 14 20}
exec > >(tee "$OUT/round8_log.txt") 2>&1
source "$PWD/experiments/box_install.sh"
box_setup "gymnasium, hydra, mujoco" "$PWD/.wheelhouse/sweep/*.whl" || exit 1
for round in 1 2; do
  for w in $WORKERS; do
    echo "== round $round: $ENV K=40, $w env workers, spin 1000, $STEPS steps"
    timeout 90 $PY experiments/gpu_throughput/env_ceiling.py --env "$ENV" --k 40 --workers "$w" --parts 1 \
      --spin 1000 --steps "$STEPS" | tee -a "$OUT/round8_env_ceiling.jsonl" || echo "round $round W=$w: rc=$?"
  done
done
date -u
