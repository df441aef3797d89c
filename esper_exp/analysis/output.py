"""Writing numbers out: markdown cells and tables, strict JSON values, CSV. Shared by report and drift."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np


def fmt(v, nd: int = 4) -> str:
    """A number for a markdown cell: nd significant digits, '—' for missing/NaN."""
    if v is None:
        return "—"
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    v = float(v)
    if not math.isfinite(v):
        return "—" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    return f"{v:.{nd}g}"


def table(header: list[str], rows: list[list]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(x).replace("|", "/") for x in r) + " |" for r in rows]
    return "\n".join(out)


def jsonable(x):
    """Plain Python values for strict JSON: numpy -> Python, NaN/inf -> None."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return [jsonable(v) for v in x.tolist()]
    if isinstance(x, (np.bool_, bool)):
        return bool(x)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    return x


def write_csv(path: Path, rows: list[dict]) -> None:
    """One row per dict (union of keys, first-seen order); lists and dicts as JSON text."""
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for r in rows:
            w.writerow({k: json.dumps(jsonable(v)) if isinstance(v, (list, dict)) else jsonable(v)
                        for k, v in r.items()})
