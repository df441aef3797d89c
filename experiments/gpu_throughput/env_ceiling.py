"""The env side's ceiling on this machine: K HalfCheetah-v5 members stepped by GroupEnvs with W worker processes and
no policy at all (zero actions), in the trainer's pipelined order (parts stepped apart, as a mixed group's precision
segments are), plus the cost of one wrapped env step in this process. Whatever the GPU does, a grouped run cannot step
its envs faster than this.

    python experiments/gpu_throughput/env_ceiling.py --k 60 --workers 15 --parts 1 3 --spin 1000 --steps 2000
Prints one JSON line per layout: env steps/s, the trainer's wait per step, the workers' busy time per sub-env step.
"""

from __future__ import annotations

import argparse
import json
import time

import gymnasium as gym
import numpy as np
from hydra import compose, initialize_config_dir

from esper_exp.envs import GroupEnvs, _quiet_settotalmass
from esper_exp.train import CONFIG_DIR


def one_env_step_us(env_id: str, steps: int) -> float:
    with _quiet_settotalmass():
        env = gym.make(env_id, disable_env_checker=True)
    env.reset(seed=0)
    action = np.zeros(env.action_space.shape, dtype=np.float32)
    t0 = time.perf_counter()
    for _ in range(steps):
        _, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            env.reset()
    return (time.perf_counter() - t0) / steps * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--k", type=int, default=60)
    ap.add_argument("--workers", type=int, default=15)
    ap.add_argument("--parts", type=int, nargs="+", default=[1, 3])
    ap.add_argument("--spin", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--env", default="halfcheetah")
    args = ap.parse_args()
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        e = compose("train", overrides=[f"env={args.env}"]).env
    print(json.dumps({"env": e.id, "one_env_step_us_in_process": round(one_env_step_us(e.id, 3000), 1)}), flush=True)
    for n_parts in args.parts:
        bounds = np.linspace(0, args.k, n_parts + 1).round().astype(int).tolist()
        parts = list(zip(bounds[:-1], bounds[1:]))
        envs = GroupEnvs(e.id, list(range(1, args.k + 1)), e.num_envs, 0.99, clip_action=e.clip_action,
                         normalize_obs=e.normalize_obs, normalize_reward=e.normalize_reward, clip_obs=e.clip_obs,
                         clip_reward=e.clip_reward, max_episode_steps=e.max_episode_steps, kwargs=dict(e.kwargs),
                         workers=args.workers, spin_us=args.spin, worker_spin_us=args.spin, parts=parts)
        envs.reset()
        actions = [np.zeros((b - a, e.num_envs, *envs.action_shape), dtype=np.float32) for a, b in parts]
        for i in range(len(parts)):
            envs.step_async(actions[i], i)
        for _ in range(50):  # warm-up
            for i in range(len(parts)):
                envs.step_wait(i)
                envs.step_async(actions[i], i)
        envs.worker_stats()
        wait = 0.0
        t0 = time.perf_counter()
        for _ in range(args.steps):
            for i in range(len(parts)):
                w0 = time.perf_counter()
                envs.step_wait(i)
                wait += time.perf_counter() - w0
                envs.step_async(actions[i], i)
        wall = time.perf_counter() - t0
        stats = envs.worker_stats()
        b = envs._workers.bounds  # worker w steps sub-envs [b[w], b[w + 1])
        sub_steps = sum(s["steps"] * (b[w + 1] - b[w]) for w, s in enumerate(stats))
        for i in range(len(parts)):
            envs.step_wait(i)
        envs.close()
        print(json.dumps({
            "k": args.k, "workers": args.workers, "parts": n_parts, "spin_us": args.spin, "steps": args.steps,
            "env_steps_per_s": round(args.k * e.num_envs * args.steps / wall),
            "trainer_wait_us_per_step": round(wait / args.steps * 1e6, 1),
            "worker_busy_us_per_sub_env_step": round(sum(s["busy_s"] for s in stats) / max(sub_steps, 1) * 1e6, 1),
        }), flush=True)


if __name__ == "__main__":
    main()
