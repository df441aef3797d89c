# Sourced by the GPU-box scripts (experiments/cuda_eager/*.sh, experiments/gpu_throughput/*.sh): the box has no
# network and no gymnasium / hydra / mujoco, so the carried wheels are installed offline next to its Python (which
# keeps the box's torch), unless that Python already imports them or an earlier call installed them in $PFX. Exports
# PYTHONPATH (this checkout first: what runs is the tree that was sent, then the install) and WANDB_MODE=disabled.
#   PY (python3)  PFX (/tmp/pfx)  WHEELS (.wheelhouse/issue12/*.whl)  NEED ("gymnasium, hydra, mujoco")
box_install() {
  local py=${PY:-python3} pfx=${PFX:-/tmp/pfx} sp
  local need=${NEED:-gymnasium, hydra, mujoco} wheels=${WHEELS:-$PWD/.wheelhouse/issue12/*.whl}
  sp=$(ls -d "$pfx"/lib/python3*/site-packages "$pfx"/local/lib/python3*/*-packages 2>/dev/null | head -1)
  if [ -z "$sp" ] && ! $py -c "import $need" 2>/dev/null; then
    # shellcheck disable=SC2086  # WHEELS is a glob list on purpose
    $py -m pip install -q --no-deps --no-index --prefix "$pfx" --break-system-packages $wheels || return 1
    sp=$(ls -d "$pfx"/lib/python3*/site-packages "$pfx"/local/lib/python3*/*-packages 2>/dev/null | head -1)
  fi
  export PYTHONPATH=$PWD${sp:+:$sp} WANDB_MODE=disabled
}

# The box's identity at the top of a log: date, cores, GPU and driver, torch and its CUDA.
box_banner() {
  date -u; nproc; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null
  ${PY:-python3} -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
}
