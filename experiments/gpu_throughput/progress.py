"""Progress and throughput of a sweep directory, from its run files only (run.json, metrics.jsonl).

    python progress.py SWEEP_DIR OUT.json [BEFORE.json START_EPOCH_S]
    python progress.py --between BEFORE.json AFTER.json SWEEP_DIR   # a saved call's interval, recomputed

Per run: status, env steps done, updates, and the summed time_env / time_inference / time_update of its metrics
records. With BEFORE.json (an earlier output of this script) and the wall-clock start of the interval: env steps
done in the interval by all runs and their rate (aggregate env steps/s over the wall time since START), the number
of runs that advanced, per group of runs (the runs one process trained together, run.json's ``group``; a run
without one is its own group) that advanced: its runs, env steps and its members' mean env / inference / update time
in the interval, and the interval's wall time outside updates (start-up, checkpoints, stopping, the gaps between
groups): wall minus, summed over those groups, the three means. The sum assumes the groups ran one after another,
as sweep_box.sh runs them (the grouped launcher with n_jobs=1); the ``time_*_s_member_mean`` keys are those sums.
Before 2026-11-24 (session 10's results and earlier) the means were taken over every run of the sweep, finished ones
too, and no time outside updates was written; in session 11's (written by the box before this change) they were
over the runs that advanced, as one group, so a call in which one group ended and the next started shows the second
group's time as outside updates: ``--between`` recomputes such a call from its saved output and the one before
(the wall time between the two outputs' ``when``, to the second; the groups from SWEEP_DIR's run.json files). Two
calls of one box in a row give the interval between their scans, the sweep's time between the calls included (a
detached sweep trains on); across boxes the wall time would include the time without a box: use it within one box."""

from __future__ import annotations

import calendar
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
        name = f"{d.parent.name}/{d.name}"
        members = (info.get("group") or {}).get("members") or [str(d)]
        first = Path(members[0])
        runs[name] = {"status": info.get("status"), "steps": steps, "updates": updates,
                      "group": f"{first.parent.name}/{first.name}", **{f"time_{k}": v for k, v in t.items()}}
    return runs


def interval(runs: dict, before: dict, wall: float) -> dict:
    """The interval from BEFORE's runs to RUNS (both as scan returns them) over WALL seconds."""
    done = {k: r["steps"] - before.get(k, {}).get("steps", 0) for k, r in runs.items()}
    moved = [k for k, d in done.items() if d > 0]  # the runs that trained in the interval
    groups = {}
    for k in moved:
        groups.setdefault(runs[k]["group"], []).append(k)
    per_group = {g: {"runs": len(ks), "env_steps": sum(done[k] for k in ks),
                     **{f"time_{p}_s_member_mean": sum(runs[k][f"time_{p}"] - before.get(k, {}).get(f"time_{p}", 0.0)
                                                       for k in ks) / len(ks) for p in ("env", "inference", "update")}}
                 for g, ks in groups.items()}
    means = {p: sum(g[f"time_{p}_s_member_mean"] for g in per_group.values()) for p in ("env", "inference", "update")}
    return {"wall_s": wall, "env_steps": sum(done.values()), "env_steps_per_s": sum(done.values()) / wall,
            "runs_advanced": len(moved), **{f"time_{p}_s_member_mean": v for p, v in means.items()},
            "outside_updates_s": wall - sum(means.values()) if moved else None, "groups": per_group}


USAGE = ("usage: progress.py SWEEP_DIR OUT.json [BEFORE.json START_EPOCH_S] | "
         "progress.py --between BEFORE.json AFTER.json SWEEP_DIR")


def main() -> None:
    between = sys.argv[1:2] == ["--between"]
    if len(sys.argv) not in ((5,) if between else (3, 5)):
        print(f"progress.py: {len(sys.argv) - 1} argument(s) {sys.argv[1:]}; {USAGE}", file=sys.stderr)
        sys.exit(2)
    if between:  # recompute a saved call's interval; groups from SWEEP_DIR's run.json files
        _, _, before_p, after_p, sweep = sys.argv
        before, after, groups = (json.loads(Path(before_p).read_text()), json.loads(Path(after_p).read_text()),
                                 scan(Path(sweep)))
        runs = {k: {**r, "group": groups.get(k, {}).get("group", k)} for k, r in after["runs"].items()}
        when = [calendar.timegm(time.strptime(x["when"], "%Y-%m-%dT%H:%M:%SZ")) for x in (before, after)]
        print(json.dumps(interval(runs, before["runs"], when[1] - when[0]), indent=1))
        return
    sweep, out = Path(sys.argv[1]), Path(sys.argv[2])
    runs = scan(sweep)
    result = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "runs": runs,
              "total_steps": sum(r["steps"] for r in runs.values()),
              "statuses": {s: sum(r["status"] == s for r in runs.values()) for s in {r["status"] for r in runs.values()}}}
    if len(sys.argv) > 4:
        before = json.loads(Path(sys.argv[3]).read_text()) if Path(sys.argv[3]).exists() else {"runs": {}}
        result["interval"] = interval(runs, before["runs"], time.time() - float(sys.argv[4]))
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=1))


if __name__ == "__main__":
    main()
