"""Throughput of grouped runs on one CPU core: HalfCheetah-v5 env steps/s of a group of K seeds in one process (the
esper engine) vs Stable-Baselines3 PPO (one run, one process) vs raw ``gym.make`` env stepping.

Every measurement is a fresh subprocess pinned to one core with one torch thread; the kinds run interleaved
(group K=10, group K=1, SB3, raw env, then again), and the report gives medians over the repeats and the ratios of
medians. Hyper-parameters are CleanRL's ppo_continuous_action (configs/ppo/mujoco.yaml): 2048 steps per rollout,
10 epochs x 32 minibatches; SB3 gets the same (64x64 tanh MLPs, orthogonal init, VecNormalize obs+reward).
Set-up (imports, env and policy construction) is excluded for every kind; each esper figure also splits its time
into env stepping, rollout inference and the update (where the remaining time goes).

    python experiments/grouped_throughput/throughput.py --repeats 5 --out experiments/grouped_throughput/results.json

Not a test: wall-clock figures depend on the machine and its load. Quote medians measured side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROLLOUT = 2048  # env steps per member per PPO update (configs/ppo/mujoco.yaml)


def _pin(core: int) -> None:
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {core})
    import torch

    torch.set_num_threads(1)


def esper_worker(members: int, updates: int) -> dict:
    import torch
    from hydra import compose, initialize_config_dir

    from esper_exp.runtime import prepare
    from esper_exp.train import CONFIG_DIR, build_ppo

    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["env=halfcheetah", "device=cpu"])
    prepare(1, torch.device("cpu"), True, 1)
    ppo, _ = build_ppo(cfg, list(range(1, members + 1)), torch.device("cpu"))
    phases = {"env": 0.0, "inference": 0.0, "update": 0.0}
    t0 = time.perf_counter()
    for _ in range(updates):
        record = next(iter(ppo.run_update(lambda *a: None).records.values()))
        for k in phases:
            phases[k] += record[f"time_{k}"]
    wall = time.perf_counter() - t0
    ppo.close()
    return {"sps": members * ROLLOUT * updates / wall, "wall_s": wall, **{f"{k}_s": v for k, v in phases.items()}}


def sb3_worker(steps: int) -> dict:
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    venv = VecNormalize(make_vec_env("HalfCheetah-v5", n_envs=1, seed=1), norm_obs=True, norm_reward=True,
                        clip_obs=10.0, clip_reward=10.0, gamma=0.99)
    model = PPO("MlpPolicy", venv, n_steps=ROLLOUT, batch_size=ROLLOUT // 32, n_epochs=10,
                learning_rate=lambda f: f * 3e-4, gamma=0.99, gae_lambda=0.95, clip_range=0.2, ent_coef=0.0,
                vf_coef=0.5, max_grad_norm=0.5, device="cpu", seed=1,
                policy_kwargs=dict(net_arch=dict(pi=[64, 64], vf=[64, 64]), activation_fn=torch.nn.Tanh,
                                   ortho_init=True))
    t0 = time.perf_counter()
    model.learn(total_timesteps=steps)
    wall = time.perf_counter() - t0
    return {"sps": model.num_timesteps / wall, "wall_s": wall}


def gym_worker(steps: int) -> dict:
    import gymnasium as gym
    import numpy as np

    env = gym.make("HalfCheetah-v5")
    env.reset(seed=1)
    actions = np.random.default_rng(0).uniform(-1, 1, (steps, *env.action_space.shape))
    t0 = time.perf_counter()
    for a in actions:
        _, _, terminated, truncated, _ = env.step(a)
        if terminated or truncated:
            env.reset()
    wall = time.perf_counter() - t0
    return {"sps": steps / wall, "wall_s": wall}


KINDS = {  # name -> (worker args, label)
    "group10": (["esper", "10", "2"], "esper group of 10 seeds, one process"),
    "group1": (["esper", "1", "3"], "esper single run (group of 1)"),
    "sb3": (["sb3", "6144"], "SB3 2.x PPO, one run"),
    "gym": (["gym", "20000"], "raw gym.make HalfCheetah-v5 stepping"),
}


def run_worker(args: list[str], core: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--core", str(core), "--worker", *args], check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def machine() -> str:
    try:
        model = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor()
    return f"{model}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--core", type=int, default=0, help="the one CPU core every measurement is pinned to")
    ap.add_argument("--kinds", nargs="+", default=list(KINDS), choices=list(KINDS))
    ap.add_argument("--out", type=Path)
    ap.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        _pin(args.core)
        kind, *rest = args.worker
        result = (esper_worker(int(rest[0]), int(rest[1])) if kind == "esper" else
                  sb3_worker(int(rest[0])) if kind == "sb3" else gym_worker(int(rest[0])))
        print(json.dumps(result))
        return

    import torch

    samples: dict[str, list[dict]] = {k: [] for k in args.kinds}
    for r in range(args.repeats):
        for kind in args.kinds:
            samples[kind].append(run_worker(KINDS[kind][0], args.core))
        print(f"repeat {r + 1}: " + ", ".join(f"{k} {v[-1]['sps']:.0f}" for k, v in samples.items()), flush=True)
    median = {k: statistics.median(s["sps"] for s in v) for k, v in samples.items()}
    result = {"machine": machine(), "torch": torch.__version__, "python": platform.python_version(),
              "date": time.strftime("%Y-%m-%d %H:%M %Z"), "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
              "core": args.core, "repeats": args.repeats, "median_sps": median, "samples": samples}
    if "sb3" in median:
        result["ratio_to_sb3"] = {k: v / median["sb3"] for k, v in median.items()}
    for kind in ("group10", "group1"):
        if kind in samples:
            total = {p: statistics.median(s[f"{p}_s"] / s["wall_s"] for s in samples[kind])
                     for p in ("env", "inference", "update")}
            result.setdefault("time_split", {})[kind] = total
    print(f"\n{result['machine']}; torch {result['torch']}; {result['date']}; one core, one torch thread; "
          f"median of {args.repeats}\n")
    print("| what | env steps/s | vs SB3 |\n|---|---|---|")
    for kind in args.kinds:
        ratio = result.get("ratio_to_sb3", {}).get(kind)
        print(f"| {KINDS[kind][1]} | {median[kind]:,.0f} | {'' if ratio is None else f'{ratio:.2f}x'} |")
    for kind, split in result.get("time_split", {}).items():
        print(f"{kind}: " + ", ".join(f"{p} {100 * f:.0f}%" for p, f in split.items()) + " of the wall time")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
