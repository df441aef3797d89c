"""Statistics for the report: small pure functions over arrays, one job each (rliable's style).

Definitions follow Agarwal et al. 2021 (rliable): IQM = 25 % trimmed mean; probability of improvement
P(X > Y) = Mann-Whitney U / (n m) (ties count one half); 95 % percentile confidence intervals from a
stratified bootstrap over runs. With one task per comparison the stratified bootstrap is plain
resampling of runs within each cell, each cell independently, which is what ``scipy.stats.bootstrap``
does with several samples; it is used here (seeded, vectorised) instead of ``rliable.library``
because that module imports ``arch``, whose 7.x releases do not import under pandas 3. Tests check
these functions against ``rliable.metrics`` (which has no ``arch`` dependency).

Every function that resamples takes an explicit ``seed``: same inputs and seed, same numbers.
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.stats

CONFIDENCE = 0.95


def iqm(x, axis=-1):
    """Interquartile mean (25 % trimmed mean), rliable's aggregate_iqm along one axis."""
    return scipy.stats.trim_mean(np.asarray(x, dtype=np.float64), proportiontocut=0.25, axis=axis)


def final_return(returns: np.ndarray, last: int = 100) -> float:
    """CleanRL's protocol: mean return of the last ``last`` training episodes (all if fewer)."""
    returns = np.asarray(returns, dtype=np.float64)
    if returns.size == 0:
        return float("nan")
    return float(returns[-last:].mean())


def common_grid(starts, ends, n_points: int) -> np.ndarray:
    """Step grid every run covers: from the latest first episode to the earliest run end."""
    lo, hi = float(np.max(starts)), float(np.min(ends))
    if not hi > lo:
        return np.array([lo])
    return np.linspace(lo, hi, n_points)


def curve_on_grid(steps: np.ndarray, returns: np.ndarray, grid: np.ndarray, window: int) -> np.ndarray:
    """Return curve of one run on ``grid``: at step g, the mean of the last ``window`` episodes that
    finished at or before g (NaN before the first episode). ``steps`` must be sorted."""
    steps = np.asarray(steps)
    returns = np.asarray(returns, dtype=np.float64)
    csum = np.concatenate([[0.0], np.cumsum(returns)])
    n = np.searchsorted(steps, grid, side="right")
    lo = np.maximum(n - window, 0)
    cnt = n - lo
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (csum[n] - csum[lo]) / cnt
    out[cnt == 0] = np.nan
    return out


def normalised_auc(curve: np.ndarray, grid: np.ndarray) -> float:
    """Area under the return curve divided by the step span: the step-averaged return over
    training, in return units, so cells trained for the same grid compare directly."""
    if len(grid) < 2:
        return float(curve[-1]) if len(curve) else float("nan")
    return float(np.trapezoid(curve, grid) / (grid[-1] - grid[0]))


def _bootstrap(samples, statistic, reps: int, seed: int, paired: bool = False):
    """scipy.stats.bootstrap, percentile method, seeded. Returns the result or None when a sample
    has fewer than two values (no interval can be had)."""
    if any(np.asarray(s).shape[-1] < 2 for s in samples):
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # degenerate (all-equal) samples are legitimate here
        return scipy.stats.bootstrap(
            tuple(samples), statistic, n_resamples=reps, vectorized=True, paired=paired, axis=-1,
            confidence_level=CONFIDENCE, method="percentile", rng=np.random.default_rng(seed))


def interval_estimate(x, statistic, reps: int, seed: int) -> tuple[float, float, float]:
    """(point, ci_low, ci_high) of statistic(x) over runs."""
    x = np.asarray(x, dtype=np.float64)
    point = float(statistic(x, axis=-1)) if x.size else float("nan")
    res = _bootstrap([x], statistic, reps, seed)
    if res is None:
        return point, float("nan"), float("nan")
    return point, float(res.confidence_interval.low), float(res.confidence_interval.high)


def _mean(x, axis=-1):
    return np.mean(x, axis=axis)


def _median(x, axis=-1):
    return np.median(x, axis=axis)


AGGREGATES = {"iqm": iqm, "mean": _mean, "median": _median}


def aggregate_estimates(x, reps: int, seed: int) -> dict[str, tuple[float, float, float]]:
    """IQM, mean and median of per-run scores, each with a 95 % bootstrap CI."""
    return {name: interval_estimate(x, f, reps, seed) for name, f in AGGREGATES.items()}


