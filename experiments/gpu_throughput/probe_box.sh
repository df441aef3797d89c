#!/bin/bash
# Issue 12: where the GPU box's throughput comes from, in ONE device call (<= ~9 min). Carries .wheelhouse/issue12/.
#   A. one group of K=10 HalfCheetah seeds alone on the GPU (CUDA graphs), env_workers = 0, 2, 4 (3 updates each);
#   B. the sweep's shape: the 6 GELU x precision cells as 6 concurrent groups of K=10, env_workers = W (3 updates);
# prints per-run timing (experiments/cuda_eager/group_run.py writes timing.json) and the aggregate env steps/s.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; PY=${PY:-python3}; UPD=${UPD:-3}; ROOT=${ROOT:-/tmp/gt}
WS=${WS:-0 2 4}; CONC_W=${CONC_W:-2 3}; K=${K:-10}
WH=${WH:-$PWD/.wheelhouse/issue12}; GR=$PWD/experiments/cuda_eager/group_run.py
exec > >(tee "$OUT/log.txt") 2>&1
date -u; nproc; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null
source "$PWD/experiments/box_install.sh"; WHEELS="$WH/*.whl" box_install || exit 1
rm -rf "$ROOT"; mkdir -p "$ROOT"
summ() { $PY - "$@" <<'PYEOF'
import json, sys
tot = 0.0
for d in sys.argv[1:]:
    try:
        t = json.load(open(f"{d}/timing.json"))
    except Exception as e:
        print(d, "no timing", e); continue
    u = t["updates"][1:] or t["updates"]  # the first update includes graph capture
    sps = sum(x["env_steps_per_s"] for x in u) / len(u)
    tot += sps
    env = sum(x["time_env"] for x in u) / len(u); inf = sum(x["time_inference"] for x in u) / len(u)
    upd = sum(x["time_update"] for x in u) / len(u); wall = sum(x["wall_s"] for x in u) / len(u)
    print(f"{d.split('/')[-1]}: {sps:,.0f} env steps/s  per update wall {wall:.2f}s env {env:.2f} inference {inf:.2f} update {upd:.2f}  {t['statuses']}")
print(f"aggregate {tot:,.0f} env steps/s")
PYEOF
}
echo "== A. one group alone"
for W in $WS; do
  timeout 150 $PY $GR --k $K --device cuda --updates $UPD --env halfcheetah --out $ROOT/a_w$W env_workers=$W > $ROOT/a_w$W.log 2>&1 || tail -3 $ROOT/a_w$W.log
  summ $ROOT/a_w$W
done
echo "== B. 6 cells concurrently"
for W in $CONC_W; do
  dirs=""; pids=()
  for g in exact tanh; do for p in fp32 bf16 fp16; do
    d=$ROOT/b_w${W}_${g}_$p; dirs="$dirs $d"
    timeout 200 $PY $GR --k $K --device cuda --updates $UPD --env halfcheetah --out $d env_workers=$W model.gelu=$g precision=$p > $d.log 2>&1 & pids+=($!)
  done; done
  s=$(date +%s); wait "${pids[@]}"; echo "W=$W wall $(( $(date +%s) - s )) s"
  summ $dirs
done
date -u
