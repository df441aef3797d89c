#!/bin/bash
# Run on the GPU box (Python 3.12, torch 2.11, no network) from the repo root, with the wheelhouse carried as
# .wheelhouse/wheels.tar.xz (the wheels of `make wheelhouse`, unzipped and tar'ed with xz to fit the 64 MiB carry;
# re-zipped here unchanged). 1) offline install, 2) GPU smoke sweep, 3) 12-run CartPole sweep throughput, 16 jobs.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
exec > >(tee "$OUT/log.txt") 2>&1
date -u; nproc; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 -c "import sys, torch; print(sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.cuda.is_available())"
python3 -c "import gymnasium" 2>&1 | tail -1
mkdir -p /tmp/x /tmp/wh && tar -xJf .wheelhouse/wheels.tar.xz -C /tmp/x
python3 - <<'EOF'
import pathlib, zipfile
for d in sorted(pathlib.Path('/tmp/x').iterdir()):
    if d.is_dir():
        with zipfile.ZipFile(f'/tmp/wh/{d.name}.whl', 'w', zipfile.ZIP_STORED) as z:
            for f in sorted(d.rglob('*')):
                if f.is_file():
                    z.write(f, f.relative_to(d))
EOF
ls /tmp/wh | wc -l
python3 -m venv --system-site-packages /tmp/venv
s=$(date +%s.%N)
/tmp/venv/bin/python -m pip install -q --no-index --find-links /tmp/wh esper-exp; echo "pip rc=$? in $(echo "$(date +%s.%N) - $s" | bc) s"
/tmp/venv/bin/python -m pip list 2>/dev/null | grep -i -E "^(gymnasium|hydra|omegaconf|wandb|mujoco|esper|torch|submitit|rliable|numpy) " | tee "$OUT/pip_list.txt"
export PYTHONPATH=$PWD  # configs/ live in the repo, not in the esper-exp wheel (see README)
E=/tmp/venv/bin/esper-train
s=$(date +%s.%N)
$E -m experiment=smoke device=cuda tracking.wandb.mode=offline hydra/launcher=joblib hydra.launcher.n_jobs=6 hydra.sweep.dir=/tmp/gpu_smoke 2>&1 | grep -v "^\[" | tail -12
echo "gpu smoke wall_s=$(echo "$(date +%s.%N) - $s" | bc)"
s=$(date +%s.%N)
$E -m model.gelu=exact,tanh precision=fp32,bf16,fp16 seed=1,2 env=cartpole ppo.total_timesteps=51200 device=cpu tracking.wandb.mode=disabled tracking.progress=off hydra/launcher=joblib hydra.launcher.n_jobs=16 hydra.sweep.dir=/tmp/bench16 2>&1 | grep -v "^\[" | tail -5
w=$(echo "$(date +%s.%N) - $s" | bc)
python3 - "$w" <<'EOF'
import glob, json, sys
w = float(sys.argv[1]); runs = [json.load(open(p)) for p in glob.glob('/tmp/bench16/*/*/run.json')]
steps = sum(r['global_step'] for r in runs)
print(f"bench16: {len(runs)} runs, {steps} env steps, wall {w:.1f} s, {steps / w:.0f} env steps/s; "
      f"devices {sorted({r['device'] for r in runs})}")
runs = [json.load(open(p)) for p in glob.glob('/tmp/gpu_smoke/*/*/run.json')]
print("gpu smoke:", len(runs), "runs", sorted({r['status'] for r in runs}), sorted({r['device'] for r in runs}),
      "wandb dirs", sum(bool(r.get('wandb_run_dir')) for r in runs))
EOF
tar czf "$OUT/sweeps.tgz" -C /tmp --exclude='*/wandb/*' --exclude='*/checkpoints/*' gpu_smoke bench16
ls -la "$OUT"
