#!/bin/bash
# Issue 10 re-run, one call on the lent GPU box's CPU cores (no network, Python 3.12, torch preinstalled).
# Carries .wheelhouse/issue10/: esper-exp's wheel built from a commit (never the working-tree copy, which holds
# other developers' unfinished trainer edits) + the pure-Python wheels the box lacks (gymnasium, hydra-core,
# omegaconf, antlr4, hydra-joblib-launcher, farama-notifications, joblib, cloudpickle), installed --no-deps.
#
# One sweep serves both studies: experiment=gelu_amp (6 cells x 10 paired seeds) with drift instrumentation (the
# probe and snapshots change nothing: tests hold probe-on and probe-off runs bitwise equal), the one-ulp control
# (exact/fp32/perturb-ulp, 10 seeds) and a determinism control (exact/fp32 seeds 1-3 again, in another dir).
# STEPS=204800: 400 PPO updates; CartPole's learning ends by update 60-150. Brings back per-run files only.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
STEPS=${STEPS:-204800}; SEEDS=${SEEDS:-range(1,11)}; DUPS=${DUPS:-1,2,3}; LIMIT=${LIMIT:-470}
J_MAIN=${J_MAIN:-13}; J_ULP=${J_ULP:-2}; J_DUP=${J_DUP:-1}; PY=${PY:-python3}
WH=$PWD/.wheelhouse/issue10
exec > >(tee "$OUT/log.txt") 2>&1
date -u; nproc; lscpu | grep -m1 "Model name"; nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null
$PY -c "import sys, torch, numpy; print('python', sys.version.split()[0], 'torch', torch.__version__, 'numpy', numpy.__version__)"
$PY -m pip install -q --no-deps --no-index --prefix /tmp/pfx --break-system-packages "$WH"/*.whl || exit 1
SP=$(ls -d /tmp/pfx/lib/python3*/site-packages /tmp/pfx/local/lib/python3*/*-packages 2>/dev/null | head -1)
export PYTHONPATH=$SP
mkdir -p /tmp/sw && cd /tmp/sw || exit 1
$PY -c "import esper_exp, gymnasium, hydra; print(esper_exp.__file__, 'gymnasium', gymnasium.__version__, 'hydra', hydra.__version__)"
T="$PY -c 'from esper_exp.train import main; main()'"
C="experiment=gelu_amp env=cartpole ppo.total_timesteps=$STEPS drift.snapshot_every=10 drift.probe_every=10 \
drift.probe_set_size=128 device=cpu tracking.wandb.mode=disabled tracking.progress=off tracking.checkpoint_every=0 \
hydra/launcher=joblib"
s=$(date +%s)
timeout $LIMIT bash -c "$T -m $C 'seed=$SEEDS' hydra.launcher.n_jobs=$J_MAIN hydra.sweep.dir=/tmp/sw/drift/main" \
  > "$OUT/main.log" 2>&1 & P1=$!
timeout $LIMIT bash -c "$T -m $C model.gelu=exact precision=fp32 drift.perturb=ulp 'seed=$SEEDS' \
  hydra.launcher.n_jobs=$J_ULP hydra.sweep.dir=/tmp/sw/drift/ulp" > "$OUT/ulp.log" 2>&1 & P2=$!
timeout $LIMIT bash -c "$T -m $C model.gelu=exact precision=fp32 seed=$DUPS hydra.launcher.n_jobs=$J_DUP \
  hydra.sweep.dir=/tmp/sw/drift/rerun" > "$OUT/rerun.log" 2>&1 & P3=$!
wait $P1 $P2 $P3  # not a bare wait: it would also wait for the tee above
echo "sweeps wall_s=$(( $(date +%s) - s ))"
for f in main ulp rerun; do grep -E "jobs launched" "$OUT/$f.log"; done
$PY - <<'EOF'
import glob, json
runs = [json.load(open(p)) for p in glob.glob('/tmp/sw/drift/*/*/seed=*/run.json')]
print(len(runs), 'runs', {s: sum(r['status'] == s for r in runs) for s in ('completed', 'failed', 'interrupted', 'running')})
EOF
tar -cf - --exclude='*/checkpoints*' --exclude='*/.hydra*' --exclude='*/wandb*' --exclude='*.log' \
  --exclude='*/.submitit*' drift | xz -T0 -6 > /tmp/drift.tar.xz
split -b 15M -d /tmp/drift.tar.xz "$OUT/drift.tar.xz.part"
ls -la "$OUT"; date -u
