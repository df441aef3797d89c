"""Summarise the grouped learning check: per run, the final return (mean of the last 100 training episodes, CleanRL's
published metric) and the episodes it rests on; a learning-curve figure per env.

    python experiments/grouped_learning/summarize.py outputs/sweeps/grouped_learning --out experiments/grouped_learning

Writes final_returns.csv (one row per run) and curves.png; prints a markdown table. Reads run directories only.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np

PUBLISHED = {"halfcheetah": ("HalfCheetah-v4", 1442, 46), "hopper": ("Hopper-v4", 2383, 272),
             "walker2d": ("Walker2d-v4", 2288, 572)}  # CleanRL docs, ppo_continuous_action, 1M steps, 3 seeds


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sweep_dir", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    rows, curves = [], {}
    for run_json in sorted(args.sweep_dir.glob("*/seed=*/run.json")):
        run_dir = run_json.parent
        info = json.loads(run_json.read_text())
        episodes = read_jsonl(run_dir / "episodes.jsonl")
        returns = np.array([e["return"] for e in episodes])
        steps = np.array([e["global_step"] for e in episodes])
        rows.append({"env": info["env"], "env_id": info["env_id"], "seed": info["seed"], "status": info["status"],
                     "global_step": info["global_step"], "episodes": len(returns),
                     "final_return_last100": float(returns[-100:].mean()) if len(returns) else float("nan"),
                     "group_size": info["group"]["size"], "member_index": info["group"]["member_index"],
                     "git_sha": info["git_sha"], "device": info["device"]})
        curves.setdefault(info["env"], []).append((info["seed"], steps, returns))
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "final_returns.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print("| env | seed | status | steps | final return (last 100 episodes) |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['env_id']} | {r['seed']} | {r['status']} | {r['global_step']:,} | {r['final_return_last100']:.0f} |")
    for env, runs in curves.items():
        finals = [r["final_return_last100"] for r in rows if r["env"] == env]
        name, mean, sd = PUBLISHED.get(env, (env, float("nan"), float("nan")))
        print(f"{env}: mean {np.mean(finals):.0f}, sd {np.std(finals, ddof=1):.0f}, min {np.min(finals):.0f}, "
              f"max {np.max(finals):.0f} over {len(finals)} seeds; CleanRL {name}: {mean} +/- {sd}")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(5 * len(curves), 3.4), squeeze=False)
    for ax, (env, runs) in zip(axes[0], sorted(curves.items())):
        for seed, steps, returns in runs:
            window = min(100, max(1, len(returns)))
            smooth = np.convolve(returns, np.ones(window) / window, mode="valid")
            ax.plot(steps[window - 1:], smooth, lw=1, label=f"seed {seed}")
        if env in PUBLISHED:
            name, mean, sd = PUBLISHED[env]
            ax.axhspan(mean - sd, mean + sd, color="grey", alpha=0.25, label=f"CleanRL {name} (1M)")
        ax.set_title(f"{env}: one group of {len(runs)} seeds")
        ax.set_xlabel("env steps")
        ax.set_ylabel("episode return (100-episode mean)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.out / "curves.png", dpi=80)


if __name__ == "__main__":
    main()
