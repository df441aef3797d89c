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
python3 -c "import torch; print('torch at', torch.__file__)"
# A venv with --system-site-packages did not see the box's torch (pip: "torch>=2.4 ... from versions: none", 1st try),
# and --target ignores installed packages; --prefix installs next to the system python and keeps its torch.
s=$(date +%s.%N)
python3 -m pip install -q --no-index --find-links /tmp/wh --prefix /tmp/pfx --break-system-packages esper-exp
echo "pip rc=$? in $(python3 -c "import time; print(round(time.time() - $s, 1))") s"
SP=$(ls -d /tmp/pfx/lib/python3*/*-packages /tmp/pfx/local/lib/python3*/*-packages 2>/dev/null | head -1)
export PYTHONPATH=$PWD:$SP; echo "installed into $SP"
python3 -m pip list 2>/dev/null | grep -i -E "^(gymnasium|hydra|omegaconf|wandb|mujoco|esper|torch|submitit|rliable|numpy) " | tee "$OUT/pip_list.txt"
# $PWD first: configs/ live in the repo, not in the esper-exp wheel (see README)
E="python3 -c 'from esper_exp.train import main; main()'"
s=$(date +%s.%N)
eval $E -m experiment=smoke device=cuda tracking.wandb.mode=offline hydra/launcher=joblib hydra.launcher.n_jobs=6 hydra.sweep.dir=/tmp/gpu_smoke 2>&1 | grep -v "^\[" | tail -12
echo "gpu smoke wall_s=$(python3 -c "import time; print(round(time.time() - $s, 1))")"
s=$(date +%s.%N)
eval $E -m model.gelu=exact,tanh precision=fp32,bf16,fp16 seed=1,2 env=cartpole ppo.total_timesteps=51200 device=cpu tracking.wandb.mode=disabled tracking.progress=off hydra/launcher=joblib hydra.launcher.n_jobs=16 hydra.sweep.dir=/tmp/bench16 2>&1 | grep -v "^\[" | tail -5
w=$(python3 -c "import time; print(time.time() - $s)")
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
