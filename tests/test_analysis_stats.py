"""The report's statistics: definitions match rliable, intervals are calibrated, shifts are found."""

import numpy as np
import pytest
from rliable import metrics as rl_metrics

from esper_exp.analysis import stats as S


def test_iqm_and_probability_of_improvement_match_rliable():
    rng = np.random.default_rng(0)
    for n, m in ((10, 10), (7, 12), (5, 5)):
        x = rng.normal(size=n).round(1)  # rounding makes ties, which PoI counts as 1/2
        y = rng.normal(size=m).round(1)
        assert S.iqm(x) == pytest.approx(rl_metrics.aggregate_iqm(x[:, None]))
        assert S.probability_of_improvement(x, y) == pytest.approx(
            rl_metrics.probability_of_improvement(x[:, None], y[:, None]))
    # vectorised over a leading axis, as the bootstrap calls it
    xs, ys = rng.normal(size=(4, 6)), rng.normal(size=(4, 9))
    got = S.probability_of_improvement(xs, ys)
    want = [rl_metrics.probability_of_improvement(a[:, None], b[:, None]) for a, b in zip(xs, ys)]
    np.testing.assert_allclose(got, want)


def test_final_return_is_mean_of_last_100_episodes():
    r = np.arange(250, dtype=float)
    assert S.final_return(r) == pytest.approx(np.mean(np.arange(150, 250)))
    assert S.final_return(r[:30]) == pytest.approx(np.mean(np.arange(30)))  # fewer: all of them
    assert np.isnan(S.final_return(np.array([])))


def test_curve_on_grid_hand_computed():
    steps = np.array([10, 20, 30, 40])
    rets = np.array([1.0, 3.0, 5.0, 7.0])
    grid = np.array([5, 10, 25, 40, 100])
    got = S.curve_on_grid(steps, rets, grid, window=2)
    # before the first episode: NaN; at 10: [1]; at 25: [1,3]; at 40: [5,7]; after: [5,7]
    np.testing.assert_allclose(got, [np.nan, 1.0, 2.0, 6.0, 6.0])


def test_normalised_auc_is_step_averaged_return():
    grid = np.linspace(0, 100, 11)
    assert S.normalised_auc(np.full(11, 7.0), grid) == pytest.approx(7.0)
    assert S.normalised_auc(grid / 100, grid) == pytest.approx(0.5)


def test_planted_shift_is_detected_with_the_right_sign():
    rng = np.random.default_rng(1)
    ref = rng.normal(100, 10, 10)
    for shift in (-25.0, +25.0):
        x = rng.normal(100 + shift, 10, 10)
        c = S.compare(x, ref, reps=2000, seed=0)
        assert c["detected"]
        lo, hi = c["iqm_diff_ci"]
        assert np.sign(c["iqm_diff"]) == np.sign(shift) and np.sign(lo) == np.sign(hi) == np.sign(shift)
        # PoI CI lies on the same side of 1/2
        plo, phi = c["poi_ci"]
        assert (plo > 0.5) if shift > 0 else (phi < 0.5)
        assert ("higher" if shift > 0 else "lower") in S.verdict(c, "final return")


def test_null_effect_ci_contains_zero_at_about_the_nominal_rate():
    """Calibration: with no effect, the 95% interval of the IQM difference must contain zero
    in most datasets (percentile bootstrap is a little liberal at n=10; allow up to 12%)."""
    rng = np.random.default_rng(2)
    n_sets, misses = 200, 0
    for i in range(n_sets):
        x, y = rng.normal(0, 1, 10), rng.normal(0, 1, 10)
        c = S.compare(x, y, reps=500, seed=i)
        lo, hi = c["iqm_diff_ci"]
        misses += not (lo <= 0 <= hi)
    assert misses / n_sets <= 0.12
    # and the verdict then states the resolution, never a bare "no difference"
    x, y = rng.normal(0, 1, 10), rng.normal(0, 1, 10)
    c = S.compare(x, y, reps=1000, seed=0)
    if not c["detected"]:
        v = S.verdict(c, "final return")
        assert "no detectable difference" in v and f"{c['mde']:.3g}" in v and "80% power" in v


def test_minimum_detectable_effect_has_the_stated_power():
    """Simulate: a true shift equal to the reported MDE is detected by compare() about 80% of the
    time, and the MDE shrinks with more seeds."""
    rng = np.random.default_rng(3)
    n = 10
    mdes = [S.compare(rng.normal(0, 1, n), rng.normal(0, 1, n), reps=1000, seed=i)["mde"]
            for i in range(20)]
    mde = float(np.median(mdes))
    hits = sum(S.compare(rng.normal(mde, 1, n), rng.normal(0, 1, n), reps=500, seed=i)["detected"]
               for i in range(150))
    assert 0.6 <= hits / 150 <= 0.95, (mde, hits)
    big = np.median([S.compare(rng.normal(0, 1, 40), rng.normal(0, 1, 40), reps=1000, seed=i)["mde"]
                     for i in range(10)])
    assert big < 0.7 * mde


def test_bootstrap_is_reproducible_given_the_seed():
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=10), rng.normal(size=10)
    assert S.compare(x, y, reps=300, seed=7) == S.compare(x, y, reps=300, seed=7)
    assert S.compare(x, y, reps=300, seed=7)["iqm_diff_ci"] != S.compare(x, y, reps=300, seed=8)["iqm_diff_ci"]
    a = S.curve_band(rng.normal(size=(8, 20)), reps=300, seed=1)
    b = S.curve_band(rng.normal(size=(8, 20)), reps=300, seed=1)
    assert not np.array_equal(a[1], b[1])  # different data, different band
    c1 = S.aggregate_estimates(x, reps=300, seed=3)
    assert c1 == S.aggregate_estimates(x, reps=300, seed=3)


def test_too_few_runs_give_nan_intervals_and_a_plain_verdict():
    c = S.compare(np.array([1.0]), np.array([0.0, 1.0, 2.0]), reps=100, seed=0)
    assert np.isnan(c["iqm_diff_ci"][0]) and not c["detected"]
    assert "not enough runs" in S.verdict(c, "final return")


def test_curve_band_brackets_the_iqm():
    rng = np.random.default_rng(5)
    curves = rng.normal(size=(10, 30)).cumsum(axis=1)
    m, lo, hi = S.curve_band(curves, reps=500, seed=0)
    assert m.shape == lo.shape == hi.shape == (30,)
    assert np.all(lo <= m + 1e-12) and np.all(m <= hi + 1e-12) and np.any(hi > lo)
