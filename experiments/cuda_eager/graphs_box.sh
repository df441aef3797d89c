#!/bin/bash
# Issue 12 item 2: CUDA graphs on the lent GPU box in ONE call (<= ~9 min; see README.md "CUDA graphs").
# Carries .wheelhouse/issue12/ (see box_run.sh); esper_exp is imported from the checkout that was sent.
#   1. graphs_check.py: captured vs uncaptured, graph vs eager update on the same rollouts, a non-finite member;
#      beside it, esper-train end to end with graphs (run.json cuda_graphs: true, with the drift probe) and without
#      (ESPER_CUDA_GRAPHS=0: false);
#   2. throughput, one process at a time alone on the GPU: group_run.py K = 1, 10, 60 HalfCheetah, 3 updates,
#      graphs then eager, fp32 then bf16 (skipped when the budget runs out);
#   3. graphs_summarize.py -> summary.json / summary.md.
# Dry run on a CPU machine is not possible (graphs need CUDA).
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
PY=${PY:-python3}; KS=${KS:-1 10 60}; UPD=${UPD:-3}; BUDGET=${BUDGET:-540}; ROOT=${ROOT:-/tmp/cg}
PRECS=${PRECS:-fp32 bf16}; MODES=${MODES:-1 0}; CHECK=${CHECK:-1}
WH=${WH:-$PWD/.wheelhouse/issue12}; HERE=$PWD/experiments/cuda_eager
T0=$(date +%s)
left() { echo $(( BUDGET - ($(date +%s) - T0) )); }
exec > >(tee "$OUT/log.txt") 2>&1
date -u; nproc; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null
$PY -c "import torch; print('torch', torch.__version__, torch.cuda.is_available())"
source "$PWD/experiments/box_install.sh"; WHEELS="$WH/*.whl" box_install || exit 1
rm -rf "$ROOT"; mkdir -p "$ROOT/logs"
job() { local name=$1 t=$2 s; shift 2; s=$(date +%s); timeout "$t" "$@" > "$ROOT/logs/$name.log" 2>&1
  echo "job $name rc=$? wall_s=$(( $(date +%s) - s ))"; }
C="tracking.wandb.mode=disabled tracking.progress=off"
if [ "$CHECK" = 1 ]; then
  echo "== 1. checks (t=$(( $(date +%s) - T0 )) s)"
  ESPER_CUDA_GRAPHS=1 job train_graphs 200 $PY -m esper_exp.train env=halfcheetah device=cuda ppo.total_timesteps=4096 \
    drift.probe_every=1 drift.probe_set_size=256 $C hydra.run.dir="$ROOT/train_graphs" &
  P1=$!
  ESPER_CUDA_GRAPHS=0 job train_eager 200 $PY -m esper_exp.train env=cartpole device=cuda ppo.total_timesteps=1024 $C \
    hydra.run.dir="$ROOT/train_eager" &
  P2=$!
  job checks 260 $PY "$HERE/graphs_check.py" "$OUT/checks.json"
  wait $P1 $P2
  for r in train_graphs train_eager; do
    $PY -c "import json,sys; d=json.load(open('$ROOT/$r/run.json')); print('$r', d['status'], d.get('reason'), 'cuda_graphs', d.get('cuda_graphs'))" \
      || tail -5 "$ROOT/logs/$r.log"
  done
  [ -f "$ROOT/train_graphs/probe.jsonl" ] && echo "probe records: $(wc -l < "$ROOT/train_graphs/probe.jsonl")"
  tail -25 "$ROOT/logs/checks.log"
fi
echo "== 2. throughput (t=$(( $(date +%s) - T0 )) s)"
for P in $PRECS; do for G in $MODES; do for K in $KS; do
  t=$(( $(left) - 15 )); [ $t -gt 150 ] && t=150
  if [ $t -lt 25 ]; then echo "skip g$G $P k$K: no time left"; continue; fi
  ESPER_CUDA_GRAPHS=$G job "g${G}_${P}_k$K" $t $PY "$HERE/group_run.py" --k $K --device cuda --updates $UPD \
    --env halfcheetah --out "$ROOT/g${G}_${P}_k$K" precision=$P
done; done; done
echo "== 3. summary (t=$(( $(date +%s) - T0 )) s)"
$PY "$HERE/graphs_summarize.py" "$ROOT" "$OUT" || echo "summarize failed"
for f in "$ROOT"/logs/*.log; do echo "--- $(basename "$f")"; grep -v -E "^\s*$" "$f" | tail -4 | cut -c1-300; done \
  > "$OUT/logs_tail.txt"
ls -la "$OUT"; echo "total wall_s=$(( $(date +%s) - T0 ))"; date -u
