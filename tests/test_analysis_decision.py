"""The decision rule end to end on synthetic run directories with planted effects (issue 10): esper-report reads
the rule from the runs, and its verdicts say "different", "equivalent" or "inconclusive" when they should."""

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from synthetic_runs import make_sweep, run_path  # noqa: E402

from esper_exp.analysis import decision as Dc  # noqa: E402
from esper_exp.analysis.report import main, run_report  # noqa: E402
from esper_exp.analysis.rule import DEFAULT_RULE, MIN_SEEDS, Rule  # noqa: E402

DELTA = DEFAULT_RULE["delta"]
SCALE = 500.0 - 22.0  # CartPole anchors: one normalised unit in return units
FAST = {"reps": 2000, "curve_reps": 200, "figures": False}


def _report(sweep, out, **kw):
    run_report(sweep, out, **{**FAST, **kw})
    return json.loads((out / "summary.json").read_text())


def _rows(summary, key="decision"):
    return {r["contrast"]: r for r in summary[key]}


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """10 paired seeds; tanh/fp32 is 2 delta above exact/fp32 on the normalised AUC, everything else is null."""
    root = tmp_path_factory.mktemp("planted")
    make_sweep(root, seeds=range(10), precisions=("fp32", "bf16"), shifts={"tanh/fp32": 2 * DELTA * SCALE},
               total_timesteps=15_000)
    return root, _report(root, root / "report", figures=True)


def test_true_difference_of_two_delta_is_different(planted):
    _, s = planted
    rows = _rows(s)
    r = rows["tanh/fp32 - exact/fp32"]
    assert r["verdict"] == "different"
    assert r["estimate"] == pytest.approx(2 * DELTA, abs=0.02)
    lo, hi = r["ci_holm"]
    assert 0 < lo < 2 * DELTA < hi
    assert r["ci90"][1] > DELTA  # not equivalent: its interval leaves the margin
    # the same effect seen from the other side of the dtype contrast
    assert rows["tanh/bf16 - tanh/fp32"]["verdict"] == "different"
    assert rows["tanh/bf16 - tanh/fp32"]["estimate"] < 0


def test_null_contrasts_with_ten_quiet_seeds_are_equivalent(planted):
    _, s = planted
    rows = _rows(s)
    for c in ("tanh/bf16 - exact/bf16", "exact/bf16 - exact/fp32"):
        assert rows[c]["verdict"] == "equivalent", (c, rows[c]["ci90"])
        lo, hi = rows[c]["ci90"]
        assert -DELTA < lo <= hi < DELTA


def test_holm_family_is_the_scope_contrasts(planted):
    _, s = planted
    rows = s["decision"]
    assert len(rows) == 4 and {r["family_size"] for r in rows} == {4}
    first = min(rows, key=lambda r: r["p"])
    assert first["holm_level"] == pytest.approx(1 - 0.05 / 4)  # the smallest p is tested at alpha / m
    for r in rows:  # every level is one of Holm's 1 - alpha / (m - k)
        assert min(abs(r["holm_level"] - (1 - 0.05 / k)) for k in range(1, 5)) < 1e-12
    for r in rows:  # the Holm interval is at least as wide as the plain 95% interval
        assert r["ci_holm"][0] <= r["ci95"][0] + 1e-12 and r["ci_holm"][1] >= r["ci95"][1] - 1e-12


def test_true_zero_with_enough_seeds_is_equivalent_and_with_three_it_is_not(tmp_path):
    """Noisy runs (a per-run constant of sd 30 return units): 40 seeds pin the contrast inside the margin; the
    first 3 of the same seeds must never be called equivalent."""
    make_sweep(tmp_path / "s40", seeds=range(40), precisions=("fp32",), total_timesteps=12_000, run_effect_sd=30.0)
    r40 = _rows(_report(tmp_path / "s40", tmp_path / "r40"))["tanh/fp32 - exact/fp32"]
    assert r40["verdict"] == "equivalent", r40["ci90"]
    few = {}
    for n in (3, 5):
        for g in ("exact", "tanh"):
            for s in range(n):
                src = run_path(tmp_path / "s40", "cartpole", g, "fp32", s)
                shutil.copytree(src, run_path(tmp_path / f"s{n}", "cartpole", g, "fp32", s))
        few[n] = _rows(_report(tmp_path / f"s{n}", tmp_path / f"r{n}"))["tanh/fp32 - exact/fp32"]
    assert few[3]["verdict"] == "inconclusive"
    # 5 seeds: the point estimate lies inside the margin, but its 90% interval does not: not equivalent
    r5 = few[5]
    assert abs(r5["estimate"]) < DELTA and r5["ci90"][0] < -DELTA
    assert r5["verdict"] == "inconclusive" and "not inside" in r5["why"]
    assert r5["ci90"][1] - r5["ci90"][0] > r40["ci90"][1] - r40["ci90"][0]


