"""Drift verdicts, per third of training (early / middle / late), never an average over all updates.

**Against the noise floor.** Every cell's run of seed k is paired with the reference run of seed k (distances of
drift_metrics on common states); so is every noise-floor control (``<reference>/perturb-ulp``, ``-persistent``).
Per seed and third, D = the mean distance (default: total variation) over the snapshots in that third (update 0
excluded: it is the initial state). The statistic is the paired difference d_k = D_cell(k) - D_control(k), mean
over seeds with an expanded percentile bootstrap CI; Holm over the family of (cell, third) tests of one control.
**exceeds** the floor when the Holm-corrected CI lies above 0, **below** when under it, else
**indistinguishable**. Distances are bounded and exactly 0 for identical policies, so there is no floor constant
to choose: exact zeros enter the mean as zeros.

**Applied-update probe** (schema-2 probe.jsonl). Per run and third, the median over the probed optimizer steps of
|dtheta_run - dtheta_alt| / |dtheta(mb) - dtheta(mb')|; per cell and third, the median over seeds with a 95 %
bootstrap CI. **negligible** when the CI lies below NEGLIGIBLE_RATIO (0.1), **not negligible** when above it,
else inconclusive; the cell's numerics are negligible when every third is.

Fewer than MIN_SEEDS seeds: no verdict ("too few seeds").
"""

from __future__ import annotations

import warnings

import numpy as np

from . import drift_metrics as M
from . import stats as S
from .load import Sweep, base_cell, parse_cell
from .rule import MIN_SEEDS, NEGLIGIBLE_RATIO

THIRDS = ("early", "middle", "late")
FLOOR_KINDS = ("ulp", "persistent")  # perturbations that are noise floors (a "large" one is a positive control)


def third_index(updates, total: int) -> np.ndarray:
    """0/1/2 for updates in (0, T/3], (T/3, 2T/3], (2T/3, T]; -1 for update 0 (the initial state)."""
    u = np.asarray(updates, dtype=np.float64)
    idx = np.ceil(3 * u / float(total)) - 1
    return np.where(u <= 0, -1, np.clip(idx, 0, 2)).astype(int)


