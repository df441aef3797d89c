"""A/B of GroupEnvs' ways to wait, interleaved blocks, medians; HalfCheetah-v5 with CleanRL's wrappers and random
actions, as bench.py. Variants (--variants, default all):

- ``sems``: one "done" semaphore per worker, nobody spins (the default);
- ``group``: one semaphore for the group, posted by the last worker to finish (``esper_exp.envs._ONE_WAKEUP``);
- ``spin``: per-worker semaphores, the training process polls the acknowledgements for ``--spin-us`` first;
- ``spin-both``: as ``spin``, and the workers poll their semaphore for ``--spin-us`` after each step.

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

VARIANTS = ("sems", "group", "spin", "spin-both")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--members", type=int, default=60)
    ap.add_argument("--workers", type=int, nargs="+", default=[8, 15])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    ap.add_argument("--spin-us", type=float, default=300.0)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    K = args.members
    groups = {}
    default = envs_mod._ONE_WAKEUP
    try:
        for W in args.workers:
            for v in args.variants:
                envs_mod._ONE_WAKEUP = v == "group"
                spin = args.spin_us if v.startswith("spin") else 0.0
                g = envs_mod.GroupEnvs("HalfCheetah-v5", list(range(1, K + 1)), 1, 0.99, workers=W, clip_action=True,
                                       normalize_obs=True, normalize_reward=True, spin_us=spin,
                                       worker_spin_us=args.spin_us if v == "spin-both" else 0.0)
                g.reset()
                groups[(W, v)] = g
        envs_mod._ONE_WAKEUP = default
        actions = np.random.default_rng(0).standard_normal((64, K, 1, 6)).astype(np.float32)
        walls = {key: [] for key in groups}
        cpus = {key: [] for key in groups}
        for g in groups.values():
            for i in range(50):
                g.step(actions[i % 64])
        for _ in range(args.repeats):
            for key, g in groups.items():
                t, c = time.perf_counter(), time.process_time()
                for i in range(args.steps):
                    g.step(actions[i % 64])
                walls[key].append(time.perf_counter() - t)
                cpus[key].append(time.process_time() - c)
    finally:
        envs_mod._ONE_WAKEUP = default
        for g in groups.values():
            g.close()
    rows = []
    print(f"{'workers':>7} | {'variant':>10} | {'env steps/s (median)':>20} | {'min':>8} | {'max':>8} | main CPU us/step")
    for (W, v), w in walls.items():
        sps = [K * args.steps / x for x in w]
        cpu = 1e6 * statistics.median(cpus[(W, v)]) / args.steps
        rows.append({"workers": W, "variant": v, "median": statistics.median(sps), "all": sps, "main_cpu_us": cpu})
        print(f"{W:>7} | {v:>10} | {statistics.median(sps):>20,.0f} | {min(sps):>8,.0f} | {max(sps):>8,.0f} | "
              f"{cpu:,.0f}")
    if args.out:
        args.out.write_text(json.dumps({"members": K, "steps": args.steps, "repeats": args.repeats,
                                        "spin_us": args.spin_us, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
