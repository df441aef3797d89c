"""Per-run outcomes of one env: return curves on a common step grid, the endpoints (normalised AUC, final return,
time to threshold), and training-health curves. Arrays in, arrays out; report.py does the statistics."""

from __future__ import annotations

import math
import warnings

import numpy as np

from . import stats as S
from .load import HEALTH_KEYS, LOSS_KEYS, Run
from .rule import Rule

# health panels that show the worst run of a cell instead of the median over seeds
WORST_CASE = {"loss_scale": "min", "nonfinite_grad_steps": "max"}


def run_end(run: Run) -> float:
    ends = [run.info.get("global_step")]
    if run.episodes_step.size:
        ends.append(int(run.episodes_step[-1]))
    ends = [e for e in ends if isinstance(e, (int, float)) and math.isfinite(e)]
    return float(max(ends)) if ends else 0.0


def env_outcomes(env: str, cells: list[str], all_runs: dict, rule: Rule, o: dict) -> dict:
    """Curves and endpoints of every run of one env. all_runs: {cell: [Run]} (any status).

    Returns {"grid", "used": {cell: [Run]}, "per_run": {(cell, seed): {...}}, "rows": [...], "has_anchors"}.
    A run is used in the statistics when it completed and has episodes. The grid runs from the latest first
    episode to the earliest end among used runs. Normalised scores are NaN when the env has no anchors."""
    used = {c: [r for r in all_runs[c] if r.status == "completed" and r.episodes_step.size] for c in cells}
    flat = [r for c in cells for r in used[c]]
    grid = (S.common_grid([r.episodes_step[0] for r in flat], [run_end(r) for r in flat], o["grid"])
            if flat else np.array([0.0]))
    has_anchors = env in rule.anchors
    norm = (lambda x: rule.normalise(env, x)) if has_anchors else (lambda x: x * float("nan"))
    threshold = None
    if has_anchors:
        a = rule.anchors[env]
        threshold = a["random"] + o["threshold"] * (a["reference"] - a["random"])
    per_run, rows = {}, []
    for c in cells:
        for r in all_runs[c]:
            fr = S.final_return(r.episodes_return, o["last"])
            curve = S.curve_on_grid(r.episodes_step, r.episodes_return, grid, o["window"])
            auc = S.step_averaged_return(curve, grid) if np.isfinite(curve).all() else float("nan")
            ttt = S.first_crossing(curve, grid, threshold) if threshold is not None else float("nan")
            rec = {"final_return": fr, "auc": auc, "auc_norm": norm(auc), "final_norm": norm(fr),
                   "time_to_threshold": ttt, "curve": curve, "curve_norm": norm(curve)}
            per_run[(c, r.seed)] = rec
            rows.append({"env": env, "cell": c, "seed": r.seed, "status": r.status,
                         "reason": r.info.get("reason"), "used_in_stats": r in used[c],
                         "episodes": int(r.episodes_step.size), "last_step": run_end(r),
                         "final_return": fr, "auc": auc, "auc_norm": rec["auc_norm"],
                         "final_norm": rec["final_norm"], "time_to_threshold": ttt, **r.nonfinite_summary(),
                         "bad_lines": r.bad_lines, "damaged": r.damage, "path": str(r.path)})
    return {"grid": grid, "used": used, "per_run": per_run, "rows": rows, "has_anchors": has_anchors,
            "threshold": threshold}


def scores(out: dict, key: str) -> dict:
    """{cell: {seed: value}} of one endpoint over the used runs."""
    return {c: {r.seed: out["per_run"][(c, r.seed)][key] for r in rs} for c, rs in out["used"].items() if rs}


# --------------------------------------------------------------------------- health


