#!/bin/bash
# Issue 12: the 60-run HalfCheetah-v5 sweep (GELU x precision x 10 seeds, 1M steps each) on the GPU box, resumable
# across device calls: call this repeatedly, back to back (the box keeps git-ignored paths of the checkout while it
# stays warm: the sweep lives in outputs/, the offline install in .box/). Each call runs the sweep command for at
# most LIMIT seconds, then SIGTERM: every member checkpoints and the next call's identical command resumes it.
#   LIMIT=500 W=2 NJ=6 bash experiments/gpu_throughput/sweep_box.sh
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; PY=${PY:-python3}
LIMIT=${LIMIT:-500}; W=${W:-2}; NJ=${NJ:-6}; SEEDS=${SEEDS:-range(1,11)}; DEV=${DEV:-cuda}; EXTRA=${EXTRA:-}
WH=${WH:-$PWD/.wheelhouse/issue12}; BOX=$PWD/.box; SWEEP=outputs/sweeps/gelu_amp_halfcheetah
exec > >(tee "$OUT/log.txt") 2>&1
date -u; nproc; nvidia-smi --query-gpu=name,driver_version,memory.used --format=csv,noheader 2>/dev/null
mkdir -p "$BOX"; [ -f "$BOX/calls" ] && echo "previous calls on this box: $(cat "$BOX/calls")" || echo "fresh box"
echo $(( $(cat "$BOX/calls" 2>/dev/null || echo 0) + 1 )) > "$BOX/calls"
source "$PWD/experiments/box_install.sh"; PFX="$BOX/pfx" WHEELS="$WH/*.whl" box_install || exit 1
$PY experiments/gpu_throughput/progress.py "$SWEEP" "$BOX/progress_before.json" > /dev/null 2>&1 || true
s=$(date +%s.%N)
timeout -s TERM -k 60 "$LIMIT" $PY -m esper_exp.train -m experiment=gelu_amp env=halfcheetah "seed=$SEEDS" \
  hydra/launcher=grouped hydra.launcher.n_jobs=$NJ device=$DEV env_workers=$W \
  tracking.wandb.mode=disabled tracking.progress=off $EXTRA > "$BOX/sweep_call.log" 2>&1
echo "sweep rc=$? wall_s=$($PY -c "import time; print(round(time.time() - $s, 1))")"
tail -25 "$BOX/sweep_call.log" | cut -c1-250
$PY experiments/gpu_throughput/progress.py "$SWEEP" "$OUT/progress.json" "$BOX/progress_before.json" "$s"
# the small per-run files (no checkpoints) come back every call
tar -czf "$OUT/runs.tar.gz" --exclude='checkpoints' --exclude='*.pt' --exclude='drift' "$SWEEP" 2>/dev/null
ls -la "$OUT"; date -u
