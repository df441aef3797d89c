"""Statistics: small pure functions over arrays, one job each (rliable's style).

Definitions follow Agarwal et al. 2021 (rliable): IQM = 25 % trimmed mean; probability of improvement
P(X > Y) = Mann-Whitney U / (n m) (ties count one half); stratified bootstrap over runs (seeds resampled within
each env). Contrasts between two cells resample seeds *jointly* when seeds are paired across cells (the same
bootstrap indices for both cells: the paired bootstrap), each cell on its own otherwise; either way the estimand
is the same IQM difference, only its variance changes.

Intervals are percentile intervals, *expanded* for small samples (Hesterberg 2015, "What teachers should know
about the bootstrap"): the tail probability a is replaced by a' with Phi^-1(1 - a') = sqrt(n / (n - 1))
t_{n-1}^-1(1 - a), which corrects the percentile interval's known narrowness at 10 seeds (tests check the
coverage). The matching p-value is the smallest two-sided level whose expanded interval excludes 0.

``rliable.library`` is not imported: it imports ``arch``, whose 7.x releases do not import under pandas 3.
Tests check IQM and PoI against ``rliable.metrics``. Every function that resamples takes an explicit ``seed``.
"""

from __future__ import annotations

import math
import warnings
import zlib

import numpy as np
import scipy.stats

CONFIDENCE = 0.95


def derive_seed(base: int, *parts) -> int:
    """A stable per-statistic bootstrap seed from the user's seed and what is estimated (one helper for
    report and drift)."""
    return (int(base) * 1_000_003 + zlib.crc32("|".join(map(str, parts)).encode())) % (2**32)


# --------------------------------------------------------------------------- scores and curves


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


def step_averaged_return(curve: np.ndarray, grid: np.ndarray) -> float:
    """Area under the return curve divided by the step span (AUC in return units)."""
    if len(grid) < 2:
        return float(curve[-1]) if len(curve) else float("nan")
    return float(np.trapezoid(curve, grid) / (grid[-1] - grid[0]))


def first_crossing(curve: np.ndarray, grid: np.ndarray, threshold: float) -> float:
    """First grid step at which the curve reaches ``threshold``; NaN if it never does (censored)."""
    hit = np.nonzero(np.asarray(curve) >= threshold)[0]
    return float(grid[hit[0]]) if hit.size else float("nan")


# --------------------------------------------------------------------------- intervals


def expanded_tail(tail: float, n: int) -> float:
    """Hesterberg's small-sample expansion of a percentile-interval tail probability (n >= 2)."""
    if n < 2:
        return float("nan")
    z = math.sqrt(n / (n - 1)) * scipy.stats.t.ppf(1 - tail, n - 1)
    return float(scipy.stats.norm.sf(z))


def percentile_interval(reps, level: float, n: int, expand: bool = True) -> tuple[float, float]:
    """Two-sided ``level`` interval from bootstrap replicates (expanded for n units unless ``expand`` is off)."""
    reps = np.asarray(reps, dtype=np.float64)
    reps = reps[np.isfinite(reps)]
    if reps.size == 0 or n < 2:
        return float("nan"), float("nan")
    tail = (1 - level) / 2
    if expand:
        tail = expanded_tail(tail, n)
    lo, hi = np.quantile(reps, [tail, 1 - tail], method="inverted_cdf")
    return float(lo), float(hi)


def bootstrap_p(reps, n: int) -> float:
    """Two-sided p-value: the smallest level alpha whose expanded percentile interval excludes 0."""
    reps = np.asarray(reps, dtype=np.float64)
    reps = reps[np.isfinite(reps)]
    if reps.size == 0 or n < 2:
        return float("nan")
    t = min(float(np.mean(reps <= 0)), float(np.mean(reps >= 0)))
    if t >= 0.5:
        return 1.0
    if t == 0.0:
        return 0.0  # beyond the replicates' resolution (< 1 / reps); reported as such
    z = scipy.stats.norm.isf(t) / math.sqrt(n / (n - 1))
    return float(min(1.0, 2 * scipy.stats.t.sf(z, n - 1)))


