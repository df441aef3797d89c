#!/bin/bash
# The box-call flow on the dev CPU, across two "boxes" (two clones of this checkout), with the probe config (Hopper,
# 2 seeds x 4 cells, 6 updates, every 2nd probed): box A starts the sweep detached and is watched twice (DETACH=1
# CKPT=1, 40 and 20 s), then stopped (STOP=1); its carry is restored on box B, which finishes the sweep. The four
# calls' files are filed by collect.sh, in call order, into a third directory (the dev side), which must then hold
# every run complete (runformat.check_run_files, probe.jsonl) and box B's files byte for byte; box A's completed runs'
# files too, but their .hydra/hydra.yaml (box B's launch rewrites it). Exit 0 when all of that holds. ~3 minutes.
#   bash experiments/gpu_throughput/two_boxes_check.sh [WORK_DIR (/tmp/two_boxes)]
set -u
here=$(pwd); work=${1:-/tmp/two_boxes}; PY=${PY:-$here/.venv/bin/python}
rm -rf "$work"; mkdir -p "$work/dev"
git clone -q "$here" "$work/boxA" && git clone -q "$here" "$work/boxB" || exit 2
for f in experiments/gpu_throughput/*.py experiments/gpu_throughput/*.sh; do  # this tree's scripts, committed or not
  cp "$f" "$work/boxA/$f"; cp "$f" "$work/boxB/$f"
done
export PY EXP=mujoco_gelu_amp_probe ENVS=hopper SWEEP=outputs/sweeps/mujoco_gelu_amp_probe DEV=cpu W=1 SPIN=0 NJ=2 \
  SEEDS='range(1,3)' CKPT=1 XZ=0 DETACH=1 \
  EXTRA='ppo.total_timesteps=12288 drift.probe_every=2 tracking.checkpoint_every=1'
call() { local box=$1 n=$2; shift 2; (cd "$work/$box" && env "$@" OUT="$work/out$n" \
  bash experiments/gpu_throughput/sweep_box.sh > "$work/call$n.txt" 2>&1); }
call boxA 1 LIMIT=40
call boxA 2 LIMIT=20
call boxA 3 STOP=1
mkdir -p "$work/boxB/.carry_x" && cp "$work"/out3/carry.t*z.part-* "$work/boxB/.carry_x/"
call boxB 4 RESTORE=.carry_x LIMIT=600
for n in 1 2 3 4; do
  (cd "$work/dev" && bash "$here/experiments/gpu_throughput/collect.sh" "$work/out$n" "results/call$n") > /dev/null || exit 1
  grep -h "runs_pack.py: .* files (" "$work/call$n.txt"
done
PYTHONPATH=$here "$PY" - "$work" <<'PYEOF'
import json, sys
from pathlib import Path
from esper_exp import runformat
work = Path(sys.argv[1]); rel_sweep = "outputs/sweeps/mujoco_gelu_amp_probe"
dev, a, b = (work / d / rel_sweep for d in ("dev", "boxA", "boxB"))
bad = []
def files(root, run=None):
    for p in sorted((run or root).rglob("*")):
        rel = p.relative_to(root)
        if p.is_file() and "checkpoints" not in rel.parts and "drift" not in rel.parts:
            yield rel, p
for rel, p in files(b):
    if not (dev / rel).is_file() or (dev / rel).read_bytes() != p.read_bytes():
        bad.append(f"differs from box B: {rel}")
for run in sorted(a.glob("*/seed=*")):
    if json.loads((run / "run.json").read_text())["status"] == "completed":
        for rel, p in files(a, run):
            if rel.name != "hydra.yaml" and (dev / rel).read_bytes() != p.read_bytes():
                bad.append(f"differs from box A: {rel}")
runs = sorted(dev.glob("*/seed=*"))
for run in runs:
    status = json.loads((run / "run.json").read_text())["status"]
    metrics, _ = runformat.check_run_files(run)
    probed = [json.loads(line)["update"] for line in open(run / "probe.jsonl")]
    if status != "completed" or len(metrics) != 6 or probed != [2, 4, 6]:
        bad.append(f"{run.relative_to(dev)}: {status}, {len(metrics)} updates, probed {probed}")
resumed = sum(bool(json.loads((r / "run.json").read_text()).get("resumed_at")) for r in runs)
print(f"{len(runs)} runs on the dev side, {resumed} resumed on box B; {len(bad)} problem(s)")
print("\n".join(bad))
sys.exit(1 if bad or len(runs) != 8 else 0)
PYEOF
