"""esper-report: turn a sweep directory into report.md + PNG figures + CSV/JSON numbers.

    esper-report <sweep dir> [--reference exact/fp32] [--control CELL] [--out DIR] [--reps N] [--seed S]

Reads run directories only (run.json, metrics.jsonl, episodes.jsonl, and snapshots.jsonl / probe.jsonl
for the drift section, which appears only when some run has them); never imports the trainer.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np

from . import figures
from .output import fmt as _f, jsonable as _jsonable, table as _table, write_csv as _write_csv
from . import stats as S
from . import drift as D
from .load import HEALTH_KEYS, LOSS_KEYS, Run, Sweep, cell_sort_key, load_sweep_or_raise, parse_cell

DEFAULTS = {"reference": "exact/fp32", "reps": 5000, "seed": 0, "grid": 100, "window": 20,
            "last": 100, "power": 0.8}


class ReportError(Exception):
    """Bad input: reported as one line, non-zero exit, no traceback."""


def _seed(base: int, *parts) -> int:
    """A stable per-statistic bootstrap seed derived from the user's seed and what is estimated."""
    return (base * 1_000_003 + zlib.crc32("|".join(map(str, parts)).encode())) % (2**32)


# --------------------------------------------------------------------------- analysis


def _run_end(run: Run) -> float:
    ends = [run.info.get("global_step")]
    if run.episodes_step.size:
        ends.append(int(run.episodes_step[-1]))
    ends = [e for e in ends if isinstance(e, (int, float)) and math.isfinite(e)]
    return float(max(ends)) if ends else 0.0


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


# health panels that show the worst run of a cell instead of the median over seeds
WORST_CASE = {"loss_scale": "min", "nonfinite_grad_steps": "max"}


