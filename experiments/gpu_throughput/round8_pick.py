"""Round 8's rule on its results: the env worker count for the sweep that follows on the same box.

    python experiments/gpu_throughput/round8_pick.py ROUND8_ENV_CEILING.JSONL [BASE (15)]

Prints one number: the worker count faster than BASE in BOTH rounds (env steps/s of env_ceiling.py, each round's
ratio to BASE in the same round), the one with the larger smaller-ratio if several; BASE when none is, or when a
round lacks BASE's line or a count's (a failed measurement changes nothing). Env workers are not part of a run's
identity. One line on stderr says why.
"""

from __future__ import annotations

import json
import sys


def pick(rows: list[dict], base: int) -> tuple[int, str]:
    rounds: list[dict[int, float]] = []
    for r in rows:  # each round lists every worker count once, in the same order; a repeat starts the next round
        w = int(r["workers"])
        if not rounds or w in rounds[-1]:
            rounds.append({})
        rounds[-1][w] = float(r["env_steps_per_s"])
    if len(rounds) < 2 or any(base not in rd for rd in rounds):
        return base, f"kept {base}: {len(rounds)} round(s) with a measurement of {base} workers, need 2"
    ratios = {w: [rd[w] / rd[base] for rd in rounds if w in rd] for w in rounds[0] if w != base}
    faster = {w: min(rs) for w, rs in ratios.items() if len(rs) == len(rounds) and min(rs) > 1.0}
    shown = ", ".join(f"{w}: " + " / ".join(f"{x:.2f}x" for x in rs) for w, rs in sorted(ratios.items()))
    if not faster:
        return base, f"kept {base}: no count faster in every round ({shown})"
    best = max(faster, key=faster.get)
    return best, f"chose {best}: faster than {base} in every round ({shown})"


def main(argv: list[str]) -> int:
    if len(argv) not in (1, 2):
        print("usage: round8_pick.py ROUND8_ENV_CEILING.JSONL [BASE]", file=sys.stderr)
        return 2
    base = int(argv[1]) if len(argv) == 2 else 15
    try:
        with open(argv[0]) as f:
            rows = [json.loads(line) for line in f if '"workers"' in line]
    except (OSError, ValueError) as e:
        print(f"kept {base}: {argv[0]} unreadable ({e})", file=sys.stderr)
        print(base)
        return 0
    w, why = pick(rows, base)
    print(why, file=sys.stderr)
    print(w)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
