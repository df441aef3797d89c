"""esper-drift and the report's drift section: on real tiny CartPole runs (the trainer in-process) and
on synthetic snapshot files with a planted divergence (tests/synthetic_runs.py)."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from conftest import TINY_CARTPOLE, make_cfg  # noqa: E402
from synthetic_runs import make_sweep, run_path, write_drift_files, write_run  # noqa: E402

from esper_exp.analysis import drift as D  # noqa: E402
from esper_exp.analysis.load import load_run, load_sweep, parse_cell  # noqa: E402
from esper_exp.analysis.report import run_report  # noqa: E402

DRIFT = ("drift.snapshot_every=2", "drift.probe_every=2")


# --------------------------------------------------------------------------- real tiny runs


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """A tiny sweep: the reference twice (a re-run: determinism control), the butterfly control and a
    planted large perturbation, all seed 0, laid out the way Hydra's multirun does."""
    from esper_exp.train import run

    root = tmp_path_factory.mktemp("real")
    dirs = {}
    for name, extra in (("ref", ()), ("ulp", ("drift.perturb=ulp",)), ("large", ("drift.perturb=large",))):
        d = root / f"cartpole-exact-fp32-{name}" / "seed=0"
        assert run(make_cfg(*TINY_CARTPOLE, *DRIFT, "seed=0", *extra), d) == "completed"
        dirs[name] = d
    d = root / "rerun" / "cartpole-exact-fp32" / "seed=0"
    assert run(make_cfg(*TINY_CARTPOLE, *DRIFT, "seed=0"), d) == "completed"
    dirs["rerun"] = d
    return root, dirs


def test_reference_against_itself_is_exactly_zero_and_reported_identical(real, capsys):
    _, dirs = real
    p = D.run_pair(dirs["rerun"], dirs["ref"])
    assert p["determinism_control"] and p["identical"]
    assert len(p["rows"]) >= 5
    for row in p["rows"]:
        assert row["identical"]
        assert row["kl"] == row["param_rel"] == row["value_mean_abs"] == row["value_rms"] == 0.0
        assert row["return_diff"] == 0.0 or np.isnan(row["return_diff"])
    assert D.main([str(dirs["rerun"]), str(dirs["ref"])]) == 0
    out = capsys.readouterr().out
    assert "IDENTICAL" in out and "determinism control passed" in out


def test_planted_large_perturbation_diverges_more_than_one_ulp_early(real):
    _, dirs = real
    ulp, large = D.run_pair(dirs["ulp"], dirs["ref"]), D.run_pair(dirs["large"], dirs["ref"])
    assert not ulp["identical"] and not large["identical"] and not ulp["determinism_control"]
    for ru, rl in list(zip(ulp["rows"], large["rows"]))[:3]:  # updates 0, 2, 4
        assert ru["update"] == rl["update"]
        assert rl["param_rel"] > 1e3 * ru["param_rel"] > 0
        assert rl["kl"] > 0 and rl["kl"] > 1e3 * ru["kl"]
        assert rl["value_rms"] > 1e3 * ru["value_rms"]


def test_real_runs_carry_the_perturb_tag_into_their_cell(real):
    _, dirs = real
    assert load_run(dirs["ulp"]).cell == "exact/fp32/perturb-ulp"
    assert load_run(dirs["large"]).cell == "exact/fp32/perturb-large"
    assert load_run(dirs["ref"]).cell == "exact/fp32"


def test_real_sweep_mode_and_report_section(real, tmp_path):
    root, _ = real
    results, out = D.run_sweep(root, out=tmp_path / "drift", reps=200)
    (r,) = results
    assert r["control"] == "exact/fp32/perturb-ulp"
    assert set(r["curves"]) == {"exact/fp32/perturb-ulp", "exact/fp32/perturb-large"}
    # the re-run is a duplicate of the reference: a determinism control, and it passed
    assert [d["identical"] for d in r["determinism"]] == [True]
    # the reference numerics against themselves in the shadow probe: zero difference
    ref_probe = {p["cell"]: p for p in r["probe_rows"]}["exact/fp32"]
    assert ref_probe["grad_rel_l2"] == 0.0 and ref_probe["one_minus_grad_cos"] == 0.0
    assert (out / "drift.md").exists() and (out / f"drift_divergence_{r['env']}.png").stat().st_size > 10_000
    rep = tmp_path / "report"
    run_report(root, "exact/fp32", rep, reps=100)
    md = (rep / "report.md").read_text()
    assert "## Drift" in md and "drift_divergence_cartpole.png" in md
    summary = json.loads((rep / "summary.json").read_text())
    assert not [m for m in summary["missing"] if "perturb" in m["cell"]]


