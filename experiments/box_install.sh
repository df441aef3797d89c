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

# A box script's start: its identity (box_banner), then the wheels installed into .box/pfx (kept while the box stays
# warm, where sweep_box.sh finds them).
#   box_setup "NEED (import names)" "WHEELS (globs)"
box_setup() {
  box_banner
  mkdir -p .box
  NEED=$1 PFX=$PWD/.box/pfx WHEELS=$2 box_install
}

# The box's CPU in one line: model, sockets x cores x threads per core (hyperthread siblings share a core's units,
# which matters to the env workers' physics), MHz.
box_cpu() {
  lscpu 2>/dev/null | awk -F: '/^Model name/ {m=$2} /^Socket\(s\)/ {s=$2} /^Core\(s\) per socket/ {c=$2}
    /^Thread\(s\) per core/ {t=$2} /^CPU max MHz|^CPU MHz/ {if (!h) h=$2}
    END {gsub(/^ +/, "", m); printf "cpu: %s, %d sockets x %d cores x %d threads per core, %s MHz\n", m, s, c, t, (h ? h + 0 : "?")}'
}

# The box's identity at the top of a log: date, cores, GPU and driver, torch and its CUDA.
box_banner() {
  date -u; nproc; box_cpu; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null
  ${PY:-python3} -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
}

# The GPU test suite (tests/test_cuda.py, tests/test_cuda_graphs.py) into OUTFILE, at most TIMEOUT_S seconds; prints
# its tail, exit code and wall time (and its error lines if it failed); returns its exit code.
#   box_suite OUTFILE [TIMEOUT_S (240)]
box_suite() {
  local out=$1 limit=${2:-240} s rc
  echo "== GPU suite"; s=$(date +%s)
  timeout "$limit" ${PY:-python3} -m pytest tests/test_cuda.py tests/test_cuda_graphs.py -q -p no:cacheprovider -rs \
    > "$out" 2>&1
  rc=$?; tail -6 "$out"; echo "suite rc=$rc wall_s=$(( $(date +%s) - s ))"
  [ $rc = 0 ] || grep -n "Error\|error\|FAILED" "$out" | head -30
  return $rc
}

# SB3 PPO (CPU, one thread each) in N processes at once on HalfCheetah-v5, STEPS steps each
# (experiments/baseline/throughput.py's SB3 worker); writes $OUT/sb3_<N>.json with the per-process and summed env
# steps/s. Waits for its own children only: a bare `wait` also waits for a script's `exec > >(tee LOG)`.
#   box_sb3 N STEPS WORKDIR
box_sb3() {
  local n=$1 steps=$2 dir=$3 py=${PY:-python3} pids=() i s
  echo "== SB3 PPO (CPU, 1 thread each) over $n processes, HalfCheetah-v5, $steps steps each"
  mkdir -p "$dir"; s=$(date +%s)
  for i in $(seq 1 "$n"); do
    OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 timeout 200 $py experiments/baseline/throughput.py \
      --worker sb3 --envs halfcheetah --steps "$steps" > "$dir/sb3_$i.txt" 2>&1 & pids+=($!)
  done
  wait "${pids[@]}"
  echo "sb3 wall_s=$(( $(date +%s) - s ))"
  $py - "$dir" <<'PYEOF' | tee "${OUT:-/tmp/out}/sb3_$n.json"
import json, pathlib, sys
rates, bad = [], []
for f in sorted(pathlib.Path(sys.argv[1]).glob("sb3_*.txt")):
    try:
        rates.append(float(f.read_text().strip().splitlines()[-1]))
    except (ValueError, IndexError):
        bad.append(f.read_text()[-300:])
print(json.dumps({"processes": len(rates), "failed": len(bad), "per_process": [round(r) for r in rates],
                  "sum_env_steps_per_s": round(sum(rates)), "first_failure": bad[:1]}))
PYEOF
}
