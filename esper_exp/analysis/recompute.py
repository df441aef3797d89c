"""A report's verdicts recomputed from the report's own files, without the run directories.

    esper-report --recompute REPORT_DIR

The raw runs of a study stay out of git; its report directory (in git) keeps runs.csv (every run's normalised
endpoints and whether the statistics used it) and summary.json (the rule, the settings, the scopes and the verdicts).
From those two files alone this recomputes the decision and secondary tables with the same code the report used
(decision.judge_all: same scopes, strata, bootstrap seeds, Holm families and rule) and compares them with the stored
ones: anyone holding the repository can check the verdicts. Exit 0 when every recomputed row equals the stored one, 1
when one differs (each difference printed), 2 when the files are missing or not a report's.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from . import decision as Dc
from .cli import AnalysisError
from .load import sort_cells
from .output import jsonable
from .rule import ENDPOINT_KEY, Rule


def _float(text: str) -> float:
    """A runs.csv number; an empty cell (NaN was written as null) is NaN."""
    return float(text) if text not in ("", None) else math.nan


def read_report(report_dir: Path) -> tuple[dict, list[dict]]:
    """(summary.json, runs.csv rows) of a report directory; AnalysisError naming what is missing or unreadable."""
    report_dir = Path(report_dir)
    try:
        summary = json.loads((report_dir / "summary.json").read_text(encoding="utf-8"))
        with open(report_dir / "runs.csv", newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (OSError, ValueError) as e:
        raise AnalysisError(f"{report_dir}: not a readable esper-report directory (summary.json and runs.csv): "
                            f"{e}") from None
    missing = [k for k in ("rule", "settings", "scopes", "decision", "secondary") if k not in summary]
    if missing:
        raise AnalysisError(f"{report_dir}/summary.json lacks {', '.join(missing)} (written by an older esper-report?)")
    return summary, rows


def recompute(summary: dict, rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """The decision and secondary rows from runs.csv's used runs, as write_report stores them in summary.json."""
    rule = Rule.from_dict(summary["rule"])
    o = summary["settings"]
    judged = [s for s in summary["scopes"] if s != "all envs"]  # the envs with anchors, in the report's order
    cells = {env: sort_cells({r["cell"] for r in rows if r["env"] == env}) for env in judged}
    secondary = "final_return" if rule.endpoint == "auc" else "auc"
    out = []
    for endpoint, seed in ((rule.endpoint, int(o["seed"])), (secondary, int(o["seed"]) + Dc.SECONDARY_SEED_OFFSET)):
        scores: dict = {env: {} for env in judged}
        for r in rows:
            if r["env"] in scores and r["used_in_stats"] == "True":
                scores[r["env"]].setdefault(r["cell"], {})[int(r["seed"])] = _float(r[ENDPOINT_KEY[endpoint]])
        found = Dc.judge_all(scores, cells, rule, int(o["reps"]), seed, float(o["power"]))
        out.append([jsonable(Dc.csv_row(r)) for r in found])
    return out[0], out[1]


def differences(stored: list[dict], recomputed: list[dict], table: str) -> list[str]:
    """One line per row or value that differs (rows matched by scope and contrast)."""
    key = lambda r: (r.get("scope"), r.get("contrast"))
    a, b = {key(r): r for r in stored}, {key(r): r for r in recomputed}
    lines = [f"{table}: {s} {c}: stored, not recomputed" for s, c in a.keys() - b.keys()]
    lines += [f"{table}: {s} {c}: recomputed, not stored" for s, c in b.keys() - a.keys()]
    for k in a.keys() & b.keys():
        for name in sorted(set(a[k]) | set(b[k])):
            if a[k].get(name) != b[k].get(name):
                lines.append(f"{table}: {k[0]} {k[1]}: {name} stored {a[k].get(name)!r}, recomputed "
                             f"{b[k].get(name)!r}")
    return sorted(lines)
