#!/bin/bash
# Issue 12 (part 1): eager CUDA on the lent GPU box in ONE call (<= ~8 min; see README.md beside this file).
# Carries .wheelhouse/issue12/: cp312 manylinux wheels the box lacks (gymnasium 1.4.0, hydra-core 1.3.8, omegaconf,
# antlr4, farama-notifications, cloudpickle, joblib, hydra-joblib-launcher, tqdm, mujoco 4.0.0 + mujoco-core,
# mujoco-studio, glfw, pyopengl, websockets), installed --no-deps --no-index into a prefix; esper_exp itself is
# imported from this checkout (PYTHONPATH), so what runs is exactly the tree that was sent.
#   1. checks.py: device resolution, pinned flags + fingerprint, ops refused by deterministic mode, seed-MLP dtype,
#      layout dependence of a member's numbers;
#   2. at once: esper-train device=cuda (no index) CartPole and HalfCheetah x fp32/bf16/fp16 (3 updates), CartPole
#      deterministic=false, device=auto, drift.perturb=large / ulp with probe_every=1 snapshot_every=1, and two
#      identical grouped sweeps of 10 HalfCheetah seeds (hydra/launcher=grouped, 2 updates) for bitwise repeatability;
#      beside them, groups of K = 1, 10, 60 HalfCheetah seeds on one CPU core each (torch_threads=1, taskset);
#   3. one after the other, alone on the GPU: groups of K = 1, 10, 60 on device=cuda (eager), 3 updates each;
#   4. summarize.py -> summary.json / summary.md, logs' tails, run.json + metrics.jsonl of every run (tar.xz).
# Dry run on a CPU machine: DEV=cpu HC=cartpole HCB=512 KS="1 2" G=2 PY=.venv/bin/python bash box_run.sh
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
PY=${PY:-python3}; DEV=${DEV:-cuda}; HC=${HC:-halfcheetah}; HCB=${HCB:-2048}; KS=${KS:-1 10 60}; G=${G:-10}
UPD=${UPD:-3}; BUDGET=${BUDGET:-450}; ROOT=${ROOT:-/tmp/ce}; WH=${WH:-$PWD/.wheelhouse/issue12}
HERE=$PWD/experiments/cuda_eager
T0=$(date +%s)
left() { echo $(( BUDGET - ($(date +%s) - T0) )); }
exec > >(tee "$OUT/log.txt") 2>&1
date -u; nproc; lscpu | grep -m1 "Model name"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null
$PY -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())"
source "$PWD/experiments/box_install.sh"; WHEELS="$WH/*.whl" box_install || exit 1
rm -rf "$ROOT"; mkdir -p "$ROOT/logs"
PIN=0; command -v taskset >/dev/null && [ "$(nproc)" -ge 16 ] && PIN=1
# job NAME TIMEOUT CORES CMD...: log to $ROOT/logs/NAME.log, one line with rc and wall time
job() {
  local name=$1 t=$2 cores=$3 s; shift 3; s=$(date +%s)
  if [ $PIN = 1 ]; then taskset -c "$cores" timeout "$t" "$@" > "$ROOT/logs/$name.log" 2>&1
  else timeout "$t" "$@" > "$ROOT/logs/$name.log" 2>&1; fi
  echo "job $name rc=$? wall_s=$(( $(date +%s) - s ))"
}
TRAIN="$PY -m esper_exp.train"
C="tracking.wandb.mode=disabled tracking.progress=off"
A=0-11  # phase 2 and 3 GPU processes; CPU-core groups get 13, 14, 15 alone

echo "== 1. checks (t=$(( $(date +%s) - T0 )) s)"
job checks 120 $A $PY "$HERE/checks.py" "$ROOT/checks.json"

echo "== 2. functional runs + CPU-core groups (t=$(( $(date +%s) - T0 )) s)"
PC=(); core=15
for K in $KS; do
  job cpu_k$K 300 $core $PY "$HERE/group_run.py" --k $K --device cpu --updates $UPD --env $HC --out "$ROOT/cpu_k$K" &
  PC+=($!); core=$((core - 1))
done
PA=()
for p in fp32 bf16 fp16; do
  job cp_$p 200 $A $TRAIN env=cartpole ppo.total_timesteps=1536 precision=$p device=$DEV $C hydra.run.dir="$ROOT/cp_$p" &
  PA+=($!)
  job hc_$p 200 $A $TRAIN env=$HC ppo.total_timesteps=$((UPD * HCB)) precision=$p device=$DEV $C \
    hydra.run.dir="$ROOT/hc_$p" & PA+=($!)
done
job cp_fp32_nondet 200 $A $TRAIN env=cartpole ppo.total_timesteps=1536 deterministic=false device=$DEV $C \
  hydra.run.dir="$ROOT/cp_fp32_nondet" & PA+=($!)
job hc_auto 200 $A $TRAIN env=$HC ppo.total_timesteps=$HCB device=auto $C hydra.run.dir="$ROOT/hc_auto" & PA+=($!)
D="drift.probe_every=1 drift.snapshot_every=1 drift.probe_set_size=256"
job drift_large 200 $A $TRAIN env=$HC ppo.total_timesteps=$((2 * HCB)) device=$DEV drift.perturb=large $D $C \
  hydra.run.dir="$ROOT/drift_large" & PA+=($!)
job drift_ulp_bf16 200 $A $TRAIN env=$HC ppo.total_timesteps=$((2 * HCB)) device=$DEV precision=bf16 drift.perturb=ulp \
  $D $C hydra.run.dir="$ROOT/drift_ulp_bf16" & PA+=($!)
for r in a b; do
  job g10$r 220 $A $TRAIN -m env=$HC "seed=range(1,$((G + 1)))" device=$DEV hydra/launcher=grouped \
    hydra.launcher.n_jobs=1 ppo.total_timesteps=$((2 * HCB)) tracking.checkpoint_every=0 $C \
    hydra.sweep.dir="$ROOT/g10$r" & PA+=($!)
done
wait "${PA[@]}"

echo "== 3. eager CUDA groups, one at a time (t=$(( $(date +%s) - T0 )) s)"
for K in $KS; do
  t=$(( $(left) - 30 )); [ $t -gt 200 ] && t=200
  if [ $t -lt 20 ]; then echo "skip cuda_k$K: no time left"; continue; fi
  job cuda_k$K $t $A $PY "$HERE/group_run.py" --k $K --device $DEV --updates $UPD --env $HC --out "$ROOT/cuda_k$K"
done
wait "${PC[@]}"

echo "== 4. summary (t=$(( $(date +%s) - T0 )) s)"
$PY "$HERE/summarize.py" "$ROOT" "$OUT" > /dev/null || echo "summarize failed"
cp "$ROOT/checks.json" "$OUT/" 2>/dev/null
for f in "$ROOT"/logs/*.log; do echo "--- $(basename "$f")"; grep -v -E "^\s*$" "$f" | tail -6 | cut -c1-400; done \
  > "$OUT/logs_tail.txt"
(cd "$ROOT" && find . \( -name run.json -o -name metrics.jsonl -o -name timing.json -o -name probe.jsonl \) \
  -not -path "*/attempts/*" -print0 | tar -cJf "$OUT/runs.tar.xz" --null -T -)
ls -la "$OUT"; echo "total wall_s=$(( $(date +%s) - T0 ))"; date -u
