"""Table for experiments/baseline: per cell and seed, the first env step at which the mean return over the last
20 training episodes reached a threshold (CartPole: 475), and the mean of the last 100 episodes.

    python experiments/baseline/first_reach.py <sweep dir> [--threshold 475] [--window 20]
"""

import argparse
import json
from collections import defaultdict
from pathlib import Path


def first_reach(episodes: list[dict], threshold: float, window: int) -> int | None:
    returns = [e["return"] for e in episodes]
    for i in range(window, len(returns) + 1):
        if sum(returns[i - window:i]) / window >= threshold:
            return episodes[i - 1]["global_step"]
    return None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("sweep", type=Path)
    ap.add_argument("--threshold", type=float, default=475.0)
    ap.add_argument("--window", type=int, default=20)
    args = ap.parse_args()
    cells: dict[str, dict[int, tuple]] = defaultdict(dict)
    for rj in sorted(args.sweep.rglob("run.json")):
        info = json.loads(rj.read_text())
        eps = [json.loads(line) for line in (rj.parent / "episodes.jsonl").read_text().splitlines()]
        last100 = sum(e["return"] for e in eps[-100:]) / max(1, len(eps[-100:]))
        cells[f"{info['gelu']}/{info['precision']}"][info["seed"]] = (first_reach(eps, args.threshold, args.window),
                                                                     last100, info["status"])
    seeds = sorted({s for c in cells.values() for s in c})
    print(f"| cell | reached {args.threshold:g} | " + " | ".join(f"seed {s}" for s in seeds) + " | final (last 100) |")
    print("|---|---|" + "---|" * len(seeds) + "---|")
    for cell in sorted(cells, key=lambda c: (["fp32", "bf16", "fp16"].index(c.split("/")[1]), c)):
        runs = cells[cell]
        ok = sum(r[0] is not None for r in runs.values())
        steps = " | ".join(f"{runs[s][0]:,}" if s in runs and runs[s][0] is not None else "—" for s in seeds)
        finals = [runs[s][1] for s in seeds if s in runs]
        print(f"| {cell} | {ok}/{len(runs)} | {steps} | {min(finals):.0f}–{max(finals):.0f} |")


if __name__ == "__main__":
    main()
