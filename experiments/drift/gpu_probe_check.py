"""The applied-update probe and on-policy snapshots on CUDA with captured graphs (one call on the lent GPU box).

1. esper-train's run loop, CartPole, 3 seeds as one group, fp32 and fp16, with and without drift.probe_every=1
   drift.snapshot_every=2: metrics and episodes must be equal (the probe and snapshots change nothing there either);
   the probe records must be schema 2 with every optimizer step.
2. The probe against the run's own numerics, graphs captured: every difference exactly 0.

Usage (on the box): PYTHONPATH=<checkout>:<wheels> python3 experiments/drift/gpu_probe_check.py OUT_DIR
"""

import json
import sys
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from esper_exp import probe as P
from esper_exp.runtime import prepare
from esper_exp.train import CONFIG_DIR, build_ppo, run_group

OUT = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/out")
BASE = ["env=cartpole", "device=cuda", "ppo.total_timesteps=4096", "ppo.num_steps=64", "model.alpha.ramp_updates=2",
        "tracking.wandb.mode=disabled", "tracking.progress=off"]
DRIFT = ["drift.probe_every=1", "drift.snapshot_every=2"]


def cfg(*o):
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=[*BASE, *o])


def lines(p):
    return [json.loads(x) for x in Path(p).read_text().splitlines() if x.strip()]


def strip(rs):
    return [{k: v for k, v in r.items() if not (k == "sps" or k.startswith("time_"))} for r in rs]


results = {"torch": torch.__version__, "gpu": torch.cuda.get_device_name(0)}
for prec in ("fp32", "fp16"):
    dirs = {}
    for name, extra in (("plain", []), ("probed", DRIFT)):
        jobs = [(cfg(f"precision={prec}", f"seed={s}", *extra), Path("/tmp/gpuprobe") / prec / name / f"seed={s}")
                for s in (1, 2, 3)]
        statuses = run_group(jobs)
        dirs[name] = [d for _, d in jobs]
        results[f"{prec}_{name}_status"] = statuses
    equal = all(strip(lines(a / "metrics.jsonl")) == strip(lines(b / "metrics.jsonl"))
                and lines(a / "episodes.jsonl") == lines(b / "episodes.jsonl")
                for a, b in zip(dirs["plain"], dirs["probed"]))
    info = json.loads((dirs["probed"][0] / "run.json").read_text())
    probes = lines(dirs["probed"][0] / "probe.jsonl")
    snaps = lines(dirs["probed"][0] / "snapshots.jsonl")
    results[prec] = {"cuda_graphs": info.get("cuda_graphs"), "metrics_and_episodes_equal": equal,
                     "probe_updates": [p["update"] for p in probes],
                     "steps_per_update": sorted({len(p["steps"]["applied_norm"]) for p in probes}),
                     "last_gelu_diff_median": sorted(probes[-1]["steps"]["gelu_diff_norm"])[8],
                     "last_noise_diff_median": sorted(probes[-1]["steps"]["noise_diff_norm"])[8],
                     "snapshot_updates": [s["update"] for s in snaps]}
    # the probe against the run's own numerics, with graphs captured: exactly 0
    c = cfg(f"precision={prec}", "model.alpha.kind=constant")
    prepare(c.seed, torch.device("cuda:0"), True, 1)
    ppo = build_ppo(c, [1, 2, 3], torch.device("cuda:0"))[0]
    assert ppo.cuda_graphs
    ppo.run_update(lambda *a: None)
    _, steps = P.AppliedUpdateProbe(ppo, other_gelu=ppo.numerics, fp32=ppo.numerics).run_update(lambda *a: None)
    results[prec]["self_diff_max"] = max(max(s["gelu_diff_norm"] + s["dtype_diff_norm"]) for s in steps.values())
    results[prec]["self_applied_min_max"] = [min(s["applied_norm"]) for s in steps.values()]
    results[prec]["graphs"] = sorted(ppo._graphs)
    ppo.close()
print(json.dumps(results, indent=1))
(OUT / "gpu_probe_check.json").write_text(json.dumps(results, indent=1))
