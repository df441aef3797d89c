"""Time two whole commands side by side: A B A B ..., after warm-up pairs; medians and the A/B ratio pair by pair.

    python experiments/abtime.py -n 5 --warmup 1 --a "CMD A ..." --b "CMD B ..."

Each command string is split as a shell splits words (no shell runs it: use `bash -c '...'` for one). Every run is a
child process of this one, reaped with os.wait4, so its wall time, user and system CPU seconds and peak memory (the
largest single process, as the kernel reports it) are that run's own. The ratio is taken per pair, then its median,
so a drift of the machine's speed over the runs moves A and B alike. The project's speed figures taken on the dev VM
were measured this way (whole processes, interleaved pairs, medians); this script repeats such a measurement with
the standard library only. Exit status 0 when every run was started and reaped (a command's own non-zero exit is
printed, not acted on), 2 for bad arguments or a command that cannot be started.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import sys
import time

FIGURES = ("wall_s", "user_s", "sys_s", "peak_mib")


def run_once(argv: list[str]) -> dict[str, float]:
    """Run ``argv`` to its end (output discarded); its own wall time, CPU seconds, peak memory and exit code."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: keep Popen from waiting again
    return {"wall_s": wall, "user_s": usage.ru_utime, "sys_s": usage.ru_stime,
            "peak_mib": usage.ru_maxrss / 1024.0, "rc": float(proc.returncode)}


def interleave(a: list[str], b: list[str], n: int, warmup: int) -> tuple[list[dict], list[dict]]:
    """``warmup`` uncounted pairs, then ``n`` counted pairs, A before B in every pair."""
    runs_a: list[dict] = []
    runs_b: list[dict] = []
    for i in range(warmup + n):
        ra, rb = run_once(a), run_once(b)
        if i >= warmup:
            runs_a.append(ra)
            runs_b.append(rb)
    return runs_a, runs_b


def summary(runs_a: list[dict], runs_b: list[dict]) -> list[str]:
    """Markdown rows: each figure's median (min-max) for A and B, and the median (min-max) of the pairwise A/B."""
    rows = ["| figure | A median (min-max) | B median (min-max) | A/B per pair: median (min-max) |",
            "|---|---|---|---|"]

    def spread(xs: list[float]) -> str:
        return f"{statistics.median(xs):.3f} ({min(xs):.3f}-{max(xs):.3f})"

    for f in FIGURES:
        xa, xb = [r[f] for r in runs_a], [r[f] for r in runs_b]
        # a ratio only where every pair has one (a zero in B, e.g. CPU seconds too short to count, leaves it out)
        ratios = [x / y for x, y in zip(xa, xb)] if all(y > 0 for y in xb) else []
        rows.append(f"| {f} | {spread(xa)} | {spread(xb)} | {spread(ratios) if ratios else 'n/a'} |")
    codes = sorted({int(r['rc']) for r in runs_a + runs_b})
    rows.append(f"\nexit codes seen: {codes}; pairs counted: {len(runs_a)}")
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--a", required=True, help="command A, one string")
    p.add_argument("--b", required=True, help="command B, one string")
    p.add_argument("-n", type=int, default=5, help="counted pairs (1-100)")
    p.add_argument("--warmup", type=int, default=1, help="uncounted pairs first (0-10)")
    args = p.parse_args(argv)
    if not 1 <= args.n <= 100:
        print(f"abtime.py: -n {args.n} is out of range; allowed 1 to 100", file=sys.stderr)
        return 2
    if not 0 <= args.warmup <= 10:
        print(f"abtime.py: --warmup {args.warmup} is out of range; allowed 0 to 10", file=sys.stderr)
        return 2
    a, b = shlex.split(args.a), shlex.split(args.b)
    for name, cmd in (("--a", a), ("--b", b)):
        if not cmd:
            print(f"abtime.py: {name} is empty; give a command", file=sys.stderr)
            return 2
    try:
        runs_a, runs_b = interleave(a, b, args.n, args.warmup)
    except OSError as e:
        print(f"abtime.py: cannot start a command: {e}", file=sys.stderr)
        return 2
    print(f"A: {args.a}\nB: {args.b}\n")
    print("\n".join(summary(runs_a, runs_b)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