def holm(pvals, alpha: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Holm's step-down procedure. Returns (adjusted p-values, rejected, per-hypothesis two-sided CI level).

    The CI levels are compatible with the decisions: a rejected hypothesis at rank k (p ascending) gets level
    1 - alpha / (m - k + 1); every hypothesis from the first non-rejected rank r on gets 1 - alpha / (m - r + 1).
    So an interval at its level excludes 0 exactly when Holm rejects (for p-values that invert those intervals).
    NaN p-values are not tested (never rejected, level NaN) and do not count in m.
    """
    p = np.asarray(pvals, dtype=np.float64)
    ok = np.isfinite(p)
    adj, rej, lev = np.full(p.shape, np.nan), np.zeros(p.shape, dtype=bool), np.full(p.shape, np.nan)
    idx = np.nonzero(ok)[0]
    m = idx.size
    if m == 0:
        return adj, rej, lev
    order = idx[np.argsort(p[idx], kind="stable")]
    running, stopped_at = 0.0, None
    for k, i in enumerate(order):  # k = 0-based rank
        running = max(running, min(1.0, (m - k) * p[i]))
        adj[i] = running
        if stopped_at is None and p[i] < alpha / (m - k):
            rej[i] = True
            lev[i] = 1 - alpha / (m - k)
        else:
            if stopped_at is None:
                stopped_at = k
            lev[i] = 1 - alpha / (m - stopped_at)
    return adj, rej, lev


def wilson_interval(k: int, n: int, level: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson score interval of a proportion k / n (sensible at 0 / n and n / n)."""
    if n == 0:
        return float("nan"), float("nan")
    z = scipy.stats.norm.isf((1 - level) / 2)
    ph = k / n
    c = (ph + z * z / (2 * n)) / (1 + z * z / n)
    h = z * math.sqrt(ph * (1 - ph) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, c - h), min(1.0, c + h)


# --------------------------------------------------------------------------- bootstrap of cells and contrasts


def resample_strata(strata_a, strata_b, paired: bool, reps: int, seed: int):
    """Stratified bootstrap of two cells. ``strata_a``/``strata_b``: one 1-D array per env (aligned seed by seed
    when ``paired``). Returns pooled resamples (A, B), each (reps, N): seeds resampled within each env, with the
    same indices for both cells when paired."""
    rng = np.random.default_rng(seed)
    outs_a, outs_b = [], []
    for a, b in zip(strata_a, strata_b):
        a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        ia = rng.integers(0, a.size, (reps, a.size))
        ib = ia if paired else rng.integers(0, b.size, (reps, b.size))
        outs_a.append(a[ia])
        outs_b.append(b[ib])
    return np.concatenate(outs_a, axis=1), np.concatenate(outs_b, axis=1)


def iqm_difference(a, b):
    """IQM(a) - IQM(b) along the last axis (the contrast estimand)."""
    return iqm(a) - iqm(b)


def probability_of_improvement(x, y, axis=-1):
    """P(X > Y) + 0.5 P(X = Y) over all pairs of runs (Mann-Whitney U / (n m)), vectorised."""
    x = np.moveaxis(np.asarray(x, dtype=np.float64), axis, -1)
    y = np.moveaxis(np.asarray(y, dtype=np.float64), axis, -1)
    gt = (x[..., :, None] > y[..., None, :]).mean(axis=(-2, -1))
    eq = (x[..., :, None] == y[..., None, :]).mean(axis=(-2, -1))
    return gt + 0.5 * eq


def contrast_bootstrap(strata_a, strata_b, paired: bool, reps: int, seed: int, statistic=iqm_difference) -> dict:
    """Point estimate and bootstrap replicates of statistic(A, B) over pooled (env, seed) scores."""
    a = np.concatenate([np.asarray(x, dtype=np.float64) for x in strata_a])
    b = np.concatenate([np.asarray(x, dtype=np.float64) for x in strata_b])
    point = float(statistic(a[None], b[None])[0]) if a.size and b.size else float("nan")
    n = int(min(a.size, b.size))
    if min([len(x) for x in strata_a] + [len(x) for x in strata_b]) < 2:
        return {"point": point, "reps": np.array([]), "n": n}
    ra, rb = resample_strata(strata_a, strata_b, paired, reps, seed)
    return {"point": point, "reps": np.asarray(statistic(ra, rb), dtype=np.float64), "n": n}


def pairing_correlation(a, b) -> float:
    """Pearson correlation of the two cells' per-seed scores (NaN without spread or with < 3 seeds)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.size < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


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
        return 0.0  # no noise at all: any shift would be detected
    deltas = np.linspace(0.0, 2 * span, 4001)
    srt, n = np.sort(d0), d0.size
    worst = 0.0
    for sign in (1.0, -1.0):
        above = 1.0 - np.searchsorted(srt, c - sign * deltas, side="right") / n
        below = np.searchsorted(srt, -c - sign * deltas, side="left") / n
        ok = np.nonzero(above + below >= power)[0]
        worst = max(worst, float(deltas[ok[0]]) if ok.size else float("inf"))
    return worst


# --------------------------------------------------------------------------- one cell


def _bootstrap(samples, statistic, reps: int, seed: int):
    """scipy.stats.bootstrap, percentile method, seeded; None when a sample has fewer than two values."""
    if any(np.asarray(s).shape[-1] < 2 for s in samples):
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # degenerate (all-equal) samples are legitimate here
        return scipy.stats.bootstrap(
            tuple(samples), statistic, n_resamples=reps, vectorized=True, axis=-1,
            confidence_level=CONFIDENCE, method="percentile", rng=np.random.default_rng(seed))


def interval_estimate(x, statistic, reps: int, seed: int) -> tuple[float, float, float]:
    """(point, ci_low, ci_high) of statistic(x) over runs (95 % percentile interval)."""
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


def curve_band(curves: np.ndarray, reps: int, seed: int, statistic=iqm):
    """Statistic over runs at each grid point with a 95 % bootstrap band (whole runs resampled).
    curves: (runs, points)."""
    curves = np.asarray(curves, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        point = statistic(curves.T, axis=-1)
    res = _bootstrap([curves.T], statistic, reps, seed)
    if res is None:
        nan = np.full_like(point, np.nan)
        return point, nan, nan
    return point, np.asarray(res.confidence_interval.low), np.asarray(res.confidence_interval.high)


def median_band(curves, reps: int, seed: int):
    return curve_band(curves, reps, seed, statistic=_median)


def mean_ci(x, reps: int, seed: int, level: float = CONFIDENCE) -> dict:
    """Mean of per-seed values with its expanded percentile bootstrap interval and replicates."""
    x = np.asarray(x, dtype=np.float64)
    x = x[np.isfinite(x)]
    nan = float("nan")
    out = {"n": int(x.size), "mean": float(x.mean()) if x.size else nan, "ci": (nan, nan), "reps": np.array([])}
    if x.size >= 2:
        rng = np.random.default_rng(seed)
        out["reps"] = x[rng.integers(0, x.size, (reps, x.size))].mean(axis=1)
        out["ci"] = percentile_interval(out["reps"], level, x.size)
    return out


def profile(scores, taus) -> np.ndarray:
    """Performance profile (rliable): fraction of runs with score > tau, for each tau. scores: (..., runs)."""
    s = np.asarray(scores, dtype=np.float64)
    return (s[..., None, :] > np.asarray(taus)[:, None]).mean(axis=-1)


def profile_band(strata, taus, reps: int, seed: int):
    """Performance profile of one cell pooled over envs, with a 95 % stratified-bootstrap band."""
    pooled = np.concatenate([np.asarray(x, dtype=np.float64) for x in strata])
    point = profile(pooled, taus)
    if min(len(x) for x in strata) < 2:
        nan = np.full_like(point, np.nan)
        return point, nan, nan
    ra, _ = resample_strata(strata, strata, True, reps, seed)
    pr = profile(ra, taus)  # (reps, taus)
    lo, hi = np.quantile(pr, [0.025, 0.975], axis=0)
    return point, lo, hi


def difference_band(curves_a, curves_b, paired: bool, reps: int, seed: int, level: float):
    """Pointwise IQM(A) - IQM(B) of two cells' curves (runs, points) with an expanded percentile band at
    ``level`` (seeds resampled jointly when paired; rows aligned by seed then)."""
    a, b = np.asarray(curves_a, dtype=np.float64), np.asarray(curves_b, dtype=np.float64)
    point = iqm(a.T) - iqm(b.T)
    n = min(a.shape[0], b.shape[0])
    if n < 2:
        nan = np.full_like(point, np.nan)
        return point, nan, nan
    rng = np.random.default_rng(seed)
    ia = rng.integers(0, a.shape[0], (reps, a.shape[0]))
    ib = ia if paired else rng.integers(0, b.shape[0], (reps, b.shape[0]))
    d = iqm(np.swapaxes(a[ia], 1, 2)) - iqm(np.swapaxes(b[ib], 1, 2))  # (reps, points)
    tail = expanded_tail((1 - level) / 2, n)
    lo, hi = np.quantile(d, [tail, 1 - tail], axis=0, method="inverted_cdf")
    return point, lo, hi