def per_third(arr: np.ndarray, updates, total: int, how=np.nanmean) -> np.ndarray:
    """(seeds, updates) -> (seeds, 3): ``how`` over each third's snapshots (NaN where a third has none)."""
    t = third_index(updates, total)
    out = np.full((arr.shape[0], 3), np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for i in range(3):
            if (t == i).any():
                out[:, i] = how(arr[:, t == i], axis=1)
    return out


def _nanmed(a, axis=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmedian(a, axis=axis)


# --------------------------------------------------------------------------- against the noise floor


def floor_rows(env: str, curves: dict, controls: list[str], total: int, metric: str, reps: int, seed: int,
               alpha: float = 0.05) -> list[dict]:
    """One row per (control, cell, third). curves: {cell: {"seeds", "updates", "per_seed": {metric: (S, U)}}}."""
    rows = []
    for ctrl in controls:
        if ctrl not in curves:
            continue
        C = curves[ctrl]
        fam = []
        for cell, A in curves.items():
            if cell == ctrl or cell in controls:
                continue
            seeds = sorted(set(A["seeds"]) & set(C["seeds"]))
            ups = np.array(sorted(set(A["updates"]) & set(C["updates"])))
            if not seeds or not ups.size:
                continue

            def pick(cur, s, ups=ups):
                return cur["per_seed"][metric][cur["seeds"].index(s)][np.isin(cur["updates"], ups)]

            da = per_third(np.array([pick(A, s) for s in seeds]), ups, total)
            dc = per_third(np.array([pick(C, s) for s in seeds]), ups, total)
            for i, th in enumerate(THIRDS):
                d = da[:, i] - dc[:, i]
                ok = np.isfinite(d)
                est = S.mean_ci(d[ok], reps, S.derive_seed(seed, env, ctrl, cell, th))
                n = int(ok.sum())
                fam.append({"env": env, "control": ctrl, "cell": cell, "third": th, "metric": metric, "n": n,
                            "cell_mean": float(np.nanmean(da[:, i])) if ok.any() else float("nan"),
                            "control_mean": float(np.nanmean(dc[:, i])) if ok.any() else float("nan"),
                            "diff": est["mean"], "lo": est["ci"][0], "hi": est["ci"][1],
                            "p": S.bootstrap_p(est["reps"], n) if n >= MIN_SEEDS else float("nan"),
                            "_reps": est["reps"]})
        _, _, level = S.holm([r["p"] for r in fam], alpha)
        for r, lv in zip(fam, level):
            reps_ = r.pop("_reps")
            r["holm_level"] = float(lv)
            r["lo_holm"], r["hi_holm"] = (S.percentile_interval(reps_, lv, r["n"]) if np.isfinite(lv)
                                          else (float("nan"), float("nan")))
            cm = r["control_mean"]
            r["ratio"] = r["cell_mean"] / cm if cm and np.isfinite(cm) and cm > 0 else float("nan")
            if r["n"] < MIN_SEEDS:
                r["verdict"] = f"too few seeds ({r['n']} < {MIN_SEEDS})"
            elif r["lo_holm"] > 0:
                r["verdict"] = "exceeds"
            elif r["hi_holm"] < 0:
                r["verdict"] = "below"
            else:
                r["verdict"] = "indistinguishable"
        rows += fam
    return rows


def cell_floor_summary(rows: list[dict]) -> list[dict]:
    """One line per (control, cell): the three thirds' verdicts side by side."""
    out = {}
    for r in rows:
        k = (r["control"], r["cell"])
        out.setdefault(k, {"env": r["env"], "control": r["control"], "cell": r["cell"]})[r["third"]] = r["verdict"]
    return list(out.values())


# --------------------------------------------------------------------------- applied-update probe


def probe_rows(env: str, cell: str, ratios_by_seed: dict, total: int, reps: int, seed: int) -> list[dict]:
    """Per (kind, third): median over seeds of each run's median ratio in that third, 95 % CI, status."""
    rows = []
    for kind in ("gelu", "dtype"):
        per_seed = []
        for _, r in sorted(ratios_by_seed.items()):
            v = r[kind]
            if not v.size or np.isnan(v).all():  # e.g. the dtype ratio of an fp32 run
                continue
            t = third_index(r["update"], total)
            per_seed.append([float(_nanmed(v[t == i])) if (t == i).any() else np.nan for i in range(3)])
        if not per_seed:
            continue
        arr = np.array(per_seed)
        for i, th in enumerate(THIRDS):
            x = arr[:, i][~np.isnan(arr[:, i])]
            n = x.size
            row = {"env": env, "cell": cell, "kind": kind, "third": th, "n": n,
                   "median": float(np.median(x)) if n else float("nan"), "lo": float("nan"), "hi": float("nan")}
            if n >= 2:
                rng = np.random.default_rng(S.derive_seed(seed, env, cell, kind, th))
                b = np.median(x[rng.integers(0, n, (reps, n))], axis=1)
                row["lo"], row["hi"] = S.percentile_interval(b, 0.95, n)
            if n < MIN_SEEDS:
                row["status"] = f"too few seeds ({n} < {MIN_SEEDS})"
            elif row["hi"] < NEGLIGIBLE_RATIO:
                row["status"] = "negligible"
            elif row["lo"] > NEGLIGIBLE_RATIO:
                row["status"] = "not negligible"
            else:
                row["status"] = "inconclusive"
            rows.append(row)
    return rows


def probe_cell_verdict(rows: list[dict], kind: str) -> str:
    st = [r["status"] for r in rows if r["kind"] == kind]
    if not st:
        return "—"
    if all(s == "negligible" for s in st):
        return "negligible in every third"
    if any(s == "not negligible" for s in st):
        return "not negligible in " + ", ".join(r["third"] for r in rows if r["kind"] == kind
                                                and r["status"] == "not negligible")
    return "inconclusive"


def legacy_probe_rows(env: str, cell: str, records_by_seed: dict, total: int) -> dict:
    """Descriptive summary of legacy probe records: per key and third, the median over seeds of per-run medians."""
    row = {"env": env, "cell": cell, "n": len(records_by_seed)}
    for key in M.LEGACY_PROBE_KEYS:
        per = []
        for recs in records_by_seed.values():
            u = np.array([r["update"] for r in recs])
            v = np.array([float(r.get(key, np.nan)) if r.get(key) is not None else np.nan for r in recs])
            t = third_index(u, total)
            per.append([_nanmed(v[t == i]) if (t == i).any() else np.nan for i in range(3)])
        if per:
            m = _nanmed(np.array(per, dtype=np.float64), axis=0)
            for i, th in enumerate(THIRDS):
                row[f"{key}_{th}"] = float(m[i])
    return row


# --------------------------------------------------------------------------- one env


def controls_of(cells, reference: str, control: str | None) -> list[str]:
    if control is not None:
        return [control]
    return [c for c in cells if parse_cell(c)["perturb"] in FLOOR_KINDS and base_cell(c) == reference]


def analyse_env(sweep: Sweep, env: str, reference: str, control: str | None, o: dict) -> dict:
    cells = sweep.cells(env)
    controls = controls_of(cells, reference, control)
    done = {c: [r for r in sweep.runs_of(env, c) if M.has_drift_files(r)] for c in cells}
    res = {"env": env, "reference": reference, "controls": controls, "pairs": {}, "curves": {}, "floor": [],
           "probe": [], "probe_curves": {}, "legacy_probe": [], "determinism": [], "skipped": [], "legacy": False,
           "offset0": {}, "total": None}
    totals = [M.total_updates(r) for c in cells for r in done[c]]
    totals = [t for t in totals if t]
    cache: dict = {}
    # determinism controls: a duplicate (same env/cell/seed twice) or a perturb-duplicate cell
    dup_pairs = [(k, d) for d, k in sweep.duplicates if d.env == env and d.status == k.status == "completed"]
    for c in cells:
        if parse_cell(c)["perturb"] == "duplicate":
            base = {r.seed: r for r in done.get(base_cell(c), [])}
            dup_pairs += [(base[r.seed], r) for r in done[c] if r.seed in base]
    for a, b in dup_pairs:
        try:
            p = M.pair_divergence(a, b, cache=cache)
        except M.DriftError as e:
            res["skipped"].append({"cell": a.cell, "seed": a.seed, "why": f"determinism pair: {e}"})
            continue
        p["determinism_control"] = True
        res["determinism"].append({"cell": a.cell, "seed": a.seed, "a": p["a"], "b": p["b"],
                                   "identical": p["identical"], "verdict": M.pair_verdict(p)})
    # applied-update probe (schema 2) and legacy gradient probe
    for c in cells:
        new, old = {}, {}
        for r in done[c]:
            n, l_ = M.read_probe(r.path)
            if n:
                new[r.seed] = M.probe_ratios(n)
            if l_:
                old[r.seed] = l_
        total = max(totals) if totals else None
        if new:
            t = total or int(max(x["update"].max() for x in new.values()))
            res["probe"] += probe_rows(env, c, new, t, o["reps"], o["seed"])
            for kind in ("gelu", "dtype"):
                ups = sorted(set.intersection(*[set(x["update"].tolist()) for x in new.values()]))
                meds = np.array([[_nanmed(x[kind][x["update"] == u]) for u in ups] for x in new.values()])
                if meds.size and np.isfinite(meds).any():
                    res["probe_curves"][(c, kind)] = {"updates": np.array(ups), "median": _nanmed(meds, 0),
                                                      "q25": np.nanpercentile(meds, 25, axis=0),
                                                      "q75": np.nanpercentile(meds, 75, axis=0)}
        if old:
            t = total or max(r["update"] for v in old.values() for r in v)
            res["legacy_probe"].append(legacy_probe_rows(env, c, old, t))
    # divergence from the reference run of the same seed
    ref = {r.seed: r for r in done.get(reference, []) if (r.path / "snapshots.jsonl").exists()}
    if not ref:
        return res
    for c in cells:
        if c == reference or parse_cell(c)["perturb"] == "duplicate":
            continue
        pairs = {}
        for r in done[c]:
            if not (r.path / "snapshots.jsonl").exists():
                continue
            if r.seed not in ref:
                res["skipped"].append({"cell": c, "seed": r.seed, "why": "no reference run of this seed"})
                continue
            try:
                pairs[r.seed] = M.pair_divergence(r, ref[r.seed], cache=cache,
                                                  prefer_source=f"{reference}/seed={r.seed}")
            except M.DriftError as e:
                res["skipped"].append({"cell": c, "seed": r.seed, "why": str(e)})
        if not pairs:
            continue
        res["pairs"][c] = pairs
        res["legacy"] |= any(p["legacy"] for p in pairs.values())
        common = sorted(set.intersection(*[{row["update"] for row in p["rows"]} for p in pairs.values()]))
        seeds = sorted(pairs)
        cur = {"updates": np.asarray(common, dtype=float), "seeds": seeds, "n": len(seeds), "per_seed": {}}
        step_of = {row["update"]: row["global_step"] for row in pairs[seeds[0]]["rows"]}
        cur["steps"] = np.asarray([step_of[u] for u in common], dtype=float)
        for m in M.METRICS:
            arr = np.array([[next(row[m] for row in pairs[s]["rows"] if row["update"] == u) for u in common]
                            for s in seeds], dtype=np.float64)
            cur["per_seed"][m] = arr
            if np.isfinite(arr).any():
                med, lo, hi = S.median_band(arr, min(o["reps"], 1000), S.derive_seed(o["seed"], env, c, m, "band"))
                cur[m] = {"median": med, "lo": lo, "hi": hi}
            else:
                cur[m] = {"median": arr[0] * np.nan, "lo": arr[0] * np.nan, "hi": arr[0] * np.nan}
        if 0 in common:  # the distance at identical parameters: evaluation rounding (legacy snapshots only)
            res["offset0"][c] = float(_nanmed(cur["per_seed"]["tv"][:, common.index(0)]))
        res["curves"][c] = cur
    total = max(totals) if totals else int(max(max(cur["updates"]) for cur in res["curves"].values()))
    res["total"] = total
    res["floor"] = floor_rows(env, res["curves"], controls, total, o.get("metric", "tv"), o["reps"], o["seed"])
    res["floor_summary"] = cell_floor_summary(res["floor"])
    return res
