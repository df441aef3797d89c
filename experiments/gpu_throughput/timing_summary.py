"""Summarise experiments/cuda_eager/group_run.py outputs: per process, env steps/s over the updates after the first
(which includes CUDA-graph capture) and the per-update env / inference / update split; then the sum over processes.

    python timing_summary.py RUN_OUT_DIR [RUN_OUT_DIR ...]
    python timing_summary.py --collect OUT.json ROOT    # every ROOT/*/timing.json into one file, by directory name"""

import json
import pathlib
import sys


def rate(d) -> float:
    """Env steps/s of one group_run.py output over its updates after the first."""
    t = json.load(open(f"{d}/timing.json"))
    u = t["updates"][1:] or t["updates"]
    return t["steps_per_update"] * len(u) / sum(x["wall_s"] for x in u)


def summary(dirs: list[str]) -> None:
    total = 0.0
    for d in dirs:
        try:
            t = json.load(open(f"{d}/timing.json"))
        except (OSError, ValueError) as e:
            print(d, "no timing:", e)
            continue
        u = t["updates"][1:] or t["updates"]
        wall = sum(x["wall_s"] for x in u) / len(u)
        sps = t["steps_per_update"] / wall
        total += sps
        split = {k: sum(x[f"time_{k}"] for x in u) / len(u) for k in ("env", "inference", "update")}
        print(f"{d.rstrip('/').split('/')[-1]}: K={t['k']} {sps:,.0f} env steps/s; per update {wall:.2f} s = env "
              f"{split['env']:.2f} + inference {split['inference']:.2f} + update {split['update']:.2f} "
              f"(+ {wall - sum(split.values()):.2f} other) {t['statuses']}")
    print(f"sum over processes: {total:,.0f} env steps/s")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--collect"]:
        out, root = sys.argv[2], pathlib.Path(sys.argv[3])
        pathlib.Path(out).write_text(json.dumps({f.parent.name: json.loads(f.read_text())
                                                 for f in sorted(root.glob("*/timing.json"))}))
    else:
        summary(sys.argv[1:])