def test_three_seeds_are_inconclusive_even_when_their_interval_is_tiny(tmp_path):
    """Without run-level noise three seeds give a narrow bootstrap interval inside the margin; the rule still
    refuses a verdict (a bootstrap of 3 seeds has 10 distinct resamples and cannot estimate its own tails)."""
    make_sweep(tmp_path / "s", seeds=range(3), precisions=("fp32",), total_timesteps=12_000)
    r = _rows(_report(tmp_path / "s", tmp_path / "r"))["tanh/fp32 - exact/fp32"]
    lo, hi = r["ci90"]
    assert -DELTA < lo <= hi < DELTA  # what a rule without the seed minimum would call equivalent
    assert r["verdict"] == "inconclusive" and f"fewer than {MIN_SEEDS}" in r["why"]


def test_paired_contrasts_are_tighter_when_seeds_correlate_and_equal_when_not(tmp_path):
    """A per-seed effect shared by every cell of a seed (sd 80) makes pairing correlation high: the paired
    bootstrap's SE is a fraction of the unpaired one. Without it (correlation ~0) both agree."""
    make_sweep(tmp_path / "c", seeds=range(20), precisions=("fp32", "bf16"), total_timesteps=12_000,
               seed_effect_sd=80.0, run_effect_sd=20.0)
    make_sweep(tmp_path / "u", seeds=range(20), precisions=("fp32", "bf16"), total_timesteps=12_000,
               run_effect_sd=20.0)
    corr = _report(tmp_path / "c", tmp_path / "rc")["decision"]
    unc = _report(tmp_path / "u", tmp_path / "ru")["decision"]
    assert min(r["pairing_corr"] for r in corr) > 0.8
    assert max(r["se"] / r["se_unpaired"] for r in corr) < 0.5
    assert abs(np.mean([r["pairing_corr"] for r in unc])) < 0.3
    ratio = np.mean([r["se"] / r["se_unpaired"] for r in unc])
    assert 0.85 < ratio < 1.15, ratio


def test_unpaired_rule_resamples_cells_independently():
    rule = Rule.from_dict({"paired": False})
    rng = np.random.default_rng(0)
    s = rng.normal(0, 1, 12)
    a, b = s + rng.normal(0, 0.05, 12), s + rng.normal(0, 0.05, 12)
    paired = Dc.estimate([a], [b], True, rule, 2000, 0)
    unpaired = Dc.estimate([a], [b], False, rule, 2000, 0)
    assert paired["se"] < 0.3 * unpaired["se"]
    assert unpaired["se"] == unpaired["se_unpaired"]


def test_rule_comes_from_the_runs_and_an_override_is_labelled(planted, tmp_path):
    root, s = planted
    assert s["rule_source"]["preregistered"] and "stored config" in s["rule_source"]["source"]
    md = (root / "report" / "report.md").read_text()
    assert "NOT pre-registered" not in md
    # a looser margin on the command line: every heading and verdict line says so
    assert main([str(root), "--out", str(tmp_path / "o"), "--reps", "500", "--rule", "delta=0.5"]) == 0
    s2 = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert not s2["rule_source"]["preregistered"] and s2["rule"]["delta"] == 0.5
    md2 = (tmp_path / "o" / "report.md").read_text()
    assert "## Decision (NOT pre-registered)" in md2 and "delta=0.5" in md2
    assert _rows(s2)["tanh/fp32 - exact/fp32"]["verdict"] == "equivalent"  # 0.2 is inside a 0.5 margin


def test_the_endpoint_options_are_part_of_the_stored_rule(tmp_path):
    """analysis.grid / window / last are stored with the rule and applied; --window that repeats the stored value
    changes nothing, another value is an override labelled NOT pre-registered (and changes the endpoint)."""
    rule = {**DEFAULT_RULE, "window": 5, "grid": 40, "contrasts": ["tanh/fp32 - exact/fp32"]}
    make_sweep(tmp_path / "s", seeds=range(6), precisions=("fp32",), total_timesteps=12_000, rule=rule)
    s = _report(tmp_path / "s", tmp_path / "r")
    assert s["rule"]["window"] == 5 and s["rule"]["grid"] == 40 and s["rule_source"]["preregistered"]
    runs = (tmp_path / "r" / "runs.csv").read_text()
    assert main([str(tmp_path / "s"), "--out", str(tmp_path / "same"), "--reps", "500", "--window", "5"]) == 0
    same = json.loads((tmp_path / "same" / "summary.json").read_text())
    assert same["rule_source"]["preregistered"] and (tmp_path / "same" / "runs.csv").read_text() == runs
    assert main([str(tmp_path / "s"), "--out", str(tmp_path / "o"), "--reps", "500", "--window", "20"]) == 0
    other = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert not other["rule_source"]["preregistered"] and other["rule"]["window"] == 20
    assert "window=20" in (tmp_path / "o" / "report.md").read_text()
    assert (tmp_path / "o" / "runs.csv").read_text() != runs  # the endpoint moved with the window