# --------------------------------------------------------------------------- synthetic snapshot files

SEEDS = range(10)
CONTROL_RATE, FAST_RATE = 0.05, 0.15
PLANTED = {  # cell -> (perturb, rate, probe grad_rel_l2)
    ("exact", "fp32", "ulp"): (CONTROL_RATE, 0.0),
    ("tanh", "fp32", "none"): (FAST_RATE, 1e-3),  # planted to diverge faster than the control
    ("exact", "bf16", "none"): (CONTROL_RATE, 1e-2),  # planted equal to the control
    ("tanh", "bf16", "none"): (CONTROL_RATE, 1e-2),
}


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn")
    make_sweep(root, seeds=SEEDS, gelus=("exact", "tanh"), precisions=("fp32", "bf16"), total_timesteps=22_528)
    for s in SEEDS:
        write_drift_files(run_path(root, "cartpole", "exact", "fp32", s), seed=s)
        for i, ((g, p, pert), (rate, lvl)) in enumerate(PLANTED.items()):
            d = run_path(root, "cartpole", g, p, s, perturb=pert)
            if pert != "none":
                write_run(d, gelu=g, precision=p, seed=s, perturb=pert, total_timesteps=22_528)
            write_drift_files(d, seed=s, rate=rate, eps=1e-6, noise_key=i + 1, probe_level=lvl)
    results, out = D.run_sweep(root, out=root / "drift", reps=1000)
    (r,) = results
    return root, r, {v["cell"]: v for v in r["verdicts"]}, out


def test_cell_planted_faster_than_the_control_exceeds_it(synthetic):
    _, r, verdicts, _ = synthetic
    v = verdicts["tanh/fp32"]
    assert v["n"] == 10 and v["exceeds"] and v["kl_lo"] > 0
    assert "EXCEEDS" in v["verdict"]
    # the planted gap: 2 * (FAST - CONTROL) * mean update / ln 10 decades of KL
    assert v["kl_lo"] < 2 * (FAST_RATE - CONTROL_RATE) * 20 / np.log(10) < v["kl_hi"]


def test_cells_planted_equal_to_the_control_are_not_flagged(synthetic):
    _, _, verdicts, _ = synthetic
    for cell in ("exact/bf16", "tanh/bf16"):
        v = verdicts[cell]
        assert not v["exceeds"] and not v["below"], (cell, v["kl_diff"], v["kl_lo"], v["kl_hi"])
        assert v["kl_lo"] <= 0 <= v["kl_hi"]
        assert "not distinguishable" in v["verdict"]


def test_control_is_paired_with_the_reference_and_never_judged_against_itself(synthetic):
    _, r, verdicts, _ = synthetic
    assert r["control"] == "exact/fp32/perturb-ulp"
    assert "exact/fp32/perturb-ulp" in r["curves"] and "exact/fp32/perturb-ulp" not in verdicts
    assert "exact/fp32" not in r["curves"]  # the reference is what everything is paired with
    assert r["curves"]["tanh/fp32"]["n"] == 10


def test_decomposition_relates_each_cell_to_dtype_and_gelu_alone(synthetic):
    _, r, _, _ = synthetic
    dec = {d["cell"]: d for d in r["decomp_rows"]}
    tb = dec["tanh/bf16"]
    assert tb["dtype_alone_cell"] == "exact/bf16"
    assert tb["dtype_alone_grad_rel_l2"] == pytest.approx(1e-2, rel=0.3)
    assert tb["gelu_alone_grad_rel_l2"] == pytest.approx(1e-3, rel=0.3)
    assert dec["tanh/fp32"]["vs_noise_floor"] == "exceeds"
    assert dec["exact/fp32/perturb-ulp"]["vs_noise_floor"] == "control"
    # faster growth reaches a given KL sooner
    assert dec["tanh/fp32"]["log10_kl_slope_per_100_updates"] > dec["exact/bf16"]["log10_kl_slope_per_100_updates"]