def curve_band(curves: np.ndarray, reps: int, seed: int):
    """IQM over runs at each grid point with a 95 % bootstrap band. curves: (runs, points)."""
    curves = np.asarray(curves, dtype=np.float64)
    point = iqm(curves, axis=0)
    res = _bootstrap([curves.T], iqm, reps, seed)  # resample whole runs
    if res is None:
        nan = np.full_like(point, np.nan)
        return point, nan, nan
    return point, np.asarray(res.confidence_interval.low), np.asarray(res.confidence_interval.high)


def probability_of_improvement(x, y, axis=-1):
    """P(X > Y) + 0.5 P(X = Y) over all pairs of runs (Mann-Whitney U / (n m)), vectorised."""
    x = np.moveaxis(np.asarray(x, dtype=np.float64), axis, -1)
    y = np.moveaxis(np.asarray(y, dtype=np.float64), axis, -1)
    gt = (x[..., :, None] > y[..., None, :]).mean(axis=(-2, -1))
    eq = (x[..., :, None] == y[..., None, :]).mean(axis=(-2, -1))
    return gt + 0.5 * eq


def _iqm_diff(x, y, axis=-1):
    return iqm(x, axis=axis) - iqm(y, axis=axis)


def minimum_detectable_effect(null_diffs: np.ndarray, power: float = 0.8,
                              alpha: float = 1 - CONFIDENCE) -> float:
    """Smallest shift of the IQM difference that a two-sided level-``alpha`` test would detect
    with probability ``power``, by bootstrap power estimate.

    ``null_diffs`` are bootstrap replicates of the difference centred on the observed one, i.e.
    draws of the estimator's noise. The test rejects when |difference| exceeds the (1-alpha)
    quantile c of |noise|. IQM is shift-equivariant, so under a true shift d the estimate is
    noise + d and the power is P(|noise + d| > c). Returns the smallest d >= 0 reaching ``power``
    in both directions (the larger of the two).
    """
    d0 = np.asarray(null_diffs, dtype=np.float64)
    d0 = d0[np.isfinite(d0)]
    if d0.size == 0:
        return float("nan")
    c = float(np.quantile(np.abs(d0), 1 - alpha))
    span = c + float(np.max(np.abs(d0)))
    if span == 0.0:
        return 0.0  # no noise at all: any shift would be detected (see the report's caveat)
    deltas = np.linspace(0.0, 2 * span, 4001)
    srt, n = np.sort(d0), d0.size
    worst = 0.0
    for sign in (1.0, -1.0):
        # P(|noise + sign*d| > c) = P(noise > c - sign*d) + P(noise < -c - sign*d)
        above = 1.0 - np.searchsorted(srt, c - sign * deltas, side="right") / n
        below = np.searchsorted(srt, -c - sign * deltas, side="left") / n
        pw = above + below
        ok = np.nonzero(pw >= power)[0]
        worst = max(worst, float(deltas[ok[0]]) if ok.size else float("inf"))
    return worst


