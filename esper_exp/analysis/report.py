"""esper-report: judge a sweep by its pre-registered decision rule; report.md + PNG figures + CSV/JSON numbers.

    esper-report <sweep dir> [--out DIR] [--reps N] [--seed S] [--rule KEY=VALUE ...] [--control CELL]
                 [--include-damaged]
    esper-report --recompute <report dir>     # its verdicts from runs.csv + summary.json alone (recompute.py)

Damaged runs (runformat.check_run_files: a bad or cut line, missing or repeated updates, a finished run.json whose
update count differs from metrics.jsonl) are listed in the inventory with the reason and left out of every
statistic; each gets one line on stderr and the command exits 1. ``--include-damaged`` uses what can be read of
them instead (still listed, still one line each on stderr; exit 0).

The rule (endpoint, anchors, contrasts, margin delta, alpha, pairing: esper_exp/analysis/rule.py) is read from
the runs' stored configs (run.json "config" -> "analysis"), so it was fixed before the data. ``--rule`` overrides
a key; every verdict is then labelled NOT pre-registered. Runs that store no rule get the defaults, also labelled.

report.md, in this order: the rule; the decision table (contrast, estimate, 90% and Holm-corrected 95% CIs,
margin, verdict); the forest plot; learning curves and difference curves with the margin band; probability of
improvement on the primary endpoint; performance profiles; training health; resolution (achieved SE with and
without pairing, MDE, the smallest margin at which equivalence would hold); secondary endpoints (the other
endpoint, time to threshold, collapse rate); the inventory of runs and their provenance (device, driver, CUDA,
versions, numerics flags, commit: provenance.py); the drift section when runs have drift files.
Reads run directories only; never imports the trainer.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from esper_exp.runformat import BadRunFile

from . import decision as Dc
from . import drift_report as DR
from . import figures
from . import outcomes as O
from . import provenance as P
from . import stats as S
from .cli import AnalysisError, add_common, check_positive, fail, parse_rule_overrides
from .load import HEALTH_KEYS, Sweep, load_sweep_or_raise
from .output import fmt as _f
from .output import jsonable as _jsonable
from .output import table as _table
from .output import write_csv as _write_csv
from .rule import DEFAULT_RULE, ENDPOINT_KEY, MIN_SEEDS, Rule, rule_from_runs

DEFAULTS = {"reps": 20000, "curve_reps": 2000, "seed": 0, "power": 0.8,
            "threshold": 0.95, "collapse": 0.5, "figures": True, "include_damaged": False}
ENDPOINT_OPTIONS = ("grid", "window", "last")  # the endpoint's definition: rule keys (rule.py), with flags of their own
EXIT_DAMAGED = 1  # a damaged run was left out of the statistics
ReportError = AnalysisError  # the name tests and callers know

ENDPOINT_TEXT = {"auc": "normalised AUC of the training-return curve",
                 "final_return": "normalised final return (mean of the last training episodes)"}


# --------------------------------------------------------------------------- the rule


def choose_rule(sweep: Sweep, overrides: dict | None) -> tuple[Rule, dict]:
    """The rule to apply and where it came from: {"source", "preregistered", "problems", "overridden"}."""
    stored, problems = rule_from_runs(r.info for r in sweep.runs)
    base = {**DEFAULT_RULE, **stored} if stored is not None else dict(DEFAULT_RULE)
    # an override that repeats the base value changes nothing (e.g. a pinned --window 20): it is not one
    over = {k: v for k, v in (overrides or {}).items() if k == "anchors" or k not in base or base[k] != v}
    merged = dict(base)
    for k, v in over.items():
        if k == "anchors" and isinstance(v, dict):
            anchors = {e: dict(a) for e, a in (merged.get("anchors") or {}).items()}
            for env, a in v.items():
                anchors[env] = {**anchors.get(env, {}), **a}
            merged["anchors"] = anchors
        else:
            merged[k] = v
    unknown = [k for k in over if k not in DEFAULT_RULE]
    if unknown:
        raise AnalysisError(f"--rule: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(DEFAULT_RULE)}")
    try:
        rule = Rule.from_dict(merged)
    except ValueError as e:
        raise AnalysisError(str(e)) from None
    if stored is None:
        src = "defaults (the runs store no rule: it was not declared before the data)"
    else:
        src = "the runs' stored config (declared before the data)"
    if over:
        src += "; overridden on the command line: " + ", ".join(sorted(_flat_keys(over)))
    return rule, {"source": src, "preregistered": stored is not None and not over, "problems": problems,
                  "overridden": sorted(_flat_keys(over))}


def _flat_keys(d: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in d.items():
        out += _flat_keys(v, f"{prefix}{k}.") if isinstance(v, dict) else [f"{prefix}{k}={v}"]
    return out


# --------------------------------------------------------------------------- analysis


def analyse(sweep: Sweep, rule: Rule, o: dict) -> dict:
    envs = sweep.envs()
    res = {"envs": envs, "env": {}}
    primary, secondary = ENDPOINT_KEY[rule.endpoint], ENDPOINT_KEY[
        "final_return" if rule.endpoint == "auc" else "auc"]
    sc_primary, sc_secondary, sc_raw = {}, {}, {}
    for env in envs:
        cells = sweep.cells(env)
        all_runs = {c: sweep.runs_of(env, c, status=None) for c in cells}
        out = O.env_outcomes(env, cells, all_runs, rule, o)
        e = {"cells": cells, "out": out, "outcomes": [], "curves": {}, "diff_curves": {}}
        for c in cells:  # raw-unit aggregates and curves per cell
            used = out["used"][c]
            row = {"env": env, "cell": c, "n_seeds": len(used)}
            for key in ("auc", "final_return", "auc_norm", "final_norm"):
                x = np.array([out["per_run"][(c, r.seed)][key] for r in used])
                x = x[np.isfinite(x)]
                p, lo, hi = S.interval_estimate(x, S.iqm, o["curve_reps"], S.derive_seed(o["seed"], env, c, key))
                row[f"{key}_iqm"], row[f"{key}_iqm_lo"], row[f"{key}_iqm_hi"] = p, lo, hi
            statuses = [r.status for r in all_runs[c]]
            for s in ("failed", "interrupted", "running"):
                row[s] = statuses.count(s)
            nfs = [r.nonfinite_summary() for r in all_runs[c]]
            row["nonfinite_events"] = sum(n["nonfinite_events"] for n in nfs)
            row["skipped_steps"] = sum(n["skipped_steps"] for n in nfs)
            row["runs_flagged_nonfinite"] = sum(n["flagged"] for n in nfs)
            row["runs_stalled"] = sum(n["stalled_updates"] > 0 for n in nfs)
            e["outcomes"].append(row)
            if used:
                cv = np.stack([out["per_run"][(c, r.seed)]["curve"] for r in used])
                m, lo, hi = S.curve_band(cv, o["curve_reps"], S.derive_seed(o["seed"], env, c, "curve"))
                e["curves"][c] = {"iqm": m, "lo": lo, "hi": hi, "n": cv.shape[0]}
        e["health"], e["health_rows"] = O.health(env, cells, all_runs)
        e["missing"] = sweep.missing(env)
        if out["has_anchors"]:
            sc_primary[env] = O.scores(out, primary)
            sc_secondary[env] = O.scores(out, secondary)
            sc_raw[env] = {"final_return": O.scores(out, "final_return"),
                           "time_to_threshold": O.scores(out, "time_to_threshold")}
        res["env"][env] = e

    judged = [e for e in envs if e in sc_primary]
    res["no_anchors"] = [e for e in envs if e not in sc_primary]
    res["scopes"] = Dc.scopes_of(judged)
    cells = {e: res["env"][e]["cells"] for e in judged}
    res["decision"] = Dc.judge_all(sc_primary, cells, rule, o["reps"], o["seed"], o["power"])
    res["secondary"] = Dc.judge_all(sc_secondary, cells, rule, o["reps"], o["seed"] + Dc.SECONDARY_SEED_OFFSET,
                                    o["power"])

    # per env: difference curves (normalised), time to threshold, collapse rate, performance profiles
    res["ttt"], res["collapse"], res["profiles"] = [], [], {}
    for env in judged:
        e, out = res["env"][env], res["env"][env]["out"]
        contrasts = Dc.resolve_contrasts(rule, e["cells"])
        for c in contrasts:
            ua = {r.seed: r for r in out["used"][c.a]}
            ub = {r.seed: r for r in out["used"][c.b]}
            seeds_a, seeds_b = (sorted(set(ua) & set(ub)),) * 2 if rule.paired else (sorted(ua), sorted(ub))
            if not seeds_a or not seeds_b:
                continue
            ca = np.stack([out["per_run"][(c.a, s)]["curve_norm"] for s in seeds_a])
            cb = np.stack([out["per_run"][(c.b, s)]["curve_norm"] for s in seeds_b])
            p, lo, hi = S.difference_band(ca, cb, rule.paired, o["curve_reps"],
                                          S.derive_seed(o["seed"], env, c.name, "diffcurve"), 1 - 2 * rule.alpha)
            e["diff_curves"][c.name] = {"point": p, "lo": lo, "hi": hi, "n": min(len(seeds_a), len(seeds_b))}
            # time to threshold: censored runs (never reached) count as the end of the grid (conservative)
            end = float(out["grid"][-1])
            ta = {s: v for s, v in sc_raw[env]["time_to_threshold"].get(c.a, {}).items()}
            tb = {s: v for s, v in sc_raw[env]["time_to_threshold"].get(c.b, {}).items()}
            fa = {s: (v if np.isfinite(v) else end) for s, v in ta.items()}
            fb = {s: (v if np.isfinite(v) else end) for s, v in tb.items()}
            sa, sb, _ = Dc.strata({env: {c.a: fa, c.b: fb}}, c, [env], rule.paired)
            b = S.contrast_bootstrap(sa, sb, rule.paired, o["curve_reps"], S.derive_seed(o["seed"], env, c.name, "ttt"))
            lo95, hi95 = S.percentile_interval(b["reps"], 1 - rule.alpha, min(len(ta), len(tb)))
            res["ttt"].append({"env": env, "contrast": c.name, "n": min(len(ta), len(tb)), "iqm_diff_steps": b["point"],
                               "lo": lo95, "hi": hi95,
                               "reached_a": int(np.isfinite(list(ta.values())).sum()), "n_a": len(ta),
                               "reached_b": int(np.isfinite(list(tb.values())).sum()), "n_b": len(tb)})
        # collapse: final return below o["collapse"] x the reference cell's median final return
        ref_fin = list(sc_raw[env]["final_return"].get(rule.reference, {}).values())
        cut = o["collapse"] * float(np.median(ref_fin)) if ref_fin else float("nan")
        for c in e["cells"]:
            fin = np.array(list(sc_raw[env]["final_return"].get(c, {}).values()))
            k = int((fin < cut).sum()) if np.isfinite(cut) else 0
            lo, hi = S.wilson_interval(k, fin.size)
            med_t = [v for v in sc_raw[env]["time_to_threshold"].get(c, {}).values()]
            reached = np.array([v for v in med_t if np.isfinite(v)])
            res["collapse"].append({"env": env, "cell": c, "n": int(fin.size), "collapsed": k,
                                    "rate": k / fin.size if fin.size else float("nan"), "lo": lo, "hi": hi,
                                    "cut": cut, "reached_threshold": int(reached.size),
                                    "median_time_to_threshold": float(np.median(reached)) if reached.size
                                    else float("nan")})
        cells_sc = {c: np.array(list(v.values())) for c, v in sc_primary[env].items()}
        allv = np.concatenate([v for v in cells_sc.values() if v.size]) if cells_sc else np.array([])
        if allv.size:
            lo_t, hi_t = float(allv.min()), float(allv.max())
            pad = 0.05 * max(hi_t - lo_t, 1e-9)
            taus = np.linspace(lo_t - pad, hi_t + pad, 101)
            res["profiles"][env] = {"taus": taus, "cells": {
                c: S.profile_band([v], taus, o["curve_reps"], S.derive_seed(o["seed"], env, c, "profile"))
                for c, v in cells_sc.items() if v.size}}
    return res


# --------------------------------------------------------------------------- output


def _ci(lo, hi) -> str:
    return f"[{_f(lo)}, {_f(hi)}]"


def _ci3(p, lo, hi) -> str:
    return f"{_f(p)} [{_f(lo)}, {_f(hi)}]"


def write_report(sweep: Sweep, res: dict, rule: Rule, meta: dict, o: dict, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    pre = "" if meta["preregistered"] else " (NOT pre-registered)"
    ep = ENDPOINT_TEXT[rule.endpoint]
    # ---------------------------------------------------------------- numbers
    all_runs = [row for e in res["envs"] for row in res["env"][e]["out"]["rows"]]
    dup_rows = [{"env": d.env, "cell": d.cell, "seed": d.seed, "status": d.status, "path": str(d.path),
                 "kept": str(k.path)} for d, k in sweep.duplicates]
    _write_csv(out / "decision.csv", [Dc.csv_row(r) for r in res["decision"]])
    _write_csv(out / "secondary.csv", [Dc.csv_row(r) for r in res["secondary"]])
    _write_csv(out / "runs.csv", all_runs)
    _write_csv(out / "outcomes.csv", [row for e in res["envs"] for row in res["env"][e]["outcomes"]])
    _write_csv(out / "health.csv", [row for e in res["envs"] for row in res["env"][e]["health_rows"]])
    _write_csv(out / "time_to_threshold.csv", res["ttt"])
    _write_csv(out / "collapse.csv", res["collapse"])
    prov = P.provenance(sweep.runs)
    _write_csv(out / "provenance.csv", prov)
    _write_csv(out / "curves.csv", [{"env": e, "cell": c, "step": g, "iqm": m, "lo": lo, "hi": hi}
                                    for e in res["envs"] for c, cv in res["env"][e]["curves"].items()
                                    for g, m, lo, hi in zip(res["env"][e]["out"]["grid"], cv["iqm"], cv["lo"],
                                                            cv["hi"])])
    _write_csv(out / "difference_curves.csv", [
        {"env": e, "contrast": name, "step": g, "diff": p, "lo": lo, "hi": hi}
        for e in res["envs"] for name, d in res["env"][e]["diff_curves"].items()
        for g, p, lo, hi in zip(res["env"][e]["out"]["grid"], d["point"], d["lo"], d["hi"])])
    summary = {
        "sweep": str(sweep.root), "settings": o, "rule": rule.as_dict(), "rule_source": meta,
        "envs": res["envs"], "scopes": res["scopes"], "envs_without_anchors": res["no_anchors"],
        "decision": [Dc.csv_row(r) for r in res["decision"]],
        "secondary": [Dc.csv_row(r) for r in res["secondary"]],
        "time_to_threshold": res["ttt"], "collapse": res["collapse"],
        "outcomes": [row for e in res["envs"] for row in res["env"][e]["outcomes"]],
        "health": [row for e in res["envs"] for row in res["env"][e]["health_rows"]],
        "runs": all_runs,
        "missing": [{"env": e, "cell": c, "seed": s} for e in res["envs"] for c, s in res["env"][e]["missing"]],
        "duplicates": dup_rows,
        "provenance": prov,
        "unreadable": [{"path": str(p), "reason": why} for p, why in sweep.unreadable],
        "damaged": [{"env": r.env, "cell": r.cell, "seed": r.seed, "status": r.status, "reason": r.damage,
                     "bad_lines": r.bad_lines, "included": sweep.include_damaged, "path": str(r.path)}
                    for r in sweep.damaged],
    }
    (out / "summary.json").write_text(json.dumps(_jsonable(summary), indent=1, allow_nan=False) + "\n")

    # ---------------------------------------------------------------- report.md
    L = [f"# esper-report: {sweep.root}", ""]
    L += ["## Decision rule" + pre, ""]
    L += [f"Source: {meta['source']}." + (" Verdicts below are labelled accordingly." if pre else ""), ""]
    anchors = "; ".join(f"{e}: random {_f(a['random'])}, reference {_f(a['reference'])}"
                        for e, a in rule.anchors.items() if e in res["envs"])
    L += [f"- primary endpoint: {ep}, (x - random) / (reference - random) with anchors fixed in the config "
          f"({anchors or 'none for these envs'})",
          f"- contrasts: {', '.join(rule.contrasts)}; reference cell {rule.reference}",
          f"- equivalent: the {1 - 2 * rule.alpha:.0%} CI of the IQM difference inside (-{rule.delta:g}, "
          f"+{rule.delta:g}) (TOST at {rule.alpha:g}); different: the Holm-corrected {1 - rule.alpha:.0%} CI "
          f"excludes 0; otherwise inconclusive; fewer than {MIN_SEEDS} seeds: inconclusive",
          f"- {'paired' if rule.paired else 'unpaired'} stratified bootstrap over env x seed "
          f"({'seeds resampled jointly in both cells' if rule.paired else 'each cell resampled on its own'}), "
          f"{o['reps']} resamples, seed {o['seed']}; expanded percentile intervals (small-sample correction)"]
    L += [f"- rule problem: {p}" for p in meta["problems"]]
    if res["no_anchors"]:
        L += [f"- no anchors for {', '.join(res['no_anchors'])}: not judged (add analysis.anchors.<env>)"]
    L += [f"- AUC: at each of {o['grid']} common grid steps the mean of the run's last {o['window']} episodes, "
          f"area / step span; final return: mean of the last {o['last']} training episodes", ""]

    L += ["## Decision" + pre, ""]
    if res["decision"]:
        L += [_table(["scope", "contrast", "n", "estimate", "90% CI", "Holm CI (level)", "margin", "verdict"],
                     [[r["scope"], r["contrast"], r["n"], _f(r["estimate"], 3), _ci(*r["ci90"]),
                       f"{_ci(*r['ci_holm'])} ({r['holm_level']:.2%})" if np.isfinite(r["holm_level"]) else "—", f"±{rule.delta:g}",
                       f"**{r['verdict']}**"] for r in res["decision"]]), ""]
        L += [f"- **{r['scope']}, {r['contrast']}: {r['verdict']}**{pre}: {r['why']}." for r in res["decision"]]
        L += [""]
        if o["figures"]:
            figures.plot_forest(res["decision"], rule.delta, out / "forest.png", title=f"{ep}{pre}")
        L += ["![forest](forest.png)", ""]
    else:
        L += ["No contrast of the rule could be formed (cells missing, or no env with anchors).", ""]

    L += ["## Learning curves", ""]
    curves = {e: {"grid": res["env"][e]["out"]["grid"], "cells": res["env"][e]["curves"]}
              for e in res["envs"] if res["env"][e]["curves"]}
    if curves:
        if o["figures"]:
            figures.plot_curves(curves, out / "curves.png",
                                title_suffix=f"\n(mean of last {o['window']} episodes at each step)")
        L += ["![curves](curves.png)", "",
              "IQM over seeds of the episodic return (raw units), 95% bootstrap band. Colour and marker = "
              "precision, line style = GELU (solid exact, dashed tanh), hollow markers = compiled.", ""]
    else:
        L += ["No completed run with episodes: no curves.", ""]
    for e in res["envs"]:
        d = res["env"][e]["diff_curves"]
        if d:
            if o["figures"]:
                figures.plot_difference_curves(e, res["env"][e]["out"]["grid"], d, rule.delta,
                                               out / f"difference_{e}.png")
            L += [f"![difference](difference_{e}.png)", "",
                  f"{e}: pointwise IQM difference of the normalised return curves of each contrast "
                  f"({'paired' if rule.paired else 'unpaired'} bootstrap, {1 - 2 * rule.alpha:.0%} band); green: "
                  f"±{rule.delta:g}. Descriptive: the verdict is on the endpoint, not on any single point.", ""]

    L += ["## Probability of improvement (primary endpoint)", ""]
    if res["decision"]:
        L += [_table(["scope", "contrast", "P(A > B) [95% CI]"],
                     [[r["scope"], r["contrast"], _ci3(r["poi"], *r["poi_ci"])] for r in res["decision"]]), ""]
        L += ["P(A > B) = probability that a run of A scores higher than a run of B (ties 1/2), over all pairs of "
              "runs (rliable's definition); 0.5 = no tendency.", ""]

    L += ["## Performance profiles", ""]
    if res["profiles"]:
        if o["figures"]:
            figures.plot_profiles(res["profiles"], out / "profiles.png", xlabel=f"τ ({ep})")
        L += ["![profiles](profiles.png)", "", "Fraction of runs whose primary endpoint exceeds τ (rliable), 95% "
              "bootstrap band.", ""]
    else:
        L += ["No normalised scores (no env with anchors).", ""]

    L += ["## Training health", ""]
    for e in res["envs"]:
        env = res["env"][e]
        hk = [k for k in HEALTH_KEYS if any(k in h for h in env["health_rows"])]
        names = {"approx_kl": "approx KL (late)", "clipfrac": "clip frac (late)",
                 "explained_variance": "expl. var (late)", "value_loss": "value loss (late)",
                 "grad_norm": "max grad norm",
                 "loss_scale": "min loss scale", "nonfinite_grad_steps": "max skipped steps"}
        L += [f"### {e}", ""]
        L += [_table(["cell", "runs"] + [names[k] for k in hk] + ["updates with non-finite values", "runs flagged"],
                     [[h["cell"], h["runs"]] + [_f(h.get(k)) for k in hk]
                      + [h["updates_with_nonfinite"], h["runs_flagged_nonfinite"]] for h in env["health_rows"]]), ""]
        L += ["(late) = median over runs of each run's median over its last 10% of updates; max grad norm = median "
              "over runs of each run's maximum; min loss scale and max skipped steps = the worst run of the cell.", ""]
        flagged = [row for row in env["out"]["rows"] if row["flagged"]]
        if flagged:
            L += ["Runs with non-finite events:", ""]
            L += [_table(["cell", "seed", "status", "nonfinite_events (run.json)", "skipped steps",
                          "stalled updates (every step skipped)", "updates with non-finite metrics",
                          "non-finite episode returns"],
                         [[f_["cell"], f_["seed"], f_["status"], f_["nonfinite_events"], f_["skipped_steps"],
                           f_["stalled_updates"], f_["nonfinite_metric_updates"], f_["nonfinite_episode_returns"]]
                          for f_ in flagged]), ""]
            stalled = [f_ for f_ in flagged if f_["stalled_updates"]]
            if stalled:
                L += [f"{len(stalled)} run(s) stalled: in a stalled update every minibatch step was skipped (the fp16 "
                      "loss scaler found non-finite gradients at each), so the policy did not change; such a run "
                      "goes on to the end with the weights it had.", ""]
        else:
            L += ["No non-finite events in any run.", ""]
        if env["health"]["metrics"]:
            if o["figures"]:
                figures.plot_health(e, env["health"], out / f"health_{e}.png")
            L += [f"![health](health_{e}.png)", ""]

    L += ["## Resolution", ""]
    if res["decision"]:
        L += [_table(["scope", "contrast", "n", "pairing corr.", "SE (as analysed)", "SE if unpaired",
                      f"MDE ({o['power']:.0%} power)", "smallest margin for 'equivalent'", "seeds left out"],
                     [[r["scope"], r["contrast"], r["n"], _f(r["pairing_corr"], 3), _f(r["se"], 3),
                       _f(r["se_unpaired"], 3), _f(r["mde"], 3), _f(r["smallest_margin"], 3),
                       r["unpaired_runs_left_out"]] for r in res["decision"]]), ""]
        L += [f"SE = standard deviation of the bootstrap replicates of the contrast; 'if unpaired' resamples the two "
              f"cells independently (what ignoring the pairing would give). MDE = smallest true difference the "
              f"seeds detect with {o['power']:.0%} power at {rule.alpha:g} (bootstrap power estimate). Smallest "
              f"margin = max |end of the 90% CI|: equivalence would hold for any delta above it.", ""]

    L += ["## Secondary endpoints (not part of the decision)", ""]
    sec_name = ENDPOINT_TEXT["final_return" if rule.endpoint == "auc" else "auc"]
    if res["secondary"]:
        L += [f"**{sec_name}**, judged with the same rule as a separate family:", ""]
        L += [_table(["scope", "contrast", "n", "estimate", "90% CI", "Holm CI", "verdict"],
                     [[r["scope"], r["contrast"], r["n"], _f(r["estimate"], 3), _ci(*r["ci90"]),
                       _ci(*r["ci_holm"]), r["verdict"] + (" (zero spread)" if r["zero_spread"] else "")]
                      for r in res["secondary"]]), ""]
    if res["ttt"]:
        L += [f"**Time to threshold** (first grid step at which the windowed return reaches random + "
              f"{o['threshold']:g} x (reference - random); runs that never reach it count as the end of the grid):",
              ""]
        L += [_table(["env", "contrast", "n", "IQM difference (steps) [95% CI]", "reached A", "reached B"],
                     [[t["env"], t["contrast"], t["n"], _ci3(t["iqm_diff_steps"], t["lo"], t["hi"]),
                       f"{t['reached_a']}/{t['n_a']}", f"{t['reached_b']}/{t['n_b']}"] for t in res["ttt"]]), ""]
    if res["collapse"]:
        L += [f"**Collapse rate** (final return below {o['collapse']:g} x the median final return of "
              f"{rule.reference}) and median time to threshold per cell:", ""]
        L += [_table(["env", "cell", "n", "collapsed", "rate [95% Wilson CI]", "cut", "reached threshold",
                      "median steps to threshold"],
                     [[c["env"], c["cell"], c["n"], c["collapsed"], _ci3(c["rate"], c["lo"], c["hi"]), _f(c["cut"]),
                       f"{c['reached_threshold']}/{c['n']}", _f(c["median_time_to_threshold"])]
                      for c in res["collapse"]]), ""]
    L += ["**Outcomes per cell** (IQM over seeds [95% CI]):", ""]
    L += [_table(["env", "cell", "n", "AUC (return units)", "normalised AUC", "final return", "normalised final"],
                 [[o_["env"], o_["cell"], o_["n_seeds"], _ci3(o_["auc_iqm"], o_["auc_iqm_lo"], o_["auc_iqm_hi"]),
                   _ci3(o_["auc_norm_iqm"], o_["auc_norm_iqm_lo"], o_["auc_norm_iqm_hi"]),
                   _ci3(o_["final_return_iqm"], o_["final_return_iqm_lo"], o_["final_return_iqm_hi"]),
                   _ci3(o_["final_norm_iqm"], o_["final_norm_iqm_lo"], o_["final_norm_iqm_hi"])]
                  for e in res["envs"] for o_ in res["env"][e]["outcomes"]]), ""]

    L += ["## Inventory", ""]
    inv = [[e, row["cell"], row["n_seeds"], row["failed"], row["interrupted"], row["running"],
            row["runs_flagged_nonfinite"]] for e in res["envs"] for row in res["env"][e]["outcomes"]]
    L += [_table(["env", "cell", "completed (used)", "failed", "interrupted", "running",
                  "runs with non-finite events"], inv), ""]
    problems = [row for row in all_runs if row["status"] != "completed" or not row["used_in_stats"]]
    if problems:
        L += ["Runs not used in the statistics:", ""]
        L += [_table(["env", "cell", "seed", "status", "reason", "episodes", "path"],
                     [[p["env"], p["cell"], p["seed"], p["status"],
                       p["reason"] or ("no episodes" if not p["episodes"] else "—"), p["episodes"], p["path"]]
                      for p in problems]), ""]
    if summary["missing"]:
        groups: dict[tuple, list] = {}
        for m in summary["missing"]:
            groups.setdefault((m["env"], m["cell"]), []).append(m["seed"])
        L += [f"Missing runs ({len(summary['missing'])}; no run directory for these cell x seed pairs of the "
              f"observed grid):", ""]
        L += [f"- {e} {c}: seed " + ", ".join(map(str, s)) for (e, c), s in groups.items()] + [""]
    if dup_rows:
        L += [f"Duplicate runs ({len(dup_rows)}; same env/cell/seed found more than once, the latest completed copy "
              f"is kept; completed pairs serve as determinism controls in the drift section):", ""]
        L += [_table(["env", "cell", "seed", "status", "dropped", "kept"],
                     [[d["env"], d["cell"], d["seed"], d["status"], d["path"], d["kept"]] for d in dup_rows]), ""]
    if sweep.unreadable:
        L += ["Unreadable run directories: " + "; ".join(f"{p} ({why})" for p, why in sweep.unreadable), ""]
    if sweep.damaged:
        how = ("INCLUDED with what could be read (--include-damaged): the statistics above use them"
               if sweep.include_damaged else "EXCLUDED from every statistic above")
        L += [f"**Damaged runs ({len(sweep.damaged)}; {how}):**", ""]
        L += [_table(["env", "cell", "seed", "status", "damage", "path"],
                     [[d["env"], d["cell"], d["seed"], d["status"], d["reason"], d["path"]]
                      for d in summary["damaged"]]), ""]
    if not problems and not summary["missing"] and not dup_rows and not sweep.unreadable and not sweep.damaged:
        L += ["All runs completed; no missing, duplicate or unreadable runs.", ""]
    L += ["**Provenance** (every kept run's run.json, which records the launch that last wrote it: a resumed run's "
          "commit, device and versions are its last resume's; its train.log lists every launch):", ""]
    cols = P.columns(prov)
    L += [_table(["runs", *cols, "first started", "last ended"],
                 [[row["runs"], *(_f(row[k]) if isinstance(row[k], bool) or row[k] is None else row[k]
                                  for k in cols), row["first_started"] or "—", row["last_ended"] or "—"]
                  for row in prov]), ""]
    differ = P.varying(prov)
    L += [("The runs differ in: " + ", ".join(differ) + "." if differ else
           "Every run has the same device, driver, CUDA, versions, numerics flags and commit"
           + (", and the same code trees." if P.CODE[0] in cols else ".")), ""]

    if DR.sweep_has_drift(sweep):
        do = {"reps": min(int(o["reps"]), DR.DEFAULTS["reps"]), "seed": o["seed"], "figures": o["figures"]}
        L += DR.drift_section(sweep, rule.reference, o.get("control"), do, out)

    L += ["## Files", "", "decision.csv and secondary.csv (every contrast, every interval), runs.csv, outcomes.csv, "
          "health.csv, time_to_threshold.csv, collapse.csv, curves.csv, difference_curves.csv, provenance.csv, "
          "summary.json (all of the above and the rule; NaN written as null).", ""]
    # a figure that was not drawn (--no-figures) is not linked
    L = [line for line in L if not (line.startswith("![") and not (out / line[line.index("(") + 1:-1]).exists())]
    path = out / "report.md"
    path.write_text("\n".join(L), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="esper-report",
        description="Judge a sweep by the decision rule stored in its runs: decision table, forest plot, "
                    "curves, probability of improvement, performance profiles, health, resolution, secondary "
                    "endpoints (and a drift section when runs have drift files).")
    p.add_argument("sweep_dir", help="directory holding run directories (found by their run.json)")
    add_common(p, DEFAULTS["reps"])
    p.add_argument("--control", default=None,
                   help="drift section: noise-floor control cell (default: every <reference>/perturb-* cell)")
    p.add_argument("--grid", type=int, default=None,
                   help="curve grid points (default: the stored rule's analysis.grid; another value is an override, "
                        "labelled NOT pre-registered)")
    p.add_argument("--window", type=int, default=None,
                   help="episodes averaged at each curve point (default: the stored rule's analysis.window; "
                        "another value is an override)")
    p.add_argument("--last", type=int, default=None,
                   help="episodes in the final return (default: the stored rule's analysis.last; another value is "
                        "an override)")
    p.add_argument("--power", type=float, default=DEFAULTS["power"],
                   help="power for the minimum detectable effect (default: %(default)s)")
    p.add_argument("--no-figures", dest="figures", action="store_false", help="numbers and report.md only")
    p.add_argument("--vs", metavar="OTHER_SWEEP", default=None,
                   help="compare another sweep of the same cells with this one, cell by cell (e.g. a CPU twin of a "
                        "CUDA sweep), by this sweep's stored rule; writes twin.md / twin.json")
    p.add_argument("--pair", metavar="OTHER_CELL=THIS_CELL", action="append", default=None,
                   help="with --vs: compare only these cells, the other sweep's OTHER_CELL against this sweep's "
                        "THIS_CELL (e.g. exact/fp16=exact/fp32 for an fp16 arm against the primary); repeatable")
    p.add_argument("--pilot", action="store_true",
                   help="a pre-registered pilot: only the largest per env x cell SD of the normalised primary "
                        "endpoint and the seed count it gives (no contrasts; writes pilot.md / pilot.json)")
    p.add_argument("--pilot-sd-max", type=float, default=0.3,
                   help="--pilot: the SD above which the seed count is raised (default: %(default)s)")
    p.add_argument("--pilot-seeds", type=int, default=30,
                   help="--pilot: the registered seed count (default: %(default)s)")
    p.add_argument("--pilot-n", type=int, default=10,
                   help="--pilot: the pilot's seeds are the first N of the registered seed list (default: %(default)s)")
    p.add_argument("--recompute", action="store_true",
                   help="SWEEP_DIR is a report directory: recompute its verdicts from its runs.csv and summary.json "
                        "alone (no run directories) and compare them with the stored ones (exit 1 if any differs)")
    p.add_argument("--include-damaged", action="store_true",
                   help="use what can be read of damaged runs (bad or cut lines, missing updates, run.json not "
                        "matching metrics.jsonl) instead of excluding them and exiting 1; they are still listed")
    return p


def run_report(sweep_dir, out=None, rule_overrides: dict | None = None, **opts) -> Path:
    """Library entry point (tests use it). Raises AnalysisError on bad input."""
    return _report(sweep_dir, out, rule_overrides, **opts)[0]


def endpoint_overrides(rule_overrides: dict | None, **flags) -> dict:
    """``--rule`` overrides plus the endpoint flags (``--grid`` / ``--window`` / ``--last``) that were given: those are
    rule keys too (rule.py), checked as such and labelled the same way."""
    out = dict(rule_overrides or {})
    for key in ENDPOINT_OPTIONS:
        if flags.get(key) is not None:
            out[key] = int(flags[key])
    return out


def _load_and_rule(sweep_dir, include_damaged: bool, overrides: dict, o: dict) -> tuple[Sweep, Rule, dict]:
    """The sweep, its rule (stored, with overrides) and meta; ``o`` gets the rule's endpoint options."""
    sweep = load_sweep_or_raise(Path(sweep_dir), AnalysisError, include_damaged=include_damaged)
    rule, meta = choose_rule(sweep, overrides)
    o.update({k: getattr(rule, k) for k in ENDPOINT_OPTIONS})
    return sweep, rule, meta