def test_drift_figures_and_files(synthetic):
    _, _, _, out = synthetic
    for f in ("drift_probe_cartpole.png", "drift_divergence_cartpole.png", "drift_verdict_cartpole.png"):
        assert (out / f).stat().st_size > 10_000, f
    summary = json.loads((out / "drift_summary.json").read_text())
    assert summary["envs"][0]["control"] == "exact/fp32/perturb-ulp"
    md = (out / "drift.md").read_text()
    assert "EXCEEDS" in md and "Decomposition" in md


def test_perturb_cells_are_controls_not_grid_cells(synthetic):
    root, _, _, _ = synthetic
    sweep = load_sweep(root)
    assert "exact/fp32/perturb-ulp" in sweep.cells("cartpole")
    assert sweep.missing("cartpole") == []  # no perturb variant demanded of every cell
    assert {r.cell for r in sweep.runs_of("cartpole", "exact/fp32")} == {"exact/fp32"}
    assert parse_cell("tanh/bf16/compiled/perturb-ulp") == {
        "gelu": "tanh", "precision": "bf16", "compiled": True, "perturb": "ulp"}
    from esper_exp.analysis.figures import cell_style
    assert cell_style("exact/fp32/perturb-ulp")["markerfacecolor"] != "white"  # not taken for compiled


def test_missing_control_seed_is_reported(tmp_path):
    write_run(run_path(tmp_path, "cartpole", "exact", "fp32", 0), seed=0, total_timesteps=5_000)
    write_run(run_path(tmp_path, "cartpole", "exact", "fp32", 1), seed=1, total_timesteps=5_000)
    write_run(run_path(tmp_path, "cartpole", "exact", "fp32", 0, perturb="ulp"), seed=0, perturb="ulp",
              total_timesteps=5_000)
    assert load_sweep(tmp_path).missing("cartpole") == [("exact/fp32/perturb-ulp", 1)]


def test_failed_determinism_control_is_loud(tmp_path, capsys):
    a = write_run(tmp_path / "a", seed=3, total_timesteps=22_528)
    b = write_run(tmp_path / "b", seed=3, total_timesteps=22_528)
    write_drift_files(a, seed=3)
    write_drift_files(b, seed=3, rate=0.01, eps=1e-9, noise_key=1)  # same cell and seed, yet different
    assert D.main([str(a), str(b), "--out", str(tmp_path / "o")]) == D.EXIT_NOT_DETERMINISTIC
    err = capsys.readouterr().err
    assert "DETERMINISM CONTROL FAILED" in err
    saved = json.loads((tmp_path / "o" / "drift_pair.json").read_text())
    assert saved["determinism_control"] and not saved["identical"]


def test_bad_pairs_give_one_clear_line(tmp_path, capsys):
    a = write_run(tmp_path / "a", seed=0, total_timesteps=5_000)
    b = write_run(tmp_path / "b", seed=1, total_timesteps=5_000)
    assert D.main([str(a), str(b)]) == 2
    assert "no snapshots" in capsys.readouterr().err
    write_drift_files(a, seed=0)
    write_drift_files(b, seed=1)
    assert D.main([str(a), str(b)]) == 2
    err = capsys.readouterr().err
    assert "probe sets differ" in err and "Traceback" not in err
    assert D.main([str(a)]) == 2
    assert D.main(["--sweep", str(tmp_path), "--reference", "nope/fp32"]) == 2
    assert "unknown reference" in capsys.readouterr().err


def test_gaussian_kl_matches_the_closed_form():
    rng = np.random.default_rng(0)
    mu_a, mu_b = rng.normal(size=(5, 3)), rng.normal(size=(5, 3))
    ls_a, ls_b = rng.normal(size=3) * 0.3, rng.normal(size=3) * 0.3
    A = {"out": mu_a, "logstd": ls_a}
    B = {"out": mu_b, "logstd": ls_b}
    va, vb = np.exp(2 * ls_a), np.exp(2 * ls_b)
    ref = (0.5 * (np.log(vb / va) + (va + (mu_a - mu_b) ** 2) / vb - 1)).sum(-1).mean()
    assert D.policy_kl(A, B, discrete=False) == pytest.approx(ref, rel=1e-12)
    assert D.policy_kl(A, A, discrete=False) == 0.0
    logits = rng.normal(size=(4, 2))
    assert D.policy_kl({"out": logits}, {"out": logits}, discrete=True) == 0.0
