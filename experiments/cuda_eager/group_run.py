"""Train one group of K seeds in this process (``esper_exp.train.run_group``) and write its per-update timings.

Used by box_run.sh for the eager-CUDA vs one-CPU-core throughput comparison (and the layout checks): member k is
seed k+1, each member in <out>/seed=<k>/ with the usual run directory. Per update (from member 1's metrics): wall
time (differences of the cumulative ``sps``, so logging is included), group env steps/s, and the env / inference /
update split of ``time_env`` / ``time_inference`` / ``time_update``.

    python experiments/cuda_eager/group_run.py --k 10 --device cuda --updates 3 --out /tmp/ce/cuda_k10
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from hydra import compose, initialize_config_dir

from esper_exp.train import CONFIG_DIR, run_group


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--k", type=int, required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--updates", type=int, default=3)
    ap.add_argument("--env", default="halfcheetah")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--cells", default="", help="a mixed group: comma-separated gelu/precision cells, K/len(cells) "
                    "seeds each (member k: cell k // (K/len), seed k % (K/len) + 1), e.g. exact/fp32,tanh/bf16")
    ap.add_argument("overrides", nargs="*", help="more config overrides, e.g. precision=bf16")
    args = ap.parse_args()
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        base = compose("train", overrides=[f"env={args.env}"])
        batch = base.env.num_envs * base.ppo.num_steps
        cells = [c.split("/") for c in args.cells.split(",")] if args.cells else [[]]
        per = args.k // len(cells)
        member = [(c, s) for c in cells for s in range(1, per + 1)]
        cfgs = [compose("train", overrides=[
            f"env={args.env}", f"seed={s}", f"device={args.device}", f"ppo.total_timesteps={batch * args.updates}",
            "tracking.wandb.mode=disabled", "tracking.progress=off", "tracking.checkpoint_every=0",
            *([f"model.gelu={c[0]}", f"precision={c[1]}"] if c else []), *args.overrides])
            for c, s in member]
    t0 = time.perf_counter()
    statuses = run_group([(c, args.out / f"seed={i + 1}") for i, c in enumerate(cfgs)])
    wall = time.perf_counter() - t0
    metrics = [json.loads(line) for line in (args.out / "seed=1" / "metrics.jsonl").read_text().splitlines()]
    info = json.loads((args.out / "seed=1" / "run.json").read_text())
    updates, previous = [], 0.0
    for m in metrics:
        elapsed = m["global_step"] / m["sps"]  # seconds since the loop started (a fresh run: no resumed steps)
        dt = elapsed - previous
        previous = elapsed
        updates.append({"update": m["update"], "wall_s": dt, "env_steps_per_s": args.k * batch / dt,
                        **{k: m[k] for k in ("time_env", "time_inference", "time_update")}})
    result = {"k": args.k, "device": args.device, "device_name": info["device"], "env": args.env,
              "overrides": args.overrides, "statuses": sorted(set(statuses)), "reason": info.get("reason"),
              "wall_s_total": wall, "steps_per_update": args.k * batch, "updates": updates}
    (args.out / "timing.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