def _report(sweep_dir, out=None, rule_overrides: dict | None = None, **opts) -> tuple[Path, Sweep]:
    o = {**DEFAULTS, **{k: v for k, v in opts.items() if (v is not None or k == "control") and
                        k not in ENDPOINT_OPTIONS}}
    check_positive(reps=o["reps"], curve_reps=o["curve_reps"])
    if not 0 < float(o["power"]) < 1:
        raise AnalysisError(f"--power must be between 0 and 1 (got {o['power']})")
    root = Path(sweep_dir)
    sweep, rule, meta = _load_and_rule(root, bool(o["include_damaged"]), endpoint_overrides(rule_overrides, **opts), o)
    cells = sorted({r.cell for r in sweep.runs})
    if rule.reference not in cells:
        raise AnalysisError(f"unknown reference cell '{rule.reference}'; cells in this sweep: " + ", ".join(cells))
    if o.get("control") is not None and o["control"] not in cells:
        raise AnalysisError(f"unknown control cell '{o['control']}'; cells in this sweep: " + ", ".join(cells))
    res = analyse(sweep, rule, o)
    out = Path(out) if out is not None else root / "report"
    try:
        return write_report(sweep, res, rule, meta, o, out), sweep
    except BadRunFile as e:  # a drift file (snapshots.jsonl / probe.jsonl) that is not in the format
        raise AnalysisError(str(e)) from None