def compare(x, ref, reps: int, seed: int, power: float = 0.8, n_comparisons: int = 1) -> dict:
    """Variant scores ``x`` against reference scores ``ref`` (independent resampling of each cell).

    Returns poi (P(variant > reference)) and the IQM difference (variant - reference), each with a
    95 % CI, the minimum detectable IQM shift at ``power``, and whether the CI excludes zero.
    ``iqm_diff_ci_adj`` is the Bonferroni-widened interval (level 1 - 0.05 / n_comparisons) from the
    same bootstrap replicates, for judging several variant cells against one reference at once.
    """
    x = np.asarray(x, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    out = {"n": int(x.size), "n_ref": int(ref.size)}
    out["poi"] = float(probability_of_improvement(x, ref)) if x.size and ref.size else float("nan")
    out["iqm_diff"] = float(_iqm_diff(x, ref)) if x.size and ref.size else float("nan")
    res_p = _bootstrap([x, ref], probability_of_improvement, reps, seed)
    res_d = _bootstrap([x, ref], _iqm_diff, reps, seed + 1)
    nan = float("nan")
    out["poi_ci"] = (nan, nan) if res_p is None else (float(res_p.confidence_interval.low),
                                                      float(res_p.confidence_interval.high))
    if res_d is None:
        out["iqm_diff_ci"] = out["iqm_diff_ci_adj"] = (nan, nan)
        out["mde"] = nan
    else:
        out["iqm_diff_ci"] = (float(res_d.confidence_interval.low), float(res_d.confidence_interval.high))
        a = (1 - CONFIDENCE) / max(int(n_comparisons), 1)
        q = np.quantile(res_d.bootstrap_distribution, [a / 2, 1 - a / 2])
        out["iqm_diff_ci_adj"] = (float(q[0]), float(q[1]))
        out["mde"] = minimum_detectable_effect(res_d.bootstrap_distribution - out["iqm_diff"], power)
    out["n_comparisons"] = int(n_comparisons)
    lo, hi = out["iqm_diff_ci"]
    out["detected"] = bool(np.isfinite(lo) and (lo > 0 or hi < 0))
    lo_a, hi_a = out["iqm_diff_ci_adj"]
    out["detected_adj"] = bool(np.isfinite(lo_a) and (lo_a > 0 or hi_a < 0))
    out["zero_spread"] = bool(x.size and ref.size and np.ptp(x) == 0 and np.ptp(ref) == 0)
    return out


def paired_differences(x_by_seed: dict, ref_by_seed: dict) -> tuple[list, np.ndarray]:
    """Seeds present in both, and variant - reference per seed (seeds paired across cells)."""
    seeds = sorted(set(x_by_seed) & set(ref_by_seed))
    return seeds, np.array([x_by_seed[s] - ref_by_seed[s] for s in seeds], dtype=np.float64)


def verdict(cmp: dict, metric: str, units: str = "") -> str:
    """Plain-language verdict for one comparison; never says 'no difference' without the MDE."""
    if not np.isfinite(cmp.get("iqm_diff", np.nan)) or cmp["n"] < 2 or cmp["n_ref"] < 2:
        return f"not enough runs to compare {metric} (variant {cmp['n']}, reference {cmp['n_ref']})"
    lo, hi = cmp["iqm_diff_ci"]
    d = cmp["iqm_diff"]
    if cmp["detected"]:
        word = "higher" if d > 0 else "lower"
        s = (f"{metric} {word} than the reference: IQM difference {d:+.4g}{units} "
             f"(95% CI {lo:+.4g} to {hi:+.4g})")
        k = cmp.get("n_comparisons", 1)
        if k > 1 and not cmp.get("detected_adj", True):
            s += (f", but not after a Bonferroni correction for the {k} cells compared with the "
                  f"reference: tentative")
    else:
        s = (f"no detectable difference in {metric} (IQM difference {d:+.4g}{units}, 95% CI "
             f"{lo:+.4g} to {hi:+.4g}); these seeds could have detected a shift of "
             f"{cmp['mde']:.3g}{units} or more (80% power)")
        if cmp.get("zero_spread"):
            s += " — but every run in both cells scored the same, so this resolution reflects the " \
                 "sample, not measured noise"
    if min(cmp["n"], cmp["n_ref"]) < 10:
        s += f"; only {min(cmp['n'], cmp['n_ref'])} seeds (the design asks for at least 10 for a claim)"
    return s


def median_band(curves, reps: int, seed: int):
    """Median over runs at each point with a 95 % bootstrap CI of that median (whole runs
    resampled). curves: (runs, points); NaN band with fewer than two runs."""
    curves = np.asarray(curves, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        point = np.median(curves, axis=0)
    res = _bootstrap([curves.T], _median, reps, seed)
    if res is None:
        nan = np.full_like(point, np.nan)
        return point, nan, nan
    return point, np.asarray(res.confidence_interval.low), np.asarray(res.confidence_interval.high)


def mean_ci(x, reps: int, seed: int, n_comparisons: int = 1) -> dict:
    """Mean of per-seed values with its 95 % percentile bootstrap CI and the Bonferroni-widened
    interval (level 1 - 0.05 / n_comparisons) from the same replicates."""
    x = np.asarray(x, dtype=np.float64)
    x = x[np.isfinite(x)]
    nan = float("nan")
    out = {"n": int(x.size), "mean": float(x.mean()) if x.size else nan, "ci": (nan, nan),
           "ci_adj": (nan, nan), "n_comparisons": int(n_comparisons)}
    res = _bootstrap([x], _mean, reps, seed)
    if res is not None:
        out["ci"] = (float(res.confidence_interval.low), float(res.confidence_interval.high))
        a = (1 - CONFIDENCE) / max(int(n_comparisons), 1)
        q = np.nanquantile(res.bootstrap_distribution, [a / 2, 1 - a / 2])
        out["ci_adj"] = (float(q[0]), float(q[1]))
    return out