def test_a_bad_endpoint_option_is_one_line(tmp_path, capsys):
    make_sweep(tmp_path / "s", seeds=range(5), precisions=("fp32",), total_timesteps=8_000)
    assert main([str(tmp_path / "s"), "--out", str(tmp_path / "o"), "--grid", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "analysis.grid=1" in err and "integer >= 2" in err
    assert not (tmp_path / "o").exists()


def test_a_stored_rule_changes_the_verdicts(tmp_path):
    """The margin stored in the runs' config is the one applied."""
    rule = {**DEFAULT_RULE, "delta": 0.25, "contrasts": ["tanh/fp32 - exact/fp32"]}
    make_sweep(tmp_path / "s", seeds=range(10), precisions=("fp32",), shifts={"tanh/fp32": 0.15 * SCALE},
               total_timesteps=12_000, rule=rule)
    s = _report(tmp_path / "s", tmp_path / "r")
    (r,) = s["decision"]
    assert s["rule"]["delta"] == 0.25 and s["rule_source"]["preregistered"]
    assert r["verdict"] == "equivalent" and r["different"]  # inside the margin, though detected
    assert "inside the margin is detected" in r["why"]


def test_runs_without_a_stored_rule_get_defaults_labelled_not_preregistered(tmp_path):
    make_sweep(tmp_path / "s", seeds=range(5), precisions=("fp32",), total_timesteps=8_000, rule=None)
    s = _report(tmp_path / "s", tmp_path / "r")
    assert not s["rule_source"]["preregistered"] and "defaults" in s["rule_source"]["source"]
    assert "NOT pre-registered" in (tmp_path / "r" / "report.md").read_text()


def test_bad_rule_override_is_one_line(planted, tmp_path, capsys):
    root, _ = planted
    assert main([str(root), "--out", str(tmp_path / "o"), "--rule", "delta=-1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "analysis.delta" in err[0]
    assert main([str(root), "--out", str(tmp_path / "o"), "--rule", "margin=0.1"]) == 2
    assert "unknown key" in capsys.readouterr().err


def test_contrast_families_resolve_within_precision_and_against_fp32():
    cells = ["exact/fp32", "tanh/fp32", "exact/bf16", "tanh/bf16", "exact/fp16", "exact/fp32/perturb-ulp"]
    got = [c.name for c in Dc.resolve_contrasts(Rule(), cells)]
    assert got == ["tanh/fp32 - exact/fp32", "tanh/bf16 - exact/bf16",  # no tanh/fp16: no contrast
                   "exact/bf16 - exact/fp32", "tanh/bf16 - tanh/fp32", "exact/fp16 - exact/fp32"]
    explicit = Rule.from_dict({"contrasts": ["tanh/bf16 - exact/fp32", "tanh_vs_exact"]})
    assert [c.name for c in Dc.resolve_contrasts(explicit, cells)][0] == "tanh/bf16 - exact/fp32"


def test_report_sections_come_in_the_order_the_issue_asks(planted):
    root, _ = planted
    md = (root / "report" / "report.md").read_text()
    order = ["## Decision rule", "## Decision", "![forest](forest.png)", "## Learning curves",
             "![difference](difference_cartpole.png)", "## Probability of improvement", "## Performance profiles",
             "## Training health", "## Resolution", "## Secondary endpoints", "Time to threshold",
             "Collapse rate", "## Inventory"]
    pos = [md.index(h) for h in order]
    assert pos == sorted(pos), list(zip(order, pos))
    for f in ("forest.png", "difference_cartpole.png", "profiles.png", "curves.png", "health_cartpole.png"):
        assert (root / "report" / f).stat().st_size > 10_000, f


def test_the_rule_is_part_of_the_typed_config_and_checked_before_training():
    """experiment=gelu_amp declares the rule; a bad value is a config error (exit 2 before training), and the
    rule is in the resolved config, hence in run.json and the config hash."""
    from omegaconf import OmegaConf

    from conftest import make_cfg
    from esper_exp.config import ConfigError, validate

    cfg = make_cfg("experiment=gelu_amp", "env=cartpole")
    rule = OmegaConf.to_container(cfg.analysis, resolve=True)
    assert Rule.from_dict(rule) == Rule()  # the declared block equals the documented defaults
    for bad, word in (("analysis.delta=0", "analysis.delta"), ("analysis.contrasts=[tanh_vs_exact,nope]", "nope"),
                      ("analysis.anchors.cartpole.reference=10", "reference=10")):
        with pytest.raises(ConfigError, match=word):
            validate(make_cfg("env=cartpole", bad))