def _pilot(args) -> int:
    from .pilot import incomplete_reason, pilot, write_pilot

    o = dict(DEFAULTS)
    try:
        check_positive(pilot_seeds=args.pilot_seeds, pilot_n=args.pilot_n)
        if not args.pilot_sd_max > 0:
            raise AnalysisError(f"--pilot-sd-max must be > 0 (got {args.pilot_sd_max})")
        root = Path(args.sweep_dir)
        sweep, rule, _ = _load_and_rule(root, bool(args.include_damaged), _cli_overrides(args), o)
        res = pilot(sweep, rule, o, float(args.pilot_sd_max), int(args.pilot_seeds), int(args.pilot_n))
    except AnalysisError as e:
        return fail("esper-report", e)
    path = write_pilot(res, Path(args.out) if args.out is not None else root / "pilot")
    provisional = "" if res["complete"] else f"PROVISIONAL ({incomplete_reason(res)}): at least "
    print(f"esper-report: pilot SD {res['sd']:.4f} ({res['worst']}), limit {res['sd_max']}: {provisional}"
          f"{res['seeds']} seeds; wrote {path}")
    return _damaged_exit(sweep.damaged, bool(args.include_damaged))


def _twin(args) -> int:
    from .twin import compare, write_twin

    o = {**DEFAULTS, "reps": args.reps, "seed": args.seed, "power": args.power}
    try:
        check_positive(reps=o["reps"])
        root = Path(args.sweep_dir)
        sweep, rule, meta = _load_and_rule(root, bool(args.include_damaged), _cli_overrides(args), o)
        other = load_sweep_or_raise(Path(args.vs), AnalysisError, include_damaged=bool(args.include_damaged))
        res = compare(sweep, other, rule, o, _pairs(args.pair))
    except AnalysisError as e:
        return fail("esper-report", e)
    res["rule_source"] = meta["source"]
    path = write_twin(res, Path(args.out) if args.out is not None else root / "twin")
    verdicts = [r["verdict"] for r in res["rows"] if r["scope"] == "all"]
    counts = ", ".join(f"{verdicts.count(v)} {v}" for v in sorted(set(verdicts)))
    print(f"esper-report: {len(verdicts)} cells compared ({counts}); wrote {path}")
    return _damaged_exit(sweep.damaged + other.damaged, bool(args.include_damaged))


