"""A/B of GroupEnvs' two ways to wait for the workers: one semaphore per worker (the training process wakes up
to W times per step) or one for the group (the last worker to finish posts it: one wake-up). Interleaved blocks,
medians; HalfCheetah-v5 with CleanRL's wrappers, random actions, as bench.py.

    python experiments/env_workers/ab_wakeup.py --members 60 --workers 8 15 --out ab.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import esper_exp.envs as envs_mod


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--members", type=int, default=60)
    ap.add_argument("--workers", type=int, nargs="+", default=[8, 15])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    K = args.members
    groups = {}
    default = envs_mod._ONE_WAKEUP
    try:
        for W in args.workers:
            for one in (False, True):
                envs_mod._ONE_WAKEUP = one
                g = envs_mod.GroupEnvs("HalfCheetah-v5", list(range(1, K + 1)), 1, 0.99, workers=W, clip_action=True,
                                       normalize_obs=True, normalize_reward=True)
                g.reset()
                groups[(W, one)] = g
        envs_mod._ONE_WAKEUP = default
        actions = np.random.default_rng(0).standard_normal((64, K, 1, 6)).astype(np.float32)
        walls = {key: [] for key in groups}
        for g in groups.values():
            for i in range(50):
                g.step(actions[i % 64])
        for _ in range(args.repeats):
            for key, g in groups.items():
                t = time.perf_counter()
                for i in range(args.steps):
                    g.step(actions[i % 64])
                walls[key].append(time.perf_counter() - t)
    finally:
        for g in groups.values():
            g.close()
    rows = []
    print(f"{'workers':>7} | {'wait on':>16} | {'env steps/s (median)':>20} | {'min':>8} | {'max':>8}")
    for (W, one), w in walls.items():
        sps = [K * args.steps / x for x in w]
        rows.append({"workers": W, "one_wakeup": one, "median": statistics.median(sps), "all": sps})
        print(f"{W:>7} | {'group semaphore' if one else 'per-worker sems':>16} | {statistics.median(sps):>20,.0f} | "
              f"{min(sps):>8,.0f} | {max(sps):>8,.0f}")
    if args.out:
        args.out.write_text(json.dumps({"members": K, "steps": args.steps, "repeats": args.repeats, "rows": rows},
                                       indent=2) + "\n")


if __name__ == "__main__":
    main()
