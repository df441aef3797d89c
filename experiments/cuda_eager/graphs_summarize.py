"""Summarise graphs_box.sh's throughput runs (group_run.py timing.json) into summary.json / summary.md.

Per K x precision x mode (graphs / eager): group env steps/s and the env / inference / update split, medians of the
updates after the first (the first update of a graphed run includes the captures).

    python experiments/cuda_eager/graphs_summarize.py ROOT OUT_DIR
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


def main() -> None:
    root, out = Path(sys.argv[1]), Path(sys.argv[2])
    rows = []
    for t in sorted(root.glob("g*_*_k*/timing.json")):
        mode, prec, k = t.parent.name.split("_")
        d = json.loads(t.read_text())
        ups = d["updates"][1:] or d["updates"]
        med = lambda key, ups=ups: statistics.median(u[key] for u in ups)  # noqa: E731
        first = d["updates"][0]
        rows.append({"mode": "graphs" if mode == "g1" else "eager", "precision": prec, "k": int(k[1:]),
                     "statuses": d["statuses"], "reason": d["reason"], "updates_measured": len(ups),
                     "env_steps_per_s": round(med("env_steps_per_s")), "wall_s": round(med("wall_s"), 3),
                     "env_s": round(med("time_env"), 3), "inference_s": round(med("time_inference"), 3),
                     "update_s": round(med("time_update"), 3), "first_update_wall_s": round(first["wall_s"], 3),
                     "first_update_update_s": round(first["time_update"], 3)})
    rows.sort(key=lambda r: (r["precision"], r["k"], r["mode"]))
    (out / "summary.json").write_text(json.dumps(rows, indent=1))
    lines = ["| precision | K | mode | env steps/s | wall/update s | env s | inference s | update s | first update s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['precision']} | {r['k']} | {r['mode']} | {r['env_steps_per_s']:,} | {r['wall_s']} | "
                     f"{r['env_s']} | {r['inference_s']} | {r['update_s']} | {r['first_update_wall_s']} |"
                     + ("" if r["statuses"] == ["completed"] else f" {r['statuses']} {r['reason']}"))
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
