"""Progress and throughput of a sweep directory, from its run files only (run.json, metrics.jsonl).

    python progress.py SWEEP_DIR OUT.json [BEFORE.json START_EPOCH_S]

Per run: status, env steps done, updates, and the summed time_env / time_inference / time_update of its metrics
records. With BEFORE.json (an earlier output of this script) and the wall-clock start of the interval: env steps
done in the interval by all runs and their rate (aggregate env steps/s over the wall time since START), the number
of runs that advanced, the mean over those runs of their env / inference / update time in the interval, and the
interval's wall time outside those updates (start-up, checkpoints, stopping: wall minus the three means). Before
2026-11-24 (session 10's results and earlier) the means were taken over every run of the sweep, finished ones too,
and no time outside updates was written."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def scan(sweep: Path) -> dict:
    runs = {}
    for rj in sorted(sweep.glob("*/seed=*/run.json")):
        d = rj.parent
        info = json.loads(rj.read_text())
        steps = updates = 0
        t = {"env": 0.0, "inference": 0.0, "update": 0.0}
        mp = d / "metrics.jsonl"
        if mp.exists():
            for line in mp.read_text().splitlines():
                try:
                    m = json.loads(line)
                except ValueError:
                    continue
                steps, updates = m["global_step"], m["update"]
                for k in t:
                    t[k] += m.get(f"time_{k}", 0.0)
        if not mp.exists():  # a completed run carried as its run.json alone (carry.py)
            steps, updates = info.get("global_step") or 0, info.get("update") or 0
        runs[f"{d.parent.name}/{d.name}"] = {"status": info.get("status"), "steps": steps, "updates": updates,
                                             **{f"time_{k}": v for k, v in t.items()}}
    return runs


def main() -> None:
    sweep, out = Path(sys.argv[1]), Path(sys.argv[2])
    runs = scan(sweep)
    result = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "runs": runs,
              "total_steps": sum(r["steps"] for r in runs.values()),
              "statuses": {s: sum(r["status"] == s for r in runs.values()) for s in {r["status"] for r in runs.values()}}}
    if len(sys.argv) > 4:
        before = json.loads(Path(sys.argv[3]).read_text()) if Path(sys.argv[3]).exists() else {"runs": {}}
        wall = time.time() - float(sys.argv[4])
        done = {k: r["steps"] - before["runs"].get(k, {}).get("steps", 0) for k, r in runs.items()}
        moved = [k for k, d in done.items() if d > 0]  # the runs that trained in the interval
        means = {p: sum(runs[k][f"time_{p}"] - before["runs"].get(k, {}).get(f"time_{p}", 0.0) for k in moved)
                 / max(len(moved), 1) for p in ("env", "inference", "update")}
        result["interval"] = {"wall_s": wall, "env_steps": sum(done.values()),
                              "env_steps_per_s": sum(done.values()) / wall, "runs_advanced": len(moved),
                              **{f"time_{p}_s_member_mean": v for p, v in means.items()},
                              "outside_updates_s": wall - sum(means.values()) if moved else None}
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=1))


if __name__ == "__main__":
    main()