def _nanstats(a: np.ndarray):
    """median / quartiles over runs (axis 0) of finite values; NaN where a column has none."""
    a = np.where(np.isfinite(a), a, np.nan)
    with np.errstate(all="ignore"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return (np.nanmedian(a, axis=0), np.nanpercentile(a, 25, axis=0),
                    np.nanpercentile(a, 75, axis=0))


def _nonfinite_update_steps(run: Run) -> list[float]:
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


def analyse_env(sweep: Sweep, env: str, reference: str, o: dict) -> dict:
    cells = sweep.cells(env)
    all_runs = {c: sweep.runs_of(env, c, status=None) for c in cells}
    done = {c: [r for r in all_runs[c] if r.status == "completed" and r.episodes_step.size]
            for c in cells}
    res = {"env": env, "cells": cells, "reference": reference if reference in cells else None}

    # common step grid for the return curves: every completed run covers it
    used = [r for c in cells for r in done[c]]
    runs_rows, per_run = [], {}
    if used:
        grid = S.common_grid([r.episodes_step[0] for r in used], [_run_end(r) for r in used], o["grid"])
    else:
        grid = np.array([0.0])
    res["grid"] = grid
    curves = {}
    for c in cells:
        for r in all_runs[c]:
            fr = S.final_return(r.episodes_return, o["last"])
            curve = S.curve_on_grid(r.episodes_step, r.episodes_return, grid, o["window"])
            auc = S.normalised_auc(curve, grid) if np.isfinite(curve).all() else float("nan")
            nf = r.nonfinite_summary()
            per_run[(c, r.seed)] = {"final_return": fr, "auc": auc, "curve": curve}
            runs_rows.append({
                "env": env, "cell": c, "seed": r.seed, "status": r.status,
                "reason": r.info.get("reason"), "used_in_stats": r in done[c],
                "episodes": int(r.episodes_step.size), "last_step": _run_end(r),
                "final_return": fr, "auc": auc, **nf, "bad_lines": r.bad_lines, "path": str(r.path)})
        if done[c]:
            curves[c] = np.stack([per_run[(c, r.seed)]["curve"] for r in done[c]])
    res["runs"] = runs_rows

    # curves: IQM + 95% band per cell
    res["curves"] = {}
    for c, cv in curves.items():
        m, lo, hi = S.curve_band(cv, o["reps"], _seed(o["seed"], env, c, "curve"))
        res["curves"][c] = {"iqm": m, "lo": lo, "hi": hi, "n": cv.shape[0]}

    # outcome table
    outcomes = []
    for c in cells:
        fin = np.array([per_run[(c, r.seed)]["final_return"] for r in done[c]])
        auc = np.array([per_run[(c, r.seed)]["auc"] for r in done[c]])
        auc = auc[np.isfinite(auc)]
        row = {"env": env, "cell": c, "n_seeds": len(done[c])}
        for name, x in (("final", fin), ("auc", auc)):
            est = S.aggregate_estimates(x, o["reps"], _seed(o["seed"], env, c, name))
            for agg, (p, lo, hi) in est.items():
                row[f"{name}_{agg}"], row[f"{name}_{agg}_lo"], row[f"{name}_{agg}_hi"] = p, lo, hi
        statuses = [r.status for r in all_runs[c]]
        row["failed"] = statuses.count("failed")
        row["interrupted"] = statuses.count("interrupted")
        row["running"] = statuses.count("running")
        row["completed_no_episodes"] = sum(1 for r in all_runs[c]
                                           if r.status == "completed" and not r.episodes_step.size)
        nfs = [r.nonfinite_summary() for r in all_runs[c]]
        row["nonfinite_events"] = sum(n["nonfinite_events"] for n in nfs)
        row["skipped_steps"] = sum(n["skipped_steps"] for n in nfs)
        row["runs_flagged_nonfinite"] = sum(n["flagged"] for n in nfs)
        outcomes.append(row)
    res["outcomes"] = outcomes

    # comparisons against the reference, and the paired view
    res["comparisons"], res["paired"] = [], {}
    if res["reference"] and done[reference]:
        ref_fin = {r.seed: per_run[(reference, r.seed)]["final_return"] for r in done[reference]}
        ref_auc = {r.seed: per_run[(reference, r.seed)]["auc"] for r in done[reference]}
        # noise-floor controls (perturb-*) are listed but are not hypotheses: not counted for Bonferroni
        k = len([c for c in cells if c != reference and done[c] and parse_cell(c)["perturb"] == "none"])
        for c in cells:
            if c == reference:
                continue
            x_fin = {r.seed: per_run[(c, r.seed)]["final_return"] for r in done[c]}
            x_auc = {r.seed: per_run[(c, r.seed)]["auc"] for r in done[c]}
            row = {"env": env, "cell": c, "reference": reference}
            for name, xs, rs, label in (("final", x_fin, ref_fin, "final return"),
                                        ("auc", x_auc, ref_auc, "normalised AUC")):
                xv = np.array([v for v in xs.values() if np.isfinite(v)])
                rv = np.array([v for v in rs.values() if np.isfinite(v)])
                cmp = S.compare(xv, rv, o["reps"], _seed(o["seed"], env, c, name, "cmp"), o["power"],
                                n_comparisons=k)
                row[f"{name}_n"], row[f"{name}_n_ref"] = cmp["n"], cmp["n_ref"]
                row[f"{name}_poi"] = cmp["poi"]
                row[f"{name}_poi_lo"], row[f"{name}_poi_hi"] = cmp["poi_ci"]
                row[f"{name}_iqm_diff"] = cmp["iqm_diff"]
                row[f"{name}_iqm_diff_lo"], row[f"{name}_iqm_diff_hi"] = cmp["iqm_diff_ci"]
                row[f"{name}_iqm_diff_lo_bonf"], row[f"{name}_iqm_diff_hi_bonf"] = cmp["iqm_diff_ci_adj"]
                row[f"{name}_mde"] = cmp["mde"]
                row[f"{name}_detected"] = cmp["detected"]
                row[f"{name}_detected_bonf"] = cmp["detected_adj"]
                row[f"{name}_verdict"] = S.verdict(cmp, label)
            seeds, diffs = S.paired_differences(x_fin, ref_fin)
            ok = np.isfinite(diffs)
            seeds, diffs = [s for s, k in zip(seeds, ok) if k], diffs[ok]
            m, lo, hi = S.interval_estimate(diffs, S.AGGREGATES["mean"], o["reps"],
                                            _seed(o["seed"], env, c, "paired"))
            res["paired"][c] = {"seeds": seeds, "diffs": diffs, "mean": m, "lo": lo, "hi": hi}
            row["paired_n"], row["paired_mean_diff"] = len(seeds), m
            row["paired_mean_diff_lo"], row["paired_mean_diff_hi"] = lo, hi
            res["comparisons"].append(row)

    # training health: metric curves (median/IQR over seeds, all runs incl. failed ones) + table
    ends = [float(r.metrics["global_step"][-1]) for c in cells for r in all_runs[c]
            if r.metrics.get("global_step") is not None and r.metrics["global_step"].size]
    n_upd = max([r.metrics["global_step"].size for c in cells for r in all_runs[c]
                 if r.metrics.get("global_step") is not None] or [1])
    hgrid = np.linspace(0.0, max(ends) if ends else 0.0, max(min(n_upd, 100), 2))
    health = {"grid": hgrid, "metrics": {}, "nonfinite": {}}
    health_rows = []
    for c in cells:
        rs = [r for r in all_runs[c] if r.metrics.get("global_step") is not None]
        health["nonfinite"][c] = sorted(s for r in rs for s in _nonfinite_update_steps(r))
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
                health["metrics"].setdefault(key, {})[c] = {"median": med, "q25": q25, "q75": q75}
            # table: median over runs of each run's last-10%-of-updates median (max for grad_norm)
            per = []
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
        row["updates_with_nonfinite"] = len(health["nonfinite"][c])
        row["runs_flagged_nonfinite"] = sum(r.nonfinite_summary()["flagged"] for r in all_runs[c])
        health_rows.append(row)
    res["health"], res["health_rows"] = health, health_rows
    res["missing"] = sweep.missing(env)
    return res


def analyse(sweep: Sweep, reference: str, o: dict) -> list[dict]:
    return [analyse_env(sweep, env, reference, o) for env in sweep.envs()]


# --------------------------------------------------------------------------- output



def _ci(p, lo, hi) -> str:
    return f"{_f(p)} [{_f(lo)}, {_f(hi)}]"





def write_report(sweep: Sweep, results: list[dict], reference: str, o: dict, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    envs = [r["env"] for r in results]

    # figures
    written = set()
    curves = {r["env"]: {"grid": r["grid"], "cells": r["curves"]} for r in results if r["curves"]}
    if curves:
        figures.plot_curves(curves, out / "curves.png",
                            title_suffix=f"\n(mean of last {o['window']} episodes at each step)")
        written.add("curves.png")
    paired = {r["env"]: r["paired"] for r in results if r["paired"]}
    if paired:
        figures.plot_paired(paired, reference, out / "paired_final_return.png")
        written.add("paired_final_return.png")
    for r in results:
        if r["health"]["metrics"]:
            figures.plot_health(r["env"], r["health"], out / f"health_{r['env']}.png")
            written.add(f"health_{r['env']}.png")

    # numbers
    all_runs = [row for r in results for row in r["runs"]]
    dup_rows = [{"env": d.env, "cell": d.cell, "seed": d.seed, "status": d.status,
                 "path": str(d.path), "kept": str(k.path)} for d, k in sweep.duplicates]
    _write_csv(out / "runs.csv", all_runs)
    _write_csv(out / "outcomes.csv", [row for r in results for row in r["outcomes"]])
    _write_csv(out / "comparisons.csv", [row for r in results for row in r["comparisons"]])
    _write_csv(out / "health.csv", [row for r in results for row in r["health_rows"]])
    _write_csv(out / "paired.csv", [{"env": r["env"], "cell": c, "reference": reference, "seed": s,
                                     "final_return_diff": d}
                                    for r in results for c, p in r["paired"].items()
                                    for s, d in zip(p["seeds"], p["diffs"])])
    _write_csv(out / "curves.csv", [{"env": r["env"], "cell": c, "step": g, "iqm": m, "lo": lo, "hi": hi}
                                    for r in results for c, cv in r["curves"].items()
                                    for g, m, lo, hi in zip(r["grid"], cv["iqm"], cv["lo"], cv["hi"])])
    summary = {
        "sweep": str(sweep.root), "settings": o, "reference": reference, "envs": envs,
        "outcomes": [row for r in results for row in r["outcomes"]],
        "comparisons": [row for r in results for row in r["comparisons"]],
        "health": [row for r in results for row in r["health_rows"]],
        "runs": all_runs,
        "missing": [{"env": r["env"], "cell": c, "seed": s} for r in results for c, s in r["missing"]],
        "duplicates": dup_rows,
        "unreadable": [{"path": str(p), "reason": why} for p, why in sweep.unreadable],
    }
    (out / "summary.json").write_text(json.dumps(_jsonable(summary), indent=1, allow_nan=False) + "\n")

    # report.md
    L = [f"# esper-report: {sweep.root}", ""]
    L += [f"Reference cell: **{reference}**. Bootstrap: {o['reps']} resamples, seed {o['seed']}, "
          f"95% percentile intervals (stratified over runs; each cell resampled independently). "
          f"Final return = mean of the last {o['last']} training episodes of each run (CleanRL's "
          f"protocol). Curves: at each of {o['grid']} common grid steps, the mean of the run's last "
          f"{o['window']} finished episodes; normalised AUC = area under that curve divided by the "
          f"step span (the step-averaged return, in return units). Statistics use completed runs "
          f"only; failed/interrupted runs are listed and counted. MDE = smallest IQM shift the "
          f"seeds would detect with {o['power']:.0%} power at the 5% level (bootstrap power "
          f"estimate).", ""]

    L += ["## Inventory", ""]
    inv = []
    for r in results:
        for row in r["outcomes"]:
            inv.append([r["env"], row["cell"], row["n_seeds"], row["failed"], row["interrupted"],
                        row["running"], row["runs_flagged_nonfinite"]])
    L += [_table(["env", "cell", "completed (used)", "failed", "interrupted", "running",
                  "runs with non-finite events"], inv), ""]
    problems = [row for row in all_runs if row["status"] != "completed" or not row["used_in_stats"]]
    if problems:
        L += ["Runs not used in the statistics:", ""]
        L += [_table(["env", "cell", "seed", "status", "reason", "episodes", "path"],
                     [[p["env"], p["cell"], p["seed"], p["status"],
                       p["reason"] or ("no episodes" if not p["episodes"] else "—"), p["episodes"],
                       p["path"]] for p in problems]), ""]
    missing = summary["missing"]
    if missing:
        groups: dict[tuple, list] = {}
        for m in missing:
            groups.setdefault((m["env"], m["cell"]), []).append(m["seed"])
        L += [f"Missing runs ({len(missing)}; no run directory for these cell x seed pairs of the "
              f"observed grid):", ""]
        L += [f"- {e} {c}: seed " + ", ".join(map(str, s)) for (e, c), s in groups.items()] + [""]
    if dup_rows:
        L += [f"Duplicate runs ({len(dup_rows)}; same env/cell/seed found more than once, the latest "
              f"completed copy is kept):", ""]
        L += [_table(["env", "cell", "seed", "status", "dropped", "kept"],
                     [[d["env"], d["cell"], d["seed"], d["status"], d["path"], d["kept"]]
                      for d in dup_rows]), ""]
    if sweep.unreadable:
        L += ["Unreadable run directories: " + "; ".join(f"{p} ({why})" for p, why in sweep.unreadable), ""]
    if not problems and not missing and not dup_rows and not sweep.unreadable:
        L += ["All runs completed; no missing, duplicate or unreadable runs.", ""]

    L += ["## Convergence curves", ""]
    if "curves.png" in written:
        L += ["![curves](curves.png)", "",
              "IQM over seeds of the episodic return, shaded: 95% bootstrap band. Colour and marker "
              "= precision, line style = GELU (solid exact, dashed tanh), hollow markers = compiled.", ""]
    else:
        L += ["No completed run with episodes: no curves.", ""]

    for r in results:
        env = r["env"]
        L += [f"## {env}", ""]
        L += ["### Outcomes per cell", ""]
        L += [_table(["cell", "n", "final IQM [95% CI]", "final mean [CI]", "final median [CI]",
                      "AUC IQM [CI]", "failed", "non-finite events", "skipped steps"],
                     [[o_["cell"], o_["n_seeds"],
                       _ci(o_["final_iqm"], o_["final_iqm_lo"], o_["final_iqm_hi"]),
                       _ci(o_["final_mean"], o_["final_mean_lo"], o_["final_mean_hi"]),
                       _ci(o_["final_median"], o_["final_median_lo"], o_["final_median_hi"]),
                       _ci(o_["auc_iqm"], o_["auc_iqm_lo"], o_["auc_iqm_hi"]),
                       o_["failed"] + o_["interrupted"], o_["nonfinite_events"], o_["skipped_steps"]]
                      for o_ in r["outcomes"]]), ""]
        L += [f"### Against the reference ({reference})", ""]
        if not r["reference"]:
            L += [f"The reference cell {reference} has no runs in {env}; no comparisons.", ""]
        elif not r["comparisons"]:
            n_ref = next(o_["n_seeds"] for o_ in r["outcomes"] if o_["cell"] == reference)
            L += [f"No comparisons: the reference has {n_ref} completed runs with episodes and "
                  f"there are {len(r['cells']) - 1} other cells.", ""]
        else:
            L += [_table(["cell", "P(variant > ref) [CI]", "final IQM diff [CI]", "final MDE",
                          "AUC IQM diff [CI]", "AUC MDE", "paired mean diff [CI] (n)"],
                         [[c["cell"], _ci(c["final_poi"], c["final_poi_lo"], c["final_poi_hi"]),
                           _ci(c["final_iqm_diff"], c["final_iqm_diff_lo"], c["final_iqm_diff_hi"]),
                           _f(c["final_mde"]),
                           _ci(c["auc_iqm_diff"], c["auc_iqm_diff_lo"], c["auc_iqm_diff_hi"]),
                           _f(c["auc_mde"]),
                           _ci(c["paired_mean_diff"], c["paired_mean_diff_lo"], c["paired_mean_diff_hi"])
                           + f" ({c['paired_n']})"] for c in r["comparisons"]]), ""]
            L += ["Verdicts:", ""]
            for c in r["comparisons"]:
                L += [f"- **{c['cell']}**: {c['final_verdict']}. AUC: {c['auc_verdict']}."]
            L += ["", "![paired](paired_final_return.png)", "",
                  "Paired view: each point is one seed's final return in the variant minus the same "
                  "seed's in the reference (same env seeds, init and minibatch order); diamond: mean "
                  "with its 95% paired-bootstrap CI; box: quartiles.", ""]
        L += ["### Training health", ""]
        hk = [k for k in HEALTH_KEYS if any(k in h for h in r["health_rows"])]
        names = {"approx_kl": "approx KL (late)", "clipfrac": "clip frac (late)",
                 "explained_variance": "expl. var (late)", "grad_norm": "max grad norm",
                 "loss_scale": "min loss scale", "nonfinite_grad_steps": "max skipped steps"}
        L += [_table(["cell", "runs"] + [names[k] for k in hk] + ["updates with non-finite values",
                                                                  "runs flagged"],
                     [[h["cell"], h["runs"]] + [_f(h.get(k)) for k in hk]
                      + [h["updates_with_nonfinite"], h["runs_flagged_nonfinite"]]
                      for h in r["health_rows"]]), ""]
        L += ["(late) = median over runs of each run's median over its last 10% of updates; max grad "
              "norm = median over runs of each run's maximum; min loss scale and max skipped steps = "
              "the worst run of the cell.", ""]
        flagged = [row for row in r["runs"] if row["flagged"]]
        if flagged:
            L += ["Runs with non-finite events:", ""]
            L += [_table(["cell", "seed", "status", "nonfinite_events (run.json)", "skipped steps",
                          "updates with non-finite metrics", "non-finite episode returns"],
                         [[f_["cell"], f_["seed"], f_["status"], f_["nonfinite_events"],
                           f_["skipped_steps"], f_["nonfinite_metric_updates"],
                           f_["nonfinite_episode_returns"]] for f_ in flagged]), ""]
        else:
            L += ["No non-finite events in any run.", ""]
        if f"health_{env}.png" in written:
            L += [f"![health](health_{env}.png)", ""]

    if D.sweep_has_drift(sweep):
        do = {"reps": min(int(o["reps"]), D.DEFAULTS["reps"]), "seed": o["seed"]}
        L += D.write_drift(D.analyse_drift(sweep, reference, o.get("control"), do), out, reference, do)

    L += ["## Files", "", "runs.csv (one row per run), outcomes.csv, comparisons.csv, paired.csv, "
          "health.csv, curves.csv, summary.json (all of the above; NaN written as null).", ""]
    path = out / "report.md"
    path.write_text("\n".join(L), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="esper-report",
        description="Analyse a sweep directory: convergence curves with CIs, outcome table, "
                    "comparisons against a reference cell, paired view, training health.")
    p.add_argument("sweep_dir", help="directory holding run directories (found by their run.json)")
    p.add_argument("--reference", default=DEFAULTS["reference"],
                   help="reference cell as gelu/precision[/compiled] (default: %(default)s)")
    p.add_argument("--control", default=None,
                   help="drift section: noise-floor control cell (default: <reference>/perturb-ulp when present)")
    p.add_argument("--out", default=None, help="output directory (default: <sweep_dir>/report)")
    p.add_argument("--reps", type=int, default=DEFAULTS["reps"], help="bootstrap resamples (default: %(default)s)")
    p.add_argument("--seed", type=int, default=DEFAULTS["seed"], help="bootstrap RNG seed (default: %(default)s)")
    p.add_argument("--grid", type=int, default=DEFAULTS["grid"], help="curve grid points (default: %(default)s)")
    p.add_argument("--window", type=int, default=DEFAULTS["window"],
                   help="episodes averaged at each curve point (default: %(default)s)")
    p.add_argument("--last", type=int, default=DEFAULTS["last"],
                   help="episodes in the final return (default: %(default)s)")
    p.add_argument("--power", type=float, default=DEFAULTS["power"],
                   help="power for the minimum detectable effect (default: %(default)s)")
    return p


def run_report(sweep_dir, reference: str = DEFAULTS["reference"], out=None, **opts) -> Path:
    """Library entry point (tests use it). Raises ReportError on bad input."""
    o = {**{k: v for k, v in DEFAULTS.items() if k != "reference"}, **opts}
    for k in ("reps", "grid", "window", "last"):
        if int(o[k]) < (2 if k == "grid" else 1):
            raise ReportError(f"--{k} must be a positive integer (got {o[k]})")
    if not 0 < float(o["power"]) < 1:
        raise ReportError(f"--power must be between 0 and 1 (got {o['power']})")
    root = Path(sweep_dir)
    sweep = load_sweep_or_raise(root, ReportError)
    all_cells = sorted({r.cell for r in sweep.runs}, key=cell_sort_key)
    if reference not in all_cells:
        raise ReportError(f"unknown reference cell '{reference}'; cells in this sweep: "
                          + ", ".join(all_cells))
    if o.get("control") is not None and o["control"] not in all_cells:
        raise ReportError(f"unknown control cell '{o['control']}'; cells in this sweep: " + ", ".join(all_cells))
    results = analyse(sweep, reference, o)
    out = Path(out) if out is not None else root / "report"
    return write_report(sweep, results, reference, o, out)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        path = run_report(args.sweep_dir, args.reference, args.out, reps=args.reps, seed=args.seed,
                          grid=args.grid, window=args.window, last=args.last, power=args.power,
                          control=args.control)
    except ReportError as e:
        print(f"esper-report: error: {e}", file=sys.stderr)
        return 2
    print(f"esper-report: wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