def _health_curve(run: Run, key: str, grid: np.ndarray, hold: bool = False) -> np.ndarray:
    """Metric value of the latest update at or before each grid step; NaN before the run's first
    update and, unless ``hold``, after its last one (``hold`` keeps a stopped run's final state,
    so a run that died with its loss scale collapsed still counts as the worst seed)."""
    steps = run.metrics.get("global_step")
    vals = run.metrics.get(key)
    out = np.full(len(grid), np.nan)
    if steps is None or vals is None or steps.size == 0:
        return out
    finite = np.isfinite(vals) if hold else np.ones(len(vals), dtype=bool)
    steps, vals = steps[finite], vals[finite]
    if steps.size == 0:
        return out
    idx = np.searchsorted(steps, grid, side="right") - 1
    ok = (idx >= 0) & (hold | (grid <= steps[-1]))
    out[ok] = vals[idx[ok]]
    return out


def _nanstats(a: np.ndarray):
    """median / quartiles over runs (axis 0) of finite values; NaN where a column has none."""
    a = np.where(np.isfinite(a), a, np.nan)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return (np.nanmedian(a, axis=0), np.nanpercentile(a, 25, axis=0), np.nanpercentile(a, 75, axis=0))


def nonfinite_update_steps(run: Run) -> list[float]:
    steps = run.metrics.get("global_step")
    if steps is None:
        return []
    bad = np.zeros(len(steps), dtype=bool)
    for k in LOSS_KEYS:
        v = run.metrics.get(k)
        if v is not None:
            bad |= ~run.absent[k] & ~np.isfinite(v)
    skipped = run.metrics.get("nonfinite_grad_steps")
    if skipped is not None:
        s = np.where(np.isfinite(skipped), skipped, 0)
        bad |= np.diff(np.concatenate([[0], s])) > 0
    return steps[bad].tolist()


def health(env: str, cells: list[str], all_runs: dict) -> tuple[dict, list[dict]]:
    """Health curves (median/IQR over seeds, all runs incl. failed ones; worst run for loss scale and skipped
    steps) and one table row per cell."""
    ends = [float(r.metrics["global_step"][-1]) for c in cells for r in all_runs[c]
            if r.metrics.get("global_step") is not None and r.metrics["global_step"].size]
    n_upd = max([r.metrics["global_step"].size for c in cells for r in all_runs[c]
                 if r.metrics.get("global_step") is not None] or [1])
    hgrid = np.linspace(0.0, max(ends) if ends else 0.0, max(min(n_upd, 100), 2))
    out = {"grid": hgrid, "metrics": {}, "nonfinite": {}}
    rows = []
    for c in cells:
        rs = [r for r in all_runs[c] if r.metrics.get("global_step") is not None]
        out["nonfinite"][c] = sorted(s for r in rs for s in nonfinite_update_steps(r))
        row = {"env": env, "cell": c, "runs": len(rs)}
        for key in HEALTH_KEYS:
            have = [r for r in rs if key in r.metrics and (~r.absent[key]).any()]
            if not have:
                continue
            arr = np.stack([_health_curve(r, key, hgrid, hold=key in WORST_CASE) for r in have])
            if key in WORST_CASE:  # one bad seed must show: plot the cell's worst run, no band
                with np.errstate(all="ignore"), warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    a = np.where(np.isfinite(arr), arr, np.nan)
                    med = np.nanmin(a, axis=0) if WORST_CASE[key] == "min" else np.nanmax(a, axis=0)
                q25 = q75 = med
            else:
                med, q25, q75 = _nanstats(arr)
            if np.isfinite(med).any():
                out["metrics"].setdefault(key, {})[c] = {"median": med, "q25": q25, "q75": q75}
            per = []  # table: median over runs of each run's last-10%-of-updates median (max for grad_norm)
            for r in have:
                v = r.metrics[key][~r.absent[key]]
                v = v[np.isfinite(v)]
                if not v.size:
                    continue
                tail = v[-max(len(v) // 10, 1):]
                per.append({"grad_norm": np.max(v), "loss_scale": np.min(v),
                            "nonfinite_grad_steps": np.max(v)}.get(key, np.median(tail)))
            agg = {"min": np.min, "max": np.max}.get(WORST_CASE.get(key), np.median)
            row[key] = float(agg(per)) if per else float("nan")
        row["updates_with_nonfinite"] = len(out["nonfinite"][c])
        row["runs_flagged_nonfinite"] = sum(r.nonfinite_summary()["flagged"] for r in all_runs[c])
        rows.append(row)
    return out, rows
