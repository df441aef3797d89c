"""Throughput: esper-train vs Stable-Baselines3 PPO at identical hyper-parameters, 1 torch thread each.

Runs the two trainers interleaved (esper, sb3, esper, sb3, ...) in fresh subprocesses on the same machine,
plus the raw env stepping rate as the ceiling, and prints steps/s medians and the ratio.

    python experiments/baseline/throughput.py --envs halfcheetah cartpole --steps 20480 --repeats 3 --out results.json

Not a test: wall-clock numbers depend on the machine and its load. Quote medians measured side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ENVS = {
    # CleanRL ppo_continuous_action.py / ppo.py hyper-parameters, as in configs/ppo/{mujoco,cartpole}.yaml
    "halfcheetah": dict(id="HalfCheetah-v5", num_envs=1, num_steps=2048, lr=3e-4, minibatches=32, epochs=10,
                        ent_coef=0.0, continuous=True),
    "cartpole": dict(id="CartPole-v1", num_envs=4, num_steps=128, lr=2.5e-4, minibatches=4, epochs=4,
                     ent_coef=0.01, continuous=False),
}


def run_esper(env: str, steps: int, extra: list[str]) -> float:
    with tempfile.TemporaryDirectory() as d:
        cmd = [sys.executable, "-m", "esper_exp.train", f"env={env}", f"ppo.total_timesteps={steps}",
               "tracking.wandb.mode=disabled", "tracking.progress=off", "torch_threads=1", f"hydra.run.dir={d}", *extra]
        subprocess.run(cmd, check=True, capture_output=True)
        last = Path(d, "metrics.jsonl").read_text().splitlines()[-1]
        return json.loads(last)["sps"]


def sb3_worker(env: str, steps: int) -> float:
    import gymnasium as gym
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    torch.set_num_threads(1)
    e = ENVS[env]
    venv = make_vec_env(e["id"], n_envs=e["num_envs"], seed=1)
    if e["continuous"]:
        venv = VecNormalize(venv, norm_obs=True, norm_reward=True, clip_obs=10.0, clip_reward=10.0, gamma=0.99)
    batch = e["num_envs"] * e["num_steps"]
    model = PPO("MlpPolicy", venv, n_steps=e["num_steps"], batch_size=batch // e["minibatches"], n_epochs=e["epochs"],
                learning_rate=lambda f: f * e["lr"], gamma=0.99, gae_lambda=0.95, clip_range=0.2, ent_coef=e["ent_coef"],
                vf_coef=0.5, max_grad_norm=0.5, device="cpu", seed=1,
                policy_kwargs=dict(net_arch=dict(pi=[64, 64], vf=[64, 64]), activation_fn=torch.nn.Tanh,
                                   ortho_init=True))
    t0 = time.perf_counter()
    model.learn(total_timesteps=steps)
    return model.num_timesteps / (time.perf_counter() - t0)


def env_worker(env: str, steps: int) -> float:
    import numpy as np

    from esper_exp.envs import GroupEnvs

    e = ENVS[env]
    cont = e["continuous"]
    venv = GroupEnvs(e["id"], [1], e["num_envs"], 0.99, clip_action=cont, normalize_obs=cont, normalize_reward=cont)
    venv.reset()
    rng = np.random.default_rng(0)
    space = venv.single_action_space
    n = steps // e["num_envs"]
    acts = (rng.uniform(-1, 1, (n, 1, e["num_envs"], *space.shape)).astype(np.float32) if cont
            else rng.integers(0, space.n, (n, 1, e["num_envs"])))
    t0 = time.perf_counter()
    for a in acts:
        venv.step(a)
    return n * e["num_envs"] / (time.perf_counter() - t0)


def run_worker(kind: str, env: str, steps: int) -> float:
    out = subprocess.run([sys.executable, __file__, "--worker", kind, "--envs", env, "--steps", str(steps)],
                         check=True, capture_output=True, text=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--envs", nargs="+", default=["halfcheetah", "cartpole"], choices=sorted(ENVS))
    ap.add_argument("--steps", type=int, default=20480, help="env steps per trainer run")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--esper-args", nargs="*", default=[], help="extra esper-train overrides")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--worker", choices=["sb3", "env"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        fn = sb3_worker if args.worker == "sb3" else env_worker
        print(fn(args.envs[0], args.steps))
        return

    results = {"machine": f"{platform.node()} {platform.processor()} ({os.cpu_count()} cores)",
               "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "steps": args.steps, "repeats": args.repeats,
               "esper_args": args.esper_args, "envs": {}}
    for env in args.envs:
        samples: dict[str, list[float]] = {"esper": [], "sb3": [], "env": []}
        for r in range(args.repeats):
            samples["esper"].append(run_esper(env, args.steps, args.esper_args))
            samples["sb3"].append(run_worker("sb3", env, args.steps))
            samples["env"].append(run_worker("env", env, args.steps))
            print(f"{env} repeat {r + 1}: " + ", ".join(f"{k} {v[-1]:.0f}" for k, v in samples.items()), flush=True)
        med = {k: statistics.median(v) for k, v in samples.items()}
        results["envs"][env] = {"samples": samples, "median": med, "ratio_esper_over_sb3": med["esper"] / med["sb3"]}
        print(f"{env}: esper {med['esper']:.0f} steps/s, SB3 {med['sb3']:.0f} steps/s, "
              f"ratio {med['esper'] / med['sb3']:.2f}x, raw env (wrapped) {med['env']:.0f} steps/s", flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