def _pairs(given: list[str] | None) -> list[tuple[str, str]] | None:
    """--pair values as (other cell, this cell); a bad one is an AnalysisError naming it."""
    if not given:
        return None
    pairs = []
    for g in given:
        sides = g.split("=")
        if len(sides) != 2 or not all(len(x.split("/")) >= 2 and all(x.split("/")) for x in sides):
            raise AnalysisError(f"--pair {g!r}: expected OTHER_CELL=THIS_CELL with cells as gelu/precision, e.g. "
                                f"exact/fp16=exact/fp32")
        pairs.append((sides[0], sides[1]))
    return pairs


def _cli_overrides(args) -> dict:
    return endpoint_overrides(parse_rule_overrides(args.rule), grid=args.grid, window=args.window, last=args.last)


def _damaged_exit(damaged: list, included: bool) -> int:
    """Name every damaged run on stderr; exit 1 when they were left out of the statistics (0 otherwise)."""
    how = ("INCLUDED with what could be read (--include-damaged)" if included
           else "EXCLUDED from all statistics (--include-damaged uses what can be read)")
    for r in damaged:
        print(f"esper-report: DAMAGED RUN {how}: {r.damage}", file=sys.stderr)
    return EXIT_DAMAGED if damaged and not included else 0


def _recompute(args) -> int:
    from .recompute import differences, read_report, recompute

    given = [name for name, on in (("--pilot", args.pilot), ("--vs", args.vs), ("--rule", args.rule),
                                    ("--out", args.out), ("--grid", args.grid is not None),
                                    ("--window", args.window is not None), ("--last", args.last is not None)) if on]
    try:
        if given:
            raise AnalysisError(f"--recompute uses the report's stored rule and settings; {', '.join(given)} "
                                f"cannot be combined with it")
        summary, rows = read_report(Path(args.sweep_dir))
        decision, secondary = recompute(summary, rows)
    except (AnalysisError, ValueError, KeyError) as e:
        return fail("esper-report", e if isinstance(e, AnalysisError) else AnalysisError(
            f"{args.sweep_dir}: its summary.json or runs.csv is not in the format this esper-report writes ({e!r})"))
    diff = differences(summary["decision"], decision, "decision") + \
        differences(summary["secondary"], secondary, "secondary")
    for r in decision:
        lo, hi = r["ci90"]
        print(f"{r['scope']}: {r['contrast']}: {r['estimate']:+.4f}, 90% CI [{lo:+.4f}, {hi:+.4f}] -> {r['verdict']}")
    for line in diff:
        print(f"esper-report: DIFFERS {line}", file=sys.stderr)
    print(f"esper-report: {len(decision)} decision and {len(secondary)} secondary rows recomputed from "
          f"{args.sweep_dir}/runs.csv: " + (f"{len(diff)} difference(s) from summary.json" if diff
                                             else "identical to summary.json"))
    return 1 if diff else 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.recompute:
        return _recompute(args)
    if args.pilot and args.vs:
        return fail("esper-report", AnalysisError("--pilot and --vs are separate reports; give one"))
    if args.pair and not args.vs:
        return fail("esper-report", AnalysisError("--pair names cells of two sweeps: give the other with --vs"))
    if args.pilot:
        return _pilot(args)
    if args.vs:
        return _twin(args)
    try:
        path, sweep = _report(args.sweep_dir, args.out, parse_rule_overrides(args.rule), reps=args.reps,
                              seed=args.seed, grid=args.grid, window=args.window, last=args.last, power=args.power,
                              control=args.control, figures=args.figures, include_damaged=args.include_damaged)
    except AnalysisError as e:
        return fail("esper-report", e)
    print(f"esper-report: wrote {path}")
    return _damaged_exit(sweep.damaged, sweep.include_damaged)


if __name__ == "__main__":
    sys.exit(main())
