"""esper-drift: paired divergence between runs, from their drift files (issue 6). Files only; never
imports the trainer.

    esper-drift RUN_A RUN_B [--out DIR] [--return-window STEPS]
    esper-drift --sweep SWEEP_DIR [--reference exact/fp32] [--control exact/fp32/perturb-ulp]
                [--out DIR] [--reps N] [--seed S]

Pair mode (A against B, aligned by update; the two runs must share the probe set: same env and seed):

- ``kl``: mean over the probe set of KL(A || B) between the two policies' action distributions
  (Categorical from the logits; diagonal Gaussian from the means and the state-independent logstd);
- ``param_rel``: ||sketch_A - sketch_B|| / ||theta_A|| (count sketch of the parameters, an unbiased
  estimate of the relative parameter distance);
- ``value_mean_abs`` / ``value_rms``: mean absolute and RMS difference of the value predictions;
- ``return_diff``: mean return of A's episodes that finished in the step window (g - W, g] before
  the snapshot's global step g, minus B's (W: ``--return-window``, default the snapshot spacing).

Runs whose snapshots and episodes are bitwise equal are reported "identical". A determinism control
(A and B of the same cell and seed, e.g. a run and its re-run) that is not identical is reported
loudly and the exit status is 3.

Sweep mode pairs every cell's seed k with the reference cell's seed k (paired seeds: same env seeds,
init and minibatch order), the butterfly control's seed k included. Per cell, the divergence curves
are summarised over seeds by the median with a 95 % bootstrap CI of the median. The verdict statistic
(per cell, against the control) is the paired per-seed difference

    d_k = AUC_log(cell, k) - AUC_log(control, k),
    AUC_log = (1 / span) * integral over updates of log10(max(KL, 0) + 1e-20)

i.e. the update-averaged log10 KL to the reference; mean of d_k over seeds with a 95 % percentile
bootstrap CI (and a Bonferroni-widened one for the number of cells judged). 10**mean is the
geometric-mean factor by which the cell's divergence exceeds the control's. "exceeds" when the CI
lies above 0, "below" when it lies below 0, else "not distinguishable". The same statistic is
reported at a few update checkpoints and for the parameter distance.

The shadow probe (probe.jsonl) is summarised per cell: per run, the median over its probed updates;
then the median over seeds (95 % bootstrap CI), and the same per third of training (early/mid/late).
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
from scipy.special import log_softmax

from . import figures
from .output import fmt as _fmt, jsonable as _jsonable, table as _table, write_csv as _write_csv
from . import stats as S
from .load import Run, RunReadError, Sweep, _read_jsonl, load_run, load_sweep_or_raise, parse_cell, sort_cells

KL_FLOOR = 1e-20  # added to KL before log10 (exact zeros occur: identical runs, an ulp not yet felt)
KL_THRESHOLD = 1e-3  # "updates to reach KL 1e-3"
KL_SATURATION = 1e-2  # the growth-rate fit stops here
METRICS = ("kl", "param_rel", "value_mean_abs", "value_rms", "return_diff")
PROBE_KEYS = ("grad_rel_l2", "grad_cos", "action_kl", "actor_out_max_abs", "value_max_abs",
              "actor_seed_max_abs", "critic_seed_max_abs")
DEFAULTS = {"reference": "exact/fp32", "reps": 2000, "seed": 0}
EXIT_NOT_DETERMINISTIC = 3


class DriftError(Exception):
    """Bad input: reported as one line, non-zero exit, no traceback."""


# --------------------------------------------------------------------------- files


def read_snapshots(run_dir) -> list[dict]:
    """snapshots.jsonl sorted by update (a resumed run may repeat an update: the last one is kept)."""
    rows, _ = _read_jsonl(Path(run_dir) / "snapshots.jsonl")
    by = {int(r["update"]): r for r in rows if "update" in r and "actor_out" in r and "params" in r}
    return [by[u] for u in sorted(by)]


def read_probe(run_dir) -> list[dict]:
    rows, _ = _read_jsonl(Path(run_dir) / "probe.jsonl")
    by = {int(r["update"]): r for r in rows if "update" in r}
    return [by[u] for u in sorted(by)]


def has_drift_files(run: Run) -> bool:
    return (run.path / "snapshots.jsonl").exists() or (run.path / "probe.jsonl").exists()


# --------------------------------------------------------------------------- pair


def _arrays(s: dict) -> dict:
    return {"out": np.asarray(s["actor_out"], dtype=np.float64),
            "value": np.asarray(s["value"], dtype=np.float64).reshape(-1),
            "logstd": np.asarray(s.get("logstd") or [], dtype=np.float64),
            "sketch": np.asarray(s["params"]["sketch"], dtype=np.float64),
            "norm": float(s["params"]["norm"])}


def policy_kl(a: dict, b: dict, discrete: bool) -> float:
    """Mean over the probe set of KL(A || B). a, b: _arrays of two snapshots."""
    if discrete:
        la, lb = log_softmax(a["out"], axis=-1), log_softmax(b["out"], axis=-1)
        return float((np.exp(la) * (la - lb)).sum(-1).mean())
    d = a["logstd"] - b["logstd"]  # per action dim, state independent
    var_b = np.exp(2 * b["logstd"])
    kl = (a["out"] - b["out"]) ** 2 / (2 * var_b) + 0.5 * (np.expm1(2 * d) - 2 * d)
    return float(kl.sum(-1).mean())


def _window_mean(steps: np.ndarray, rets: np.ndarray, g: float, w: float) -> float:
    lo, hi = np.searchsorted(steps, g - w, side="right"), np.searchsorted(steps, g, side="right")
    return float(rets[lo:hi].mean()) if hi > lo else float("nan")


def pair_divergence(a: Run, b: Run, return_window: float | None = None, cache: dict | None = None) -> dict:
    """Divergence of run A from run B over their common snapshot updates. Raises DriftError."""
    cache = {} if cache is None else cache
    snaps = []
    for r in (a, b):
        if r.path not in cache:
            cache[r.path] = read_snapshots(r.path)
        if not cache[r.path]:
            raise DriftError(f"no snapshots in {r.path} (train with drift.snapshot_every=M)")
        snaps.append({int(s["update"]): s for s in cache[r.path]})
    sa, sb = snaps
    common = sorted(set(sa) & set(sb))
    if not common:
        raise DriftError(f"no common snapshot update between {a.path} ({sorted(sa)[:5]}...) and "
                         f"{b.path} ({sorted(sb)[:5]}...)")
    for u in common:
        if sa[u].get("probe_sha") != sb[u].get("probe_sha"):
            raise DriftError(f"probe sets differ at update {u} (probe_sha {sa[u].get('probe_sha')} vs "
                             f"{sb[u].get('probe_sha')}): pair runs of the same env and seed")
        if bool(sa[u].get("discrete")) != bool(sb[u].get("discrete")):
            raise DriftError("one run has a discrete policy and the other a continuous one")
    steps = [float(sa[u]["global_step"]) for u in common]
    if return_window is None:
        gaps = np.diff(steps)
        return_window = float(np.median(gaps)) if gaps.size and np.median(gaps) > 0 else max(steps[-1], 1.0)
    rows, identical = [], True
    for u in common:
        A, B = _arrays(sa[u]), _arrays(sb[u])
        if A["out"].shape != B["out"].shape or A["value"].shape != B["value"].shape:
            raise DriftError(f"snapshot shapes differ at update {u}")
        same = all(np.array_equal(A[k], B[k]) for k in ("out", "value", "logstd", "sketch")) \
            and A["norm"] == B["norm"]
        identical &= same
        dv = A["value"] - B["value"]
        g = float(sa[u]["global_step"])
        ra = _window_mean(a.episodes_step, a.episodes_return, g, return_window)
        rb = _window_mean(b.episodes_step, b.episodes_return, g, return_window)
        rows.append({
            "update": u, "global_step": g, "identical": same,
            "kl": 0.0 if same else policy_kl(A, B, bool(sa[u].get("discrete"))),
            "param_rel": float(np.linalg.norm(A["sketch"] - B["sketch"]) / A["norm"]) if A["norm"] else float("nan"),
            "value_mean_abs": float(np.abs(dv).mean()), "value_rms": float(np.sqrt((dv ** 2).mean())),
            "return_a": ra, "return_b": rb, "return_diff": ra - rb})
    episodes_equal = (np.array_equal(a.episodes_step, b.episodes_step)
                      and np.array_equal(a.episodes_return, b.episodes_return))
    first = next((r["update"] for r in rows if not r["identical"]), None)
    return {"a": str(a.path), "b": str(b.path), "cell_a": a.cell, "cell_b": b.cell,
            "seed_a": a.seed, "seed_b": b.seed, "env": a.env,
            "determinism_control": a.env == b.env and a.cell == b.cell and a.seed == b.seed,
            "identical": bool(identical and episodes_equal), "snapshots_identical": bool(identical),
            "episodes_identical": bool(episodes_equal), "first_divergent_update": first,
            "return_window": return_window, "rows": rows}


def pair_verdict(p: dict) -> str:
    if p["identical"]:
        s = "IDENTICAL: every snapshot (probe-set outputs, values, parameter sketch) and every episode is bitwise equal"
        return s + (" (determinism control passed)" if p["determinism_control"] else "")
    where = (f"snapshots first differ at update {p['first_divergent_update']}"
             if p["first_divergent_update"] is not None else "snapshots equal but episodes differ")
    if p["determinism_control"]:
        return (f"!!! DETERMINISM CONTROL FAILED !!! {p['a']} and {p['b']} are the same cell "
                f"({p['cell_a']}) and seed ({p['seed_a']}) but differ: {where}. Divergence between "
                f"cells cannot be trusted to come from numerics alone on this machine.")
    return f"differ: {where}"


# --------------------------------------------------------------------------- sweep


def _auc_log(kl: np.ndarray, updates: np.ndarray) -> float:
    y = np.log10(np.maximum(kl, 0.0) + KL_FLOOR)
    if len(updates) < 2:
        return float(y[0]) if len(y) else float("nan")
    return float(np.trapezoid(y, updates) / (updates[-1] - updates[0]))


def _growth(kl: np.ndarray, updates: np.ndarray) -> tuple[float, float]:
    """(first update with KL >= KL_THRESHOLD or NaN, log10-KL slope in decades per 100 updates,
    least squares from the first snapshot after update 0 until KL first reaches KL_SATURATION)."""
    hit = np.nonzero(kl >= KL_THRESHOLD)[0]
    t = float(updates[hit[0]]) if hit.size else float("nan")
    m = updates > 0
    u, k = updates[m], kl[m]
    sat = np.nonzero(k >= KL_SATURATION)[0]
    if sat.size:
        u, k = u[: sat[0] + 1], k[: sat[0] + 1]
    if u.size < 2:
        return t, float("nan")
    slope = np.polyfit(u, np.log10(np.maximum(k, 0.0) + KL_FLOOR), 1)[0]
    return t, float(slope * 100)


def _nanmed(a, axis=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmedian(a, axis=axis)


def _checkpoints(updates: np.ndarray) -> list[int]:
    """Indices: the first snapshot after update 0, then about 25 %, 50 % and 100 % of training."""
    n = len(updates)
    pos = [int(np.argmax(updates > 0)) if (updates > 0).any() else 0]
    pos += [int(round(f * (n - 1))) for f in (0.25, 0.5, 1.0)]
    out = []
    for p in pos:
        if p not in out:
            out.append(p)
    return out


def _probe_summary(runs: list[Run], reps: int, seed: int) -> tuple[dict, dict]:
    """Curves (median and IQR over seeds at each common probed update) and the summary row."""
    recs = {r.seed: read_probe(r.path) for r in runs}
    recs = {s: v for s, v in recs.items() if v}
    if not recs:
        return {}, {}
    common = sorted(set.intersection(*[{x["update"] for x in v} for v in recs.values()]))
    curves: dict = {"updates": np.asarray(common, dtype=float), "n": len(recs)}
    row: dict = {"n_seeds": len(recs), "probed_updates": len(common)}
    for key in PROBE_KEYS:
        arr = np.array([[_f64(next(x for x in v if x["update"] == u).get(key)) for u in common]
                        for v in recs.values()])
        if key == "grad_cos":  # plotted and summarised as 1 - cos (0 = same direction); a cosine of
            # identical gradients computed in floating point can miss 1 by an ulp: where the
            # gradients are equal (grad_rel_l2 == 0) 1 - cos is exactly 0
            rel = np.array([[_f64(next(x for x in v if x["update"] == u).get("grad_rel_l2")) for u in common]
                            for v in recs.values()])
            arr, key = np.where(rel == 0, 0.0, np.maximum(1.0 - arr, 0.0)), "one_minus_grad_cos"
        if arr.size == 0 or not np.isfinite(arr).any():
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            curves[key] = {"median": _nanmed(arr, 0), "q25": np.nanpercentile(arr, 25, axis=0),
                           "q75": np.nanpercentile(arr, 75, axis=0)}
        per_run = _nanmed(arr, 1)
        p, lo, hi = S.interval_estimate(per_run[np.isfinite(per_run)], S.AGGREGATES["median"], reps, seed)
        row[key], row[f"{key}_lo"], row[f"{key}_hi"] = p, lo, hi
        thirds = np.array_split(np.arange(len(common)), 3)
        for name, idx in zip(("early", "mid", "late"), thirds):
            row[f"{key}_{name}"] = float(_nanmed(_nanmed(arr[:, idx], 1))) if idx.size else float("nan")
    return curves, row


def _seed(base: int, *parts) -> int:
    """Stable per-statistic bootstrap seed (as in report.py)."""
    return (base * 1_000_003 + zlib.crc32("|".join(map(str, parts)).encode())) % (2**32)


def _f64(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def default_control(cells, reference: str) -> str | None:
    c = f"{reference}/perturb-ulp"
    return c if c in cells else None


def analyse_env(sweep: Sweep, env: str, reference: str, control: str | None, o: dict) -> dict:
    cells = sweep.cells(env)
    if control is None:
        control = default_control(cells, reference)
    done = {c: [r for r in sweep.runs_of(env, c) if has_drift_files(r)] for c in cells}
    res = {"env": env, "reference": reference, "control": control if control in cells else None,
           "pairs": {}, "curves": {}, "verdicts": [], "probe": {}, "probe_rows": [], "decomp_rows": [],
           "determinism": [], "skipped": [], "growth": {}}
    cache: dict = {}
    # determinism: a duplicate (same env/cell/seed found twice, e.g. a re-run) is a free control
    for dropped, kept in sweep.duplicates:
        if dropped.env == env and dropped.status == kept.status == "completed":
            try:
                p = pair_divergence(kept, dropped, cache=cache)
            except DriftError:
                continue
            res["determinism"].append({"cell": kept.cell, "seed": kept.seed, "a": p["a"], "b": p["b"],
                                       "identical": p["identical"], "verdict": pair_verdict(p)})
    # shadow probe
    for c in cells:
        curves, row = _probe_summary(done[c], o["reps"], _seed(o["seed"], env, c, "probe"))
        if curves:
            res["probe"][c] = curves
            res["probe_rows"].append({"env": env, "cell": c, **row})
    # paired divergence against the reference, seed by seed
    ref = {r.seed: r for r in done.get(reference, []) if (r.path / "snapshots.jsonl").exists()}
    if not ref:
        return res
    for c in cells:
        if c == reference:
            continue
        pairs = {}
        for r in done[c]:
            if not (r.path / "snapshots.jsonl").exists():
                continue
            if r.seed not in ref:
                res["skipped"].append({"cell": c, "seed": r.seed, "why": "no reference run of this seed"})
                continue
            try:
                pairs[r.seed] = pair_divergence(r, ref[r.seed], cache=cache)
            except DriftError as e:
                res["skipped"].append({"cell": c, "seed": r.seed, "why": str(e)})
        if not pairs:
            continue
        res["pairs"][c] = pairs
        common = sorted(set.intersection(*[{row["update"] for row in p["rows"]} for p in pairs.values()]))
        seeds = sorted(pairs)
        cur = {"updates": np.asarray(common, dtype=float), "seeds": seeds, "n": len(seeds), "per_seed": {}}
        step_of = {row["update"]: row["global_step"] for row in pairs[seeds[0]]["rows"]}
        cur["steps"] = np.asarray([step_of[u] for u in common], dtype=float)
        for m in METRICS:
            arr = np.array([[next(row[m] for row in pairs[s]["rows"] if row["update"] == u) for u in common]
                            for s in seeds], dtype=np.float64)
            cur["per_seed"][m] = arr
            med, lo, hi = S.median_band(arr, o["reps"], _seed(o["seed"], env, c, m, "band"))
            cur[m] = {"median": med, "lo": lo, "hi": hi}
        res["curves"][c] = cur
        g = [_growth(cur["per_seed"]["kl"][i], cur["updates"]) for i in range(len(seeds))]
        t = np.array([x[0] for x in g])
        res["growth"][c] = {"t_reach": float(_nanmed(t)) if np.isfinite(t).any() else float("nan"),
                            "n_reach": int(np.isfinite(t).sum()), "n": len(seeds),
                            "slope": float(_nanmed(np.array([x[1] for x in g])))}
    # verdicts against the control
    ctrl = res["control"]
    judged = [c for c in res["curves"] if c != ctrl]
    for c in judged:
        row = {"env": env, "cell": c, "control": ctrl}
        if ctrl is None or ctrl not in res["curves"]:
            row["verdict"] = "no control cell to judge against"
            res["verdicts"].append(row)
            continue
        A, C = res["curves"][c], res["curves"][ctrl]
        seeds = sorted(set(A["seeds"]) & set(C["seeds"]))
        ups = np.array(sorted(set(A["updates"]) & set(C["updates"])))
        row.update({"n": len(seeds), "updates": len(ups)})
        if not seeds or not ups.size:
            row["verdict"] = "no common seeds/updates with the control"
            res["verdicts"].append(row)
            continue

        def per_seed(cur, m, s):
            i = cur["seeds"].index(s)
            return cur["per_seed"][m][i][np.isin(cur["updates"], ups)]

        for m, name in (("kl", "kl"), ("param_rel", "param")):
            d = [_auc_log(per_seed(A, m, s), ups) - _auc_log(per_seed(C, m, s), ups) for s in seeds]
            est = S.mean_ci(d, o["reps"], _seed(o["seed"], env, c, m, "verdict"), n_comparisons=len(judged))
            row[f"{name}_diff"], (row[f"{name}_lo"], row[f"{name}_hi"]) = est["mean"], est["ci"]
            row[f"{name}_lo_bonf"], row[f"{name}_hi_bonf"] = est["ci_adj"]
            row[f"{name}_per_seed"] = d
        lo, hi = row["kl_lo"], row["kl_hi"]
        row["exceeds"] = bool(np.isfinite(lo) and lo > 0)
        row["exceeds_bonf"] = bool(np.isfinite(row["kl_lo_bonf"]) and row["kl_lo_bonf"] > 0)
        row["below"] = bool(np.isfinite(hi) and hi < 0)
        row["checkpoints"] = []
        for i in _checkpoints(ups):
            d = [math.log10(max(per_seed(A, "kl", s)[i], 0) + KL_FLOOR)
                 - math.log10(max(per_seed(C, "kl", s)[i], 0) + KL_FLOOR) for s in seeds]
            est = S.mean_ci(d, o["reps"], _seed(o["seed"], env, c, "ckpt", i))
            row["checkpoints"].append({"update": int(ups[i]), "diff": est["mean"], "lo": est["ci"][0],
                                       "hi": est["ci"][1]})
        row["verdict"] = _verdict_text(row, ctrl)
        res["verdicts"].append(row)
    res["decomp_rows"] = _decomposition(res, cells)
    return res


def _verdict_text(row: dict, ctrl: str) -> str:
    d, lo, hi, n = row["kl_diff"], row["kl_lo"], row["kl_hi"], row["n"]
    fac = f"{10 ** d:.3g}x" if np.isfinite(d) else "—"
    ci = f"mean paired difference of update-averaged log10 KL {d:+.3g} (95% CI {lo:+.3g} to {hi:+.3g}; " \
         f"geometric-mean factor {fac})"
    if not np.isfinite(lo):
        s = f"cannot judge against {ctrl} with {n} seed(s): {ci}"
    elif row["exceeds"]:
        s = f"EXCEEDS the {ctrl} noise floor: {ci}"
        if not row["exceeds_bonf"]:
            s += "; not after a Bonferroni correction for the cells judged: tentative"
    elif row["below"]:
        s = f"diverges LESS than the {ctrl} control: {ci}"
    else:
        s = f"not distinguishable from the {ctrl} noise floor: {ci}"
    if n < 10:
        s += f"; only {n} seeds (the design asks for at least 10 for a claim)"
    return s


def _decomposition(res: dict, cells: list[str]) -> list[dict]:
    probe = {r["cell"]: r for r in res["probe_rows"]}
    verd = {r["cell"]: r for r in res["verdicts"]}
    rows = []
    for c in cells:
        if c == res["reference"]:
            continue
        pc = parse_cell(c)
        dtype_cell = f"exact/{pc['precision']}" + ("/compiled" if pc["compiled"] else "")
        gelu_cell = "tanh/fp32" + ("/compiled" if pc["compiled"] else "")
        get = lambda cell, k: probe.get(cell, {}).get(k, float("nan"))  # noqa: E731
        g = res["growth"].get(c, {})
        v = verd.get(c, {})
        word = ("control" if c == res["control"] else
                "exceeds" if v.get("exceeds") else "below" if v.get("below") else
                "not distinguishable" if "kl_diff" in v and np.isfinite(v.get("kl_lo", np.nan)) else "—")
        rows.append({
            "env": res["env"], "cell": c,
            "grad_rel_l2": get(c, "grad_rel_l2"), "action_kl": get(c, "action_kl"),
            "dtype_alone_cell": dtype_cell if pc["precision"] != "fp32" else None,
            "dtype_alone_grad_rel_l2": get(dtype_cell, "grad_rel_l2") if pc["precision"] != "fp32" else float("nan"),
            "gelu_alone_cell": gelu_cell, "gelu_alone_grad_rel_l2": get(gelu_cell, "grad_rel_l2"),
            "updates_to_kl_1e-3": g.get("t_reach", float("nan")), "n_reached": g.get("n_reach"),
            "n": g.get("n"), "log10_kl_slope_per_100_updates": g.get("slope", float("nan")),
            "kl_factor_vs_control": 10 ** v["kl_diff"] if np.isfinite(v.get("kl_diff", np.nan)) else float("nan"),
            "vs_noise_floor": word})
    return rows


def analyse_drift(sweep: Sweep, reference: str, control: str | None, o: dict) -> list[dict]:
    return [analyse_env(sweep, env, reference, control, o) for env in sweep.envs()]


def sweep_has_drift(sweep: Sweep) -> bool:
    return any(has_drift_files(r) for r in sweep.runs)


# --------------------------------------------------------------------------- output






def pair_table(p: dict) -> str:
    head = ["update", "step", "KL(A||B)", "param rel dist", "value mean|d|", "value RMS", "return A-B"]
    rows = [[r["update"], int(r["global_step"]), "0 (identical)" if r["identical"] else _fmt(r["kl"]),
             _fmt(r["param_rel"]), _fmt(r["value_mean_abs"]), _fmt(r["value_rms"]), _fmt(r["return_diff"])]
            for r in p["rows"]]
    return _table(head, rows)


def write_drift(results: list[dict], out: Path, reference: str, o: dict, heading: str = "##") -> list[str]:
    """Figures + CSV/JSON under out; returns the markdown lines of the drift section."""
    out.mkdir(parents=True, exist_ok=True)
    h2, h3 = heading, heading + "#"
    L = [f"{h2} Drift: numeric perturbation per update and its compounding", ""]
    L += [f"Reference numerics: **{reference}**. Shadow probe (probe.jsonl): at every probed update, the "
          "run's loss gradient and outputs on its minibatch against those under exact GELU in fp32 at the "
          "same parameters; per run the median over probed updates, then the median over seeds with a 95% "
          "bootstrap CI. Divergence (snapshots.jsonl): each run against the reference run of the same "
          f"seed on the fixed probe set: KL(run || reference), relative parameter distance (count sketch), "
          "value RMS difference, windowed return difference. Verdict statistic: per seed, the update-"
          "averaged log10(KL + 1e-20) minus the control's at the same seed; mean over seeds with a 95% "
          f"percentile bootstrap CI ({o['reps']} resamples); 'exceeds' when the CI lies above 0.", ""]
    rows_pairs, rows_curves, rows_probe = [], [], []
    for r in results:
        env = r["env"]
        for c, pairs in r["pairs"].items():
            for s, p in pairs.items():
                rows_pairs += [{"env": env, "cell": c, "seed": s, **row} for row in p["rows"]]
        for c, cur in r["curves"].items():
            for i, u in enumerate(cur["updates"]):
                rows_curves.append({"env": env, "cell": c, "update": u, "step": cur["steps"][i], "n": cur["n"],
                                    **{f"{m}_{k}": cur[m][k][i] for m in METRICS for k in ("median", "lo", "hi")}})
        for c, pc in r["probe"].items():
            for i, u in enumerate(pc["updates"]):
                rows_probe.append({"env": env, "cell": c, "update": u,
                                   **{f"{k}_{q}": pc[k][q][i] for k in pc if isinstance(pc[k], dict)
                                      for q in ("median", "q25", "q75")}})
    _write_csv(out / "drift_pairs.csv", rows_pairs)
    _write_csv(out / "drift_curves.csv", rows_curves)
    _write_csv(out / "drift_probe_curves.csv", rows_probe)
    _write_csv(out / "drift_verdicts.csv", [v for r in results for v in r["verdicts"]])
    _write_csv(out / "drift_probe.csv", [v for r in results for v in r["probe_rows"]])
    _write_csv(out / "drift_decomposition.csv", [v for r in results for v in r["decomp_rows"]])
    summary = {"reference": reference, "settings": o, "kl_floor": KL_FLOOR,
               "envs": [{k: r[k] for k in ("env", "control", "verdicts", "probe_rows", "decomp_rows",
                                           "determinism", "skipped", "growth")} for r in results]}
    (out / "drift_summary.json").write_text(json.dumps(_jsonable(summary), indent=1, allow_nan=False) + "\n")

    for r in results:
        env, ctrl = r["env"], r["control"]
        L += [f"{h3} {env}", ""]
        bad = [d for d in r["determinism"] if not d["identical"]]
        if r["determinism"]:
            L += [f"Determinism controls (duplicate runs of one cell and seed): {len(r['determinism'])}, "
                  f"{len(bad)} not identical.", ""]
            L += [f"- **{d['verdict']}**" for d in bad] + ([""] if bad else [])
        if r["probe"]:
            figures.plot_drift_probe(env, r["probe"], out / f"drift_probe_{env}.png")
            L += [f"![probe](drift_probe_{env}.png)", "",
                  "Shadow probe over training: median over seeds, IQR band. Zero (the reference numerics "
                  "against themselves) cannot be drawn on a log axis: those cells are absent.", ""]
            L += [_table(["cell", "n", "grad rel L2 [CI]", "1 - grad cos", "action KL", "actor out max|d|",
                          "seed MLP out max|d| (actor)", "grad rel L2 early / mid / late"],
                         [[p["cell"], p["n_seeds"],
                           f"{_fmt(p.get('grad_rel_l2'))} [{_fmt(p.get('grad_rel_l2_lo'))}, {_fmt(p.get('grad_rel_l2_hi'))}]",
                           _fmt(p.get("one_minus_grad_cos")), _fmt(p.get("action_kl")),
                           _fmt(p.get("actor_out_max_abs")), _fmt(p.get("actor_seed_max_abs")),
                           " / ".join(_fmt(p.get(f"grad_rel_l2_{ph}")) for ph in ("early", "mid", "late"))]
                          for p in r["probe_rows"]]), ""]
        if not r["curves"]:
            L += [f"No divergence curves: no pair of runs with snapshots against {reference} "
                  f"({len(r['skipped'])} skipped).", ""]
            continue
        figures.plot_divergence(env, r["curves"], ctrl, out / f"drift_divergence_{env}.png")
        L += [f"![divergence](drift_divergence_{env}.png)", "",
              f"Divergence from the reference run of the same seed: median over seeds, 95% bootstrap band "
              f"of the median; grey band: the control {ctrl or '(none)'} (noise floor). Log axes; exact "
              f"zeros are not drawn.", ""]
        if ctrl is None:
            L += ["No butterfly control cell (train with drift.perturb=ulp): divergence cannot be held "
                  "against a noise floor, so no verdicts.", ""]
        else:
            paired = {env: {v["cell"]: {"diffs": np.asarray(v["kl_per_seed"]), "mean": v["kl_diff"],
                                        "lo": v["kl_lo"], "hi": v["kl_hi"]}
                            for v in r["verdicts"] if "kl_diff" in v}}
            if paired[env]:
                figures.plot_paired(paired, ctrl, out / f"drift_verdict_{env}.png",
                                    metric="update-averaged log10 KL")
            L += [f"Verdicts against the butterfly control {ctrl}:", ""]
            L += [f"- **{v['cell']}**: {v['verdict']}" for v in r["verdicts"]] + [""]
            ck = [v for v in r["verdicts"] if v.get("checkpoints")]
            if ck:
                L += ["Paired log10 KL difference to the control at checkpoints (mean over seeds [95% CI]):", ""]
                ups = [c["update"] for c in ck[0]["checkpoints"]]
                L += [_table(["cell"] + [f"update {u}" for u in ups],
                             [[v["cell"]] + [f"{_fmt(c['diff'])} [{_fmt(c['lo'])}, {_fmt(c['hi'])}]"
                                             for c in v["checkpoints"]] for v in ck]), ""]
            if paired[env]:
                L += [f"![verdict](drift_verdict_{env}.png)", ""]
        L += [f"{h3}# Decomposition ({env})", ""]
        L += [_table(["cell", "per-update grad rel L2", "action KL", "dtype alone (exact GELU, same dtype)",
                      "GELU alone (tanh, fp32)", "updates to KL 1e-3 (reached)", "log10 KL slope / 100 upd",
                      "KL vs control (geo-mean factor)", "vs noise floor"],
                     [[d["cell"], _fmt(d["grad_rel_l2"]), _fmt(d["action_kl"]),
                       "—" if d["dtype_alone_cell"] is None else
                       f"{_fmt(d['dtype_alone_grad_rel_l2'])} ({d['dtype_alone_cell']})",
                       _fmt(d["gelu_alone_grad_rel_l2"]),
                       f"{_fmt(d['updates_to_kl_1e-3'])} ({d['n_reached']}/{d['n']})" if d["n"] else "—",
                       _fmt(d["log10_kl_slope_per_100_updates"]), _fmt(d["kl_factor_vs_control"]),
                       d["vs_noise_floor"]] for d in r["decomp_rows"]]), ""]
        L += ["Per-update perturbation: median probe gradient relative L2 difference to the reference "
              "numerics; 'dtype alone' is the exact-GELU cell of the same dtype (the dtype's own rounding), "
              "'GELU alone' the tanh/fp32 cell (the GELU gap without reduced precision). A cell whose value "
              "is close to its 'dtype alone' one has its GELU difference drowned in rounding. Growth: "
              "median over seeds of the first snapshot update with KL >= 1e-3, and of the least-squares "
              "slope of log10 KL from the first snapshot after update 0 to KL 1e-2.", ""]
        if r["skipped"]:
            L += ["Pairs skipped: " + "; ".join(f"{s['cell']} seed {s['seed']} ({s['why']})"
                                                for s in r["skipped"]), ""]
    L += ["Drift files: drift_pairs.csv (every pair, every snapshot), drift_curves.csv, drift_probe_curves.csv, "
          "drift_verdicts.csv, drift_probe.csv, drift_decomposition.csv, drift_summary.json.", ""]
    return L


# --------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="esper-drift",
        description="Paired divergence between two runs (probe-set KL, parameter distance, value and "
                    "return differences over updates), or sweep-wide against the reference cell and a "
                    "butterfly (perturb-ulp) noise-floor control.")
    p.add_argument("runs", nargs="*", help="RUN_A RUN_B (run directories with snapshots.jsonl)")
    p.add_argument("--sweep", default=None, help="sweep directory: pair every cell with the reference, seed by seed")
    p.add_argument("--reference", default=DEFAULTS["reference"], help="reference cell (default: %(default)s)")
    p.add_argument("--control", default=None,
                   help="noise-floor control cell (default: <reference>/perturb-ulp when present)")
    p.add_argument("--out", default=None, help="write CSV/JSON (and, with --sweep, figures + drift.md) here")
    p.add_argument("--return-window", type=float, default=None,
                   help="pair mode: steps of the return window (default: the snapshot spacing)")
    p.add_argument("--reps", type=int, default=DEFAULTS["reps"], help="bootstrap resamples (default: %(default)s)")
    p.add_argument("--seed", type=int, default=DEFAULTS["seed"], help="bootstrap seed (default: %(default)s)")
    return p


def run_pair(a_dir, b_dir, out=None, return_window=None) -> dict:
    try:
        a, b = load_run(a_dir), load_run(b_dir)
    except RunReadError as e:
        raise DriftError(str(e)) from None
    p = pair_divergence(a, b, return_window)
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        _write_csv(out / "drift_pair.csv", p["rows"])
        (out / "drift_pair.json").write_text(json.dumps(_jsonable({**p, "verdict": pair_verdict(p)}),
                                                        indent=1, allow_nan=False) + "\n")
    return p


def run_sweep(sweep_dir, reference=DEFAULTS["reference"], control=None, out=None, **opts) -> tuple[list, Path]:
    o = {**{k: v for k, v in DEFAULTS.items() if k != "reference"}, **opts}
    if int(o["reps"]) < 1:
        raise DriftError(f"--reps must be a positive integer (got {o['reps']})")
    root = Path(sweep_dir)
    sweep = load_sweep_or_raise(root, DriftError)
    cells = sort_cells({r.cell for r in sweep.runs})
    if reference not in cells:
        raise DriftError(f"unknown reference cell '{reference}'; cells: {', '.join(cells)}")
    if control is not None and control not in cells:
        raise DriftError(f"unknown control cell '{control}'; cells: {', '.join(cells)}")
    if not sweep_has_drift(sweep):
        raise DriftError("no run has snapshots.jsonl or probe.jsonl (train with drift.snapshot_every / "
                         "drift.probe_every)")
    results = analyse_drift(sweep, reference, control, o)
    out = Path(out) if out is not None else root / "drift"
    lines = write_drift(results, out, reference, o, heading="#")
    (out / "drift.md").write_text("\n".join([f"# esper-drift: {root}", ""] + lines[2:]), encoding="utf-8")
    return results, out


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.sweep:
            if args.runs:
                raise DriftError("give either RUN_A RUN_B or --sweep DIR, not both")
            results, out = run_sweep(args.sweep, args.reference, args.control, args.out,
                                     reps=args.reps, seed=args.seed)
            rc = 0
            for r in results:
                print(f"== {r['env']}: reference {r['reference']}, control {r['control']}")
                for v in r["verdicts"]:
                    print(f"  {v['cell']}: {v['verdict']}")
                for d in r["determinism"]:
                    if not d["identical"]:
                        print(d["verdict"], file=sys.stderr)
                        rc = EXIT_NOT_DETERMINISTIC
            print(f"esper-drift: wrote {out / 'drift.md'}")
            return rc
        if len(args.runs) != 2:
            raise DriftError("give two run directories (RUN_A RUN_B) or --sweep DIR")
        p = run_pair(args.runs[0], args.runs[1], args.out, args.return_window)
    except DriftError as e:
        print(f"esper-drift: error: {e}", file=sys.stderr)
        return 2
    print(f"A: {p['a']} ({p['cell_a']}, seed {p['seed_a']})\nB: {p['b']} ({p['cell_b']}, seed {p['seed_b']})")
    print(pair_table(p))
    v = pair_verdict(p)
    if p["determinism_control"] and not p["identical"]:
        print(v, file=sys.stderr)
        return EXIT_NOT_DETERMINISTIC
    print(v)
    return 0


if __name__ == "__main__":
    sys.exit(main())
