"""The statistics: definitions match rliable, intervals are calibrated, Holm is Holm, the MDE has its power."""

import numpy as np
import pytest
from rliable import metrics as rl_metrics

from esper_exp.analysis import decision as Dc
from esper_exp.analysis import stats as S
from esper_exp.analysis.rule import Rule


def test_iqm_and_probability_of_improvement_match_rliable():
    rng = np.random.default_rng(0)
    for n, m in ((10, 10), (7, 12), (5, 5)):
        x = rng.normal(size=n).round(1)  # rounding makes ties, which PoI counts as 1/2
        y = rng.normal(size=m).round(1)
        assert S.iqm(x) == pytest.approx(rl_metrics.aggregate_iqm(x[:, None]))
        assert S.probability_of_improvement(x, y) == pytest.approx(
            rl_metrics.probability_of_improvement(x[:, None], y[:, None]))
    xs, ys = rng.normal(size=(4, 6)), rng.normal(size=(4, 9))  # vectorised over a leading axis
    want = [rl_metrics.probability_of_improvement(a[:, None], b[:, None]) for a, b in zip(xs, ys)]
    np.testing.assert_allclose(S.probability_of_improvement(xs, ys), want)


def test_final_return_curve_and_auc_hand_computed():
    r = np.arange(250, dtype=float)
    assert S.final_return(r) == pytest.approx(np.mean(np.arange(150, 250)))
    assert S.final_return(r[:30]) == pytest.approx(np.mean(np.arange(30)))
    assert np.isnan(S.final_return(np.array([])))
    got = S.curve_on_grid(np.array([10, 20, 30, 40]), np.array([1.0, 3.0, 5.0, 7.0]),
                          np.array([5, 10, 25, 40, 100]), window=2)
    np.testing.assert_allclose(got, [np.nan, 1.0, 2.0, 6.0, 6.0])
    grid = np.linspace(0, 100, 11)
    assert S.step_averaged_return(np.full(11, 7.0), grid) == pytest.approx(7.0)
    assert S.step_averaged_return(grid / 100, grid) == pytest.approx(0.5)
    assert S.first_crossing(grid / 100, grid, 0.45) == 50.0 and np.isnan(S.first_crossing(grid / 100, grid, 2))


def test_normalisation_uses_the_anchors():
    rule = Rule()
    assert rule.normalise("cartpole", 500.0) == 1.0 and rule.normalise("cartpole", 22.0) == 0.0
    assert rule.normalise("halfcheetah", 1442.0) == pytest.approx(1.0)


def test_holm_hand_computed_and_intervals_agree_with_decisions():
    adj, rej, lev = S.holm([0.01, 0.04, 0.03, 0.5], 0.05)
    np.testing.assert_allclose(adj, [0.04, 0.09, 0.09, 0.5])
    assert rej.tolist() == [True, False, False, False]
    np.testing.assert_allclose(lev, [1 - 0.05 / 4, 1 - 0.05 / 3, 1 - 0.05 / 3, 1 - 0.05 / 3])
    adj, rej, _ = S.holm([0.001, 0.012, 0.02], 0.05)  # 0.003, 0.024, 0.02 -> all rejected step by step
    assert rej.all() and adj[2] == pytest.approx(0.024)
    # for replicates of several contrasts: the interval at its Holm level excludes 0 iff Holm rejects
    rng = np.random.default_rng(1)
    for trial in range(30):
        reps = [rng.normal(mu, 1.0, 4000) for mu in rng.uniform(0, 4, 5)]
        p = [S.bootstrap_p(r, 10) for r in reps]
        _, rej, lev = S.holm(p, 0.05)
        for r, rj, lv in zip(reps, rej, lev):
            lo, hi = S.percentile_interval(r, lv, 10)
            assert (lo > 0 or hi < 0) == rj, (trial, lo, hi, rj)


def test_bootstrap_p_inverts_the_expanded_interval():
    rng = np.random.default_rng(2)
    for mu in (0.5, 1.5, 2.5):
        r = rng.normal(mu, 1.0, 20000)
        p = S.bootstrap_p(r, 12)
        # a level just above 1 - p still contains 0; just below it, the interval excludes 0
        assert S.percentile_interval(r, 1 - p * 0.95, 12)[0] < 0 < S.percentile_interval(r, 1 - p * 1.05, 12)[0]
    assert S.bootstrap_p(np.zeros(100), 10) == 1.0  # no spread: nothing detected


