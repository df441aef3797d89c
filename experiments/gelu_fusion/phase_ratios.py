"""Per-phase exact/tanh ratios of train_once.sh's runs (metrics.jsonl's own timings), pair by pair.

    python experiments/gelu_fusion/phase_ratios.py /tmp/train_once fp32 bf16

Each train_once.sh call leaves ROOT/<gelu>-<precision>.XXXXXX/ (and a .log beside it). The calls of one precision are
put in the order they ran (their .log's last write: the calls run one after another); with A and B interleaved, the
i-th exact call and the i-th tanh call form pair i. The first call of each is the uncounted warm-up. Per call: the
median over updates 2.. of one member's time_env, time_inference and time_update (the group's members share their
timings); per pair exact/tanh.
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

PHASES = ("time_env", "time_inference", "time_update")


def calls(root: Path, tag: str) -> list[dict[str, float]]:
    dirs = sorted((d for d in root.glob(tag + ".*") if d.is_dir()),
                  key=lambda d: (d.parent / (d.name + ".log")).stat().st_mtime)
    out = []
    for d in dirs:
        rows = [json.loads(line) for line in open(next(d.glob("*/seed=1")) / "metrics.jsonl")]
        rows = [r for r in rows if r["update"] >= 2]
        out.append({k: statistics.median(r[k] for r in rows) for k in PHASES})
    return out


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print("usage: phase_ratios.py ROOT PRECISION [PRECISION ...]", file=sys.stderr)
        return 2
    root = Path(argv[0])
    print("| precision | phase | exact median (s) | tanh median (s) | exact/tanh per pair: median (min-max) | pairs |")
    print("|---|---|---:|---:|---|---:|")
    for prec in argv[1:]:
        a, b = calls(root, f"exact-{prec}")[1:], calls(root, f"tanh-{prec}")[1:]
        n = min(len(a), len(b))
        for k in PHASES:
            r = [a[i][k] / b[i][k] for i in range(n)]
            print(f"| {prec} | {k} | {statistics.median(x[k] for x in a[:n]):.3f} | "
                  f"{statistics.median(x[k] for x in b[:n]):.3f} | {statistics.median(r):.3f} "
                  f"({min(r):.3f}-{max(r):.3f}) | {n} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
