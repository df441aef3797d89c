"""Summarise a py-spy raw (collapsed-stack) profile: per process, its share of the samples; for the busiest
process (or the one whose command line contains --match), the functions with the most inclusive and self samples.

    python spy_summary.py PYSPY_RAW.txt [--match group_run] [--top 30] [--rate 100]

py-spy's raw format is one line per distinct stack, "process ...;frame;frame;... COUNT" (`py-spy record -f raw`;
round6_box.sh records the main process and the env workers of a K = 60 group for 12 s at 100 Hz)."""

from __future__ import annotations

import argparse
import collections
import re


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("raw")
    ap.add_argument("--match", default="", help="pick the process whose command line contains this")
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--rate", type=float, default=100.0, help="the sampling rate given to py-spy (-r), per second")
    a = ap.parse_args()
    stacks: dict[str, list[tuple[list[str], int]]] = collections.defaultdict(list)
    pending = ""  # a process's command line may hold newlines (python -c "..."): its record spans several lines
    for line in open(a.raw, encoding="utf-8", errors="replace"):
        line = pending + line.rstrip("\n")
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            pending = line + " " if line.strip() else ""
            continue
        pending = ""
        frames = stack.split(";")  # a frame is "function (file:line)": counted per function, not per line
        stacks[frames[0]].append(([re.sub(r":\d+\)$", ")", f) for f in frames[1:]], int(n)))
    totals = {p: sum(n for _, n in v) for p, v in stacks.items()}
    for p, n in sorted(totals.items(), key=lambda kv: -kv[1])[:8]:
        print(f"{n / a.rate:7.1f} s  {p[:140]}")
    pick = [p for p in totals if a.match in p] if a.match else list(totals)
    if not pick:
        raise SystemExit(f"spy_summary.py: no process matches {a.match!r}")
    proc = max(pick, key=totals.get)
    incl, own = collections.Counter(), collections.Counter()
    for frames, n in stacks[proc]:
        for f in set(frames):
            incl[f] += n
        if frames:
            own[frames[-1]] += n
    total = totals[proc]
    print(f"\n== {proc[:140]}: {total} samples ({total / a.rate:.1f} s)")
    for name, c in (("inclusive", incl), ("self", own)):
        print(f"-- {name}")
        for f, n in c.most_common(a.top):
            print(f"{n / total:6.1%}  {f[:150]}")


if __name__ == "__main__":
    main()