def test_expanded_interval_is_calibrated_at_ten_seeds():
    """Null paired contrasts of 10 seeds: the 90% interval misses 0 about 10% of the time or less (it is the
    TOST interval; the plain percentile interval is known to be narrow at this n), and not absurdly rarely."""
    rng = np.random.default_rng(3)
    miss, n_sets = 0, 400
    for i in range(n_sets):
        s = rng.normal(0, 1, 10)
        a, b = s + rng.normal(0, 1, 10), s + rng.normal(0, 1, 10)
        reps = S.contrast_bootstrap([a], [b], True, 1000, i)["reps"]
        lo, hi = S.percentile_interval(reps, 0.90, 10)
        miss += not (lo <= 0 <= hi)
    assert 0.02 <= miss / n_sets <= 0.12, miss / n_sets


def test_minimum_detectable_effect_has_the_stated_power():
    """A true shift equal to the reported MDE is called different about 80% of the time (one contrast)."""
    rule, rng, n = Rule(), np.random.default_rng(4), 10
    mdes = [Dc.estimate([rng.normal(0, 1, n)], [rng.normal(0, 1, n)], False, rule, 1000, i)["mde"]
            for i in range(15)]
    mde = float(np.median(mdes))
    hits = sum(Dc.decide([Dc.estimate([rng.normal(mde, 1, n)], [rng.normal(0, 1, n)], False, rule, 400, i)],
                         rule)[0]["different"] for i in range(120))
    assert 0.6 <= hits / 120 <= 0.95, (mde, hits)


def test_wilson_interval():
    lo, hi = S.wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    lo, hi = S.wilson_interval(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)


def test_performance_profile_definition():
    taus = np.array([0.0, 0.5, 1.0])
    np.testing.assert_allclose(S.profile(np.array([0.2, 0.6, 0.9, 1.2]), taus), [1.0, 0.75, 0.25])
    p, lo, hi = S.profile_band([np.array([0.2, 0.6, 0.9, 1.2])], taus, 500, 0)
    assert np.all(lo <= p + 1e-12) and np.all(p <= hi + 1e-12)


def test_stratified_resampling_stays_within_env_and_pairs_seeds():
    a = [np.array([1.0, 2.0, 3.0]), np.array([100.0, 200.0])]
    b = [np.array([10.0, 20.0, 30.0]), np.array([1000.0, 2000.0])]
    ra, rb = S.resample_strata(a, b, True, 50, 0)
    assert ra.shape == (50, 5)
    assert set(ra[:, :3].ravel()) <= {1.0, 2.0, 3.0} and set(ra[:, 3:].ravel()) <= {100.0, 200.0}
    np.testing.assert_array_equal(rb[:, :3], ra[:, :3] * 10)  # same seed drawn in both cells
    np.testing.assert_array_equal(rb[:, 3:], ra[:, 3:] * 10)


def test_bootstrap_is_reproducible_given_the_seed():
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=10), rng.normal(size=10)
    r1 = S.contrast_bootstrap([a], [b], True, 300, 7)["reps"]
    np.testing.assert_array_equal(r1, S.contrast_bootstrap([a], [b], True, 300, 7)["reps"])
    assert not np.array_equal(r1, S.contrast_bootstrap([a], [b], True, 300, 8)["reps"])
    assert S.derive_seed(0, "x", 1) == S.derive_seed(0, "x", 1) != S.derive_seed(0, "x", 2)


def test_too_few_runs_give_nan_intervals():
    r = Dc.estimate([np.array([1.0])], [np.array([0.0])], True, Rule(), 100, 0)
    assert np.isnan(r["ci90"][0]) and Dc.decide([r], Rule())[0]["verdict"] == "inconclusive"


def test_curve_band_brackets_the_iqm():
    rng = np.random.default_rng(6)
    curves = rng.normal(size=(10, 30)).cumsum(axis=1)
    m, lo, hi = S.curve_band(curves, reps=500, seed=0)
    assert m.shape == lo.shape == hi.shape == (30,)
    assert np.all(lo <= m + 1e-12) and np.all(m <= hi + 1e-12) and np.any(hi > lo)
    d, dlo, dhi = S.difference_band(curves, curves + 1.0, True, 300, 0, 0.9)
    np.testing.assert_allclose(d, -1.0)
    np.testing.assert_allclose(dlo, -1.0)  # paired: a constant shift has no sampling noise
    np.testing.assert_allclose(dhi, -1.0)
