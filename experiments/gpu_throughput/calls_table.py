"""The per-call table of a study README, from the progress.json files sweep_box.sh returned (as collect.sh keeps them).

    python experiments/gpu_throughput/calls_table.py BEFORE_progress.json CALL1_progress.json [CALL2_progress.json ...]

BEFORE is the state the first call started from (the previous session's last call: a box restores that call's pack),
or ``-`` where the first call started the sweep's runs from scratch (nothing trained before it). One markdown row per
call: when its scan ran (UTC, HH:MM), the runs that trained since the file before it (per env and seed range: the
lowest update before -> the highest after; "done" once all of them completed), and the call's own interval as the box
wrote it: sweep wall time, env steps, env steps/s, time outside updates. The runs column compares with the file
before, so it includes what a detached sweep trained between two calls; the interval columns are the box's (its scan
at the call's start). Where the box's interval came from a progress.py that took all runs as one group (session 11
and earlier), a call in which one group ended and the next began overstates the time outside updates: `progress.py
--between` recomputes it. The time outside updates sums the groups' member means as if the groups ran one after another
(sweep_box.sh's NJ=1); where groups ran side by side (the probe's NJ=4) that sum exceeds the wall time, and the cell
reads "overlapped" instead of a negative number. A group is named by its env, or by its cell where other groups of the
same env and another cell trained in the same call (the probe's one process per cell).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def _env_seed(key: str) -> tuple[str, int]:
    """'hopper-exact-bf16/seed=21' -> ('hopper', 21)"""
    cell, seed = key.split("/")
    return cell.split("-")[0], int(seed.removeprefix("seed="))


def moved(before: dict, after: dict) -> list[str]:
    """The runs that trained between two scans, per group (progress.py's ``group``; in files without it, the runs
    of one env that went from the same update to the same update, as a group's members do): 'env a-b: u0 -> u1',
    with '(done)' once all of them completed."""
    groups: dict[tuple, list] = {}
    for key, r in after["runs"].items():
        b = before["runs"].get(key, {})
        if r["steps"] > b.get("steps", 0):
            env, seed = _env_seed(key)
            ident = (env, r["group"]) if "group" in r else (env, b.get("updates", 0), r["updates"])
            groups.setdefault(ident, []).append((seed, b.get("updates", 0), r, key.split("/")[0]))
    cells = {ident: {c for _, _, _, c in rows} for ident, rows in groups.items()}
    out = []
    for ident, rows in sorted(groups.items(), key=lambda g: min(s for s, _, _, _ in g[1])):
        env, seeds = ident[0], [s for s, _, _, _ in rows]
        others = set().union(*(c for i, c in cells.items() if i != ident and i[0] == env))
        name = next(iter(cells[ident])) if len(cells[ident]) == 1 and others - cells[ident] else env
        done = all(r["status"] == "completed" for _, _, r, _ in rows)
        out.append(f"{name} {min(seeds)}-{max(seeds)}: {min(u for _, u, _, _ in rows)} -> "
                   f"{max(r['updates'] for _, _, r, _ in rows)}{' (done)' if done else ''}")
    return out


def row(n: int, before: dict, after: dict) -> str:
    iv = after.get("interval") or {}
    when = time.strftime("%H:%M", time.strptime(after["when"], "%Y-%m-%dT%H:%M:%SZ"))
    num = lambda v, f="{:,.0f}": f.format(v) if isinstance(v, (int, float)) else ""
    outside = iv.get("outside_updates_s")
    outside = "overlapped" if isinstance(outside, (int, float)) and outside < 0 else num(outside)
    return (f"| {n} | {when} | {', '.join(moved(before, after)) or 'none'} | {num(iv.get('wall_s'))} | "
            f"{num(iv.get('env_steps'))} | {num(iv.get('env_steps_per_s'))} | {outside} |")


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(f"calls_table.py: {len(argv)} file(s) {argv}; usage: calls_table.py BEFORE_progress.json|- "
              "CALL1_progress.json [CALL2_progress.json ...]", file=sys.stderr)
        return 2
    try:
        files = [{"runs": {}} if p == "-" and i == 0 else json.loads(Path(p).read_text()) for i, p in enumerate(argv)]
    except (OSError, ValueError) as e:
        print(f"calls_table.py: cannot read a progress file: {e}", file=sys.stderr)
        return 2
    print("| call | scan (UTC) | runs (updates) | sweep wall (s) | env steps | env steps/s over the call | "
          "outside updates (s) |")
    print("|---|---|---|---:|---:|---:|---:|")
    for n in range(1, len(files)):
        print(row(n, files[n - 1], files[n]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
