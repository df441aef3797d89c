"""Env steps/s of GroupEnvs with the raw envs stepped in-process (workers=0) or in W worker processes.

K members x N sub-envs of one env (default HalfCheetah-v5, 1 env per member) behind CleanRL's wrappers
(clip_action, normalize_obs, normalize_reward: the trainer's HalfCheetah setting), random actions, SAME_STEP
autoresets included. Every group is built first, then the timed blocks run interleaved (W=0, W=1, ..., W=0, W=1, ...)
so that drift in the machine's load hits every setting alike; the table gives the median over repeats.

    python experiments/env_workers/bench.py --members 60 --workers 0 4 8 15 --out results.json

Needs numpy, gymnasium, mujoco (and this package); it does not import torch.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # runnable from a checkout without installing
from esper_exp.envs import GroupEnvs, _quiet_settotalmass


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def versions() -> dict:
    import mujoco

    return {"python": platform.python_version(), "numpy": np.__version__, "gymnasium": gym.__version__,
            "mujoco": mujoco.__version__}


def busy_cell(r: dict) -> str:
    if r["worker_busy_us_mean"] is None:
        return "-"
    return f"{r['worker_busy_us_mean']:,.0f} / {r['worker_busy_us_max']:,.0f}"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--env", default="HalfCheetah-v5")
    ap.add_argument("--members", type=int, default=8, help="K members (1 seed each)")
    ap.add_argument("--num-envs", type=int, default=1, help="N sub-envs per member")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="worker counts to compare (0: in-process)")
    ap.add_argument("--steps", type=int, default=500, help="group steps per timed block")
    ap.add_argument("--repeats", type=int, default=7, help="timed blocks per worker count (interleaved)")
    ap.add_argument("--warmup", type=int, default=50, help="untimed group steps per worker count before timing")
    ap.add_argument("--start-method", default="spawn", choices=["spawn", "forkserver"])
    ap.add_argument("--spin-us", type=float, default=0.0, help="GroupEnvs spin_us (0: sleep on semaphores at once)")
    ap.add_argument("--worker-spin-us", type=float, default=0.0, help="GroupEnvs worker_spin_us")
    ap.add_argument("--no-wrappers", action="store_true", help="raw envs only (no clip/normalisation)")
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    args = ap.parse_args(argv)

    K, N = args.members, args.num_envs
    box = None
    wrappers = {} if args.no_wrappers else None
    groups, build_s = {}, {}
    try:
        for W in args.workers:
            t = time.perf_counter()
            if wrappers is None:
                with _quiet_settotalmass():
                    probe = gym.make(args.env)
                box = isinstance(probe.action_space, gym.spaces.Box)
                probe.close()
                wrappers = {"clip_action": box, "normalize_obs": True, "normalize_reward": True}
            g = GroupEnvs(args.env, list(range(1, K + 1)), N, 0.99, workers=W, start_method=args.start_method,
                          spin_us=args.spin_us, worker_spin_us=args.worker_spin_us, **wrappers)
            g.reset()
            build_s[W] = time.perf_counter() - t
            groups[W] = g
        space = next(iter(groups.values())).env_action_space
        rng = np.random.default_rng(0)
        pool = 64
        if isinstance(space, gym.spaces.Discrete):
            actions = rng.integers(space.n, size=(pool, K, N))
        else:  # policy-like: float32 Gaussian around 0, overshooting the bounds sometimes (ClipAction works)
            actions = rng.standard_normal((pool, K, N, *space.shape)).astype(np.float32)

        def block(g: GroupEnvs, steps: int) -> tuple[float, float, int]:
            episodes = 0
            t, c = time.perf_counter(), time.process_time()
            for i in range(steps):
                episodes += len(g.step(actions[i % pool]).episodes)
            return time.perf_counter() - t, time.process_time() - c, episodes

        busy: dict[int, list[list[float]]] = {W: [] for W in groups}  # per block: per worker busy us/step
        for W, g in groups.items():
            block(g, args.warmup)
            g.worker_stats()  # reset the workers' counters
        walls: dict[int, list[float]] = {W: [] for W in groups}
        cpus: dict[int, list[float]] = {W: [] for W in groups}
        eps: dict[int, int] = {W: 0 for W in groups}
        for _ in range(args.repeats):
            for W, g in groups.items():
                wall, cpu, n = block(g, args.steps)
                busy[W].append([1e6 * st["busy_s"] / max(st["steps"], 1) for st in g.worker_stats()])
                walls[W].append(wall)
                cpus[W].append(cpu)
                eps[W] += n
    finally:
        for g in groups.values():
            g.close()

    E = K * N
    rows = []
    base = None
    for W in groups:
        sps = [E * args.steps / w for w in walls[W]]
        med = statistics.median(sps)
        base = med if W == 0 or base is None else base
        rows.append({"workers": W, "effective_workers": min(W, E), "median_env_steps_per_s": med,
                     "min_env_steps_per_s": min(sps), "max_env_steps_per_s": max(sps),
                     "median_us_per_group_step": 1e6 * statistics.median(walls[W]) / args.steps,
                     "main_cpu_us_per_group_step": 1e6 * statistics.median(cpus[W]) / args.steps,
                     # a worker's time stepping its slice per group step: mean and slowest worker (median of blocks)
                     "worker_busy_us_mean": statistics.median(statistics.mean(b) for b in busy[W]) if W else None,
                     "worker_busy_us_max": statistics.median(max(b) for b in busy[W]) if W else None,
                     "episodes_ended": eps[W], "build_and_reset_s": build_s[W], "all_env_steps_per_s": sps})
    for r in rows:
        r["speedup_vs_first"] = r["median_env_steps_per_s"] / rows[0]["median_env_steps_per_s"]

    result = {
        "date_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join([os.path.relpath(sys.argv[0]) if argv is None else "bench.py", *(argv or sys.argv[1:])]),
        "machine": {"cpu": cpu_model(), "cpu_count": os.cpu_count(),
                    "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
                    "load_avg_at_end": os.getloadavg(), "platform": platform.platform()},
        "versions": versions(),
        "setting": {"env": args.env, "members": K, "num_envs": N, "sub_envs": E, "wrappers": wrappers,
                    "steps_per_block": args.steps, "repeats": args.repeats, "warmup": args.warmup,
                    "start_method": args.start_method, "spin_us": args.spin_us, "worker_spin_us": args.worker_spin_us,
                    "actions": "random, float32 N(0,1) (Box) / uniform (Discrete)"},
        "results": rows,
    }
    print(f"{args.env}: {K} members x {N} env(s) = {E} sub-envs, wrappers {wrappers}; {args.repeats} interleaved "
          f"blocks of {args.steps} group steps; {result['machine']['cpu']} ({os.cpu_count()} CPUs), "
          f"{result['date_utc']}")
    print(f"{'workers':>7} | {'env steps/s (median)':>20} | {'min':>8} | {'max':>8} | {'x W=first':>9} | "
          f"{'us/group step':>13} | {'main CPU us/step':>16} | {'worker busy us/step mean/max':>28} | {'build s':>7}")
    print("-" * 143)
    for r in rows:
        print(f"{r['workers']:>7} | {r['median_env_steps_per_s']:>20,.0f} | {r['min_env_steps_per_s']:>8,.0f} | "
              f"{r['max_env_steps_per_s']:>8,.0f} | {r['speedup_vs_first']:>9.2f} | "
              f"{r['median_us_per_group_step']:>13,.0f} | {r['main_cpu_us_per_group_step']:>16,.0f} | "
              f"{busy_cell(r):>28} | {r['build_and_reset_s']:>7.2f}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
