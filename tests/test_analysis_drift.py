"""esper-drift and the report's drift section: bounded distances, per-third verdicts against noise floors, the
applied-update probe (schema 2, synthetic files with planted effects), and today's trainer files (real tiny
CartPole runs, the legacy format)."""

import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import norm

sys.path.insert(0, str(Path(__file__).parent))
from conftest import TINY_CARTPOLE, make_cfg  # noqa: E402
from synthetic_runs import make_sweep, run_path, write_drift_files, write_run  # noqa: E402

from esper_exp.analysis import drift as D  # noqa: E402
from esper_exp.analysis import drift_metrics as M  # noqa: E402
from esper_exp.analysis import drift_verdicts as V  # noqa: E402
from esper_exp.analysis.load import load_run, load_sweep  # noqa: E402
from esper_exp.analysis.report import run_report  # noqa: E402

# --------------------------------------------------------------------------- distances


def test_categorical_distances_hand_computed():
    a = {"out": np.log(np.array([[0.5, 0.5], [0.9, 0.1]]))}
    b = {"out": np.log(np.array([[0.7, 0.3], [0.2, 0.8]]))}
    d = M.action_distances(a, b, discrete=True)
    assert d["tv"] == pytest.approx((0.2 + 0.7) / 2)
    assert d["disagreement"] == pytest.approx(0.5)  # state 1: 0 vs 1; state 0: a tie broken the same way
    same = M.action_distances(a, a, discrete=True)
    assert same["tv"] == 0.0 and same["disagreement"] == 0.0 and same["out_rms"] == 0.0


def test_gaussian_tv_matches_the_closed_form_and_is_zero_at_equality():
    rng = np.random.default_rng(0)
    mu_a = rng.normal(size=(50, 1))
    for shift in (0.1, 0.5, 1.5):
        a = {"out": mu_a, "logstd": np.array([-0.5])}
        b = {"out": mu_a + shift, "logstd": np.array([-0.5])}
        want = 2 * norm.cdf(shift / (2 * math.exp(-0.5))) - 1  # equal variances: 2 Phi(delta / 2 sigma) - 1
        assert M.action_distances(a, b, discrete=False)["tv"] == pytest.approx(want, abs=0.03)
    a = {"out": rng.normal(size=(20, 3)), "logstd": np.array([-0.2, 0.1, 0.0])}
    assert M.action_distances(a, a, discrete=False)["tv"] == 0.0


# --------------------------------------------------------------------------- synthetic schema-2 sweep

SEEDS = range(10)
L = 0.3  # plateau of the planted logit perturbation (TV ~ 0.05)


def ctrl_level(u):
    return L * (1 - math.exp(-u / 4))


PLANTED = {  # (gelu, precision, perturb) -> (level(u), probe ratios)
    ("exact", "fp32", "ulp"): (ctrl_level, None),
    ("tanh", "fp32", "none"): (lambda u: ctrl_level(u) + (L if u <= 20 else 0.0),  # early kick only
                               {"gelu": lambda u: 0.01}),
    ("exact", "bf16", "none"): (ctrl_level, {"gelu": lambda u: 0.01, "dtype": lambda u: 0.01}),  # = the floor
    ("tanh", "bf16", "none"): (lambda u: ctrl_level(u) + (L if u > 40 else 0.0),  # late only
                               {"gelu": lambda u: 0.01, "dtype": lambda u: 0.5 if u > 40 else 0.01}),
    ("exact", "fp32", "duplicate"): (None, None),  # determinism control: bitwise the reference
}


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn")
    make_sweep(root, seeds=SEEDS, gelus=("exact", "tanh"), precisions=("fp32", "bf16"), total_timesteps=30_720)
    for s in SEEDS:
        write_drift_files(run_path(root, "cartpole", "exact", "fp32", s), seed=s,
                          probe={"gelu": lambda u: 0.01})
        for i, ((g, p, pert), (level, probe)) in enumerate(PLANTED.items()):
            d = run_path(root, "cartpole", g, p, s, perturb=pert)
            if pert == "duplicate":  # a bitwise copy of the reference run, tagged as the determinism control
                shutil.copytree(run_path(root, "cartpole", g, p, s), d)
                info = json.loads((d / "run.json").read_text())
                info["perturb"] = info["config"]["drift"]["perturb"] = pert
                (d / "run.json").write_text(json.dumps(info))
                continue
            if pert != "none":
                write_run(d, gelu=g, precision=p, seed=s, perturb=pert, total_timesteps=30_720)
            write_drift_files(d, seed=s, level=level, noise_key=i + 1, probe=probe)
    results, out = D.run_sweep(root, out=root / "drift", reps=2000)
    (r,) = results
    floor = {(f["cell"], f["third"]): f for f in r["floor"]}
    return root, r, floor, out


def test_thirds_are_thirds():
    np.testing.assert_array_equal(V.third_index([0, 1, 20, 21, 40, 41, 60], 60), [-1, 0, 0, 1, 1, 2, 2])


def test_an_early_kick_exceeds_the_floor_early_only(synthetic):
    _, r, floor, _ = synthetic
    assert r["controls"] == ["exact/fp32/perturb-ulp"] and r["total"] == 60
    assert floor[("tanh/fp32", "early")]["verdict"] == "exceeds"
    assert floor[("tanh/fp32", "middle")]["verdict"] == "indistinguishable"
    assert floor[("tanh/fp32", "late")]["verdict"] == "indistinguishable"
    # the old update-average statistic would have called this cell "exceeds" overall; per third it is not


def test_a_late_effect_is_found_late_and_a_floor_copy_is_indistinguishable(synthetic):
    _, _, floor, _ = synthetic
    assert [floor[("tanh/bf16", t)]["verdict"] for t in V.THIRDS] == ["indistinguishable", "indistinguishable",
                                                                      "exceeds"]
    assert [floor[("exact/bf16", t)]["verdict"] for t in V.THIRDS] == ["indistinguishable"] * 3
    for t in V.THIRDS:
        f = floor[("exact/bf16", t)]
        assert f["lo_holm"] <= 0 <= f["hi_holm"] and f["n"] == 10


def test_the_verdict_has_no_floor_constant_to_move():
    """Exact zeros (a control not yet perturbed, identical policies) enter as zeros: replacing them by 1e-12 or
    1e-30, what a log-scale statistic would need as a floor, changes nothing measurable."""
    rng = np.random.default_rng(0)
    ups = np.arange(0, 61, 3, dtype=float)
    seeds = list(range(10))
    ctrl = np.abs(rng.normal(0.02, 0.005, (10, ups.size)))
    ctrl[:, ups < 15] = 0.0  # the ulp kick has not reached the policy yet
    cell = np.abs(rng.normal(0.02, 0.005, (10, ups.size)))
    cell[:, ups < 15] = 1e-9  # a tiny but nonzero early difference
    def verdicts(c):
        curves = {"x": {"seeds": seeds, "updates": ups, "per_seed": {"tv": cell}},
                  "ctrl": {"seeds": seeds, "updates": ups, "per_seed": {"tv": c}}}
        return V.floor_rows("e", curves, ["ctrl"], 60, "tv", 1000, 0)
    base = verdicts(ctrl)
    for eps in (1e-12, 1e-30):
        moved = verdicts(np.where(ctrl == 0, eps, ctrl))
        for a, b in zip(base, moved):
            assert a["verdict"] == b["verdict"] and abs(a["diff"] - b["diff"]) < 1e-11
    for mod in (M, V):  # and there is no such constant in the drift modules
        assert not [k for k, v in vars(mod).items() if "FLOOR" in k.upper() and isinstance(v, float)]


def test_applied_update_probe_verdicts(synthetic):
    _, r, _, _ = synthetic
    probe = [p for p in r["probe"]]
    def status(cell, kind):
        return [p["status"] for p in probe if p["cell"] == cell and p["kind"] == kind]
    assert status("tanh/fp32", "gelu") == ["negligible"] * 3
    assert status("tanh/bf16", "dtype") == ["negligible", "negligible", "not negligible"]
    rows = [p for p in probe if p["cell"] == "tanh/bf16"]
    assert V.probe_cell_verdict(rows, "gelu") == "negligible in every third"
    assert V.probe_cell_verdict(rows, "dtype") == "not negligible in late"
    assert not status("tanh/fp32", "dtype")  # fp32 runs have no dtype effect to measure
    late = next(p for p in probe if p["cell"] == "tanh/bf16" and p["kind"] == "dtype" and p["third"] == "late")
    assert late["median"] == pytest.approx(0.5, rel=0.3)


def test_determinism_control_cell_passes(synthetic):
    _, r, _, _ = synthetic
    assert len(r["determinism"]) == 10 and all(d["identical"] for d in r["determinism"])
    assert "exact/fp32/perturb-duplicate" not in r["curves"]


def test_drift_files_and_report_section(synthetic, tmp_path):
    root, _, _, out = synthetic
    for f in ("drift_divergence_cartpole.png", "drift_thirds_cartpole.png", "drift_probe_cartpole.png"):
        assert (out / f).stat().st_size > 10_000, f
    summary = json.loads((out / "drift_summary.json").read_text())
    assert summary["envs"][0]["controls"] == ["exact/fp32/perturb-ulp"]
    md = (out / "drift.md").read_text()
    assert "| exact/fp32/perturb-ulp | tanh/fp32 | exceeds | indistinguishable | indistinguishable |" in md
    assert "Legacy snapshots" not in md
    run_report(root, tmp_path, reps=500, curve_reps=100, figures=False)
    rep = (tmp_path / "report.md").read_text()
    assert "## Drift" in rep and "Applied-update probe" in rep
    assert not [m for m in json.loads((tmp_path / "summary.json").read_text())["missing"] if "perturb" in m["cell"]]


def test_legacy_snapshots_are_read_and_labelled(tmp_path):
    for s in range(5):
        write_run(run_path(tmp_path, "cartpole", "exact", "fp32", s), seed=s, total_timesteps=30_720)
        write_drift_files(run_path(tmp_path, "cartpole", "exact", "fp32", s), seed=s, legacy=True)
        d = run_path(tmp_path, "cartpole", "tanh", "fp32", s)
        write_run(d, gelu="tanh", seed=s, total_timesteps=30_720)
        write_drift_files(d, seed=s, level=ctrl_level, noise_key=1, legacy=True)
    results, out = D.run_sweep(tmp_path, out=tmp_path / "d", reps=200)
    assert results[0]["legacy"] and "tanh/fp32" in results[0]["curves"]
    assert "Legacy snapshots" in (out / "drift.md").read_text()


def test_failed_determinism_control_is_loud(tmp_path, capsys):
    a = write_run(tmp_path / "a", seed=3, total_timesteps=30_720)
    b = write_run(tmp_path / "b", seed=3, total_timesteps=30_720)
    write_drift_files(a, seed=3)
    write_drift_files(b, seed=3, level=lambda u: 1e-9 * u, noise_key=1)  # same cell and seed, yet different
    assert D.main([str(a), str(b), "--out", str(tmp_path / "o")]) == D.EXIT_NOT_DETERMINISTIC
    assert "DETERMINISM CONTROL FAILED" in capsys.readouterr().err
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
    assert D.main(["--sweep", str(tmp_path), "--rule", "reference=nope/fp32"]) == 2
    assert "unknown reference" in capsys.readouterr().err


def test_missing_control_seed_is_reported(tmp_path):
    write_run(run_path(tmp_path, "cartpole", "exact", "fp32", 0), seed=0, total_timesteps=5_000)
    write_run(run_path(tmp_path, "cartpole", "exact", "fp32", 1), seed=1, total_timesteps=5_000)
    write_run(run_path(tmp_path, "cartpole", "exact", "fp32", 0, perturb="ulp"), seed=0, perturb="ulp",
              total_timesteps=5_000)
    assert load_sweep(tmp_path).missing("cartpole") == [("exact/fp32/perturb-ulp", 1)]


# --------------------------------------------------------------------------- today's trainer (schema 2)

DRIFT = ("drift.snapshot_every=2", "drift.probe_every=2", "model.alpha.ramp_updates=2")
CELLS = (("ref", ()), ("ulp", ("drift.perturb=ulp",)), ("large", ("drift.perturb=large",)),
         ("duplicate", ("drift.perturb=duplicate",)), ("tanh", ("model.gelu=tanh",)), ("fp16", ("precision=fp16",)))


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """A tiny sweep by the trainer in this checkout, all seed 0, laid out the way Hydra's multirun does: the
    reference, the ulp control, a large perturbation, the duplicate control, tanh/fp32, exact/fp16 (its loss scaler
    skips the first steps, so its rollouts leave the reference's), and the reference once more
    in another directory (a re-run); then esper_exp.drift_eval pairs them on the reference's states."""
    from esper_exp.drift_eval import evaluate_sweep
    from esper_exp.train import run

    root = tmp_path_factory.mktemp("real")
    dirs = {}
    for name, extra in CELLS:
        d = root / f"cartpole-{name}" / "seed=0"
        assert run(make_cfg(*TINY_CARTPOLE, *DRIFT, "seed=0", *extra), d) == "completed"
        dirs[name] = d
    d = root / "rerun" / "cartpole-exact-fp32" / "seed=0"
    assert run(make_cfg(*TINY_CARTPOLE, *DRIFT, "seed=0"), d) == "completed"
    dirs["rerun"] = d
    counts = evaluate_sweep(root, log=lambda *a: None)
    # 6 runs x 5 snapshots: a record on the reference's states is written unless the run's own states are those
    # (the reference, its re-run and duplicate; a cell whose rollout has not yet moved away from the reference's)
    assert counts["written"] + counts["present"] == 7 * 5 and counts["present"] >= 3 * 5 and counts["written"] > 0
    assert counts["no_reference"] == counts["locked"] == 0
    assert evaluate_sweep(root, log=lambda *a: None)["written"] == 0  # idempotent
    return root, dirs


def _records(d):
    return [json.loads(x) for x in (d / "snapshots.jsonl").read_text().splitlines()]


def test_real_cells_are_evaluated_on_the_reference_states(real):
    _, dirs = real
    ref = {r["update"]: r["states"]["sha"] for r in _records(dirs["ref"])}
    assert sorted(ref) == [0, 2, 4, 6, 8] and all(r["states"]["source"] == "self" for r in _records(dirs["ref"]))
    for name in ("ulp", "large", "tanh", "fp16"):
        recs = _records(dirs[name])
        assert all((u, sha) in {(r["update"], r["states"]["sha"]) for r in recs} for u, sha in ref.items())
        assert all(r["schema"] == 2 and r["eval"] == {"gelu": "exact", "precision": "fp32"} for r in recs)
        assert {r["states"]["source"] for r in recs} <= {"self", "exact/fp32/seed=0"}
    on_ref = [r for r in _records(dirs["fp16"]) if r["states"]["source"] == "exact/fp32/seed=0"]
    own = {r["update"]: r["states"]["sha"] for r in _records(dirs["fp16"]) if r["states"]["source"] == "self"}
    assert on_ref and all(own[r["update"]] != r["states"]["sha"] for r in on_ref)
    # the duplicate and the re-run are the reference's computation: their own states are the reference's
    for name in ("duplicate", "rerun"):
        assert {r["update"]: r["states"]["sha"] for r in _records(dirs[name])} == ref


def test_real_reference_against_itself_is_exactly_zero_and_identical(real, capsys):
    _, dirs = real
    p = D.run_pair(dirs["rerun"], dirs["ref"])
    assert p["determinism_control"] and p["identical"] and len(p["rows"]) == 5 and not p["legacy"]
    for row in p["rows"]:
        assert row["identical"] and row["tv"] == row["out_rms"] == row["param_rel"] == row["value_rms"] == 0.0
    assert D.main([str(dirs["rerun"]), str(dirs["ref"])]) == 0
    out = capsys.readouterr().out
    assert "IDENTICAL" in out and "determinism control passed" in out


def test_real_tanh_starts_at_exactly_zero_distance(real):
    """Snapshots are evaluated in fp32 with exact GELU: equal parameters (update 0) give exactly 0, not an
    evaluation-rounding offset; later the tanh run's parameters have moved."""
    _, dirs = real
    p = D.run_pair(dirs["tanh"], dirs["ref"], )
    assert [r["states"] for r in p["rows"]] == ["on_policy"] * 5
    assert p["rows"][0]["update"] == 0 and p["rows"][0]["identical"] and p["rows"][0]["tv"] == 0.0
    assert p["rows"][-1]["param_rel"] > 0 and p["rows"][-1]["tv"] > 0


def test_real_large_perturbation_is_further_than_one_ulp_early(real):
    _, dirs = real
    ulp, large = D.run_pair(dirs["ulp"], dirs["ref"]), D.run_pair(dirs["large"], dirs["ref"])
    assert not ulp["identical"] and not large["identical"] and not ulp["determinism_control"]
    for ru, rl in list(zip(ulp["rows"], large["rows"]))[:3]:
        assert ru["update"] == rl["update"]
        assert rl["param_rel"] > 1e3 * ru["param_rel"] > 0
        assert rl["tv"] > ru["tv"] and rl["out_rms"] > 1e3 * ru["out_rms"]
    assert load_run(dirs["ulp"]).cell == "exact/fp32/perturb-ulp"


def test_real_sweep_mode_reads_todays_files(real, tmp_path):
    root, _ = real
    results, out = D.run_sweep(root, out=tmp_path / "drift", reps=200)
    (r,) = results
    assert not r["legacy"] and r["controls"] == ["exact/fp32/perturb-ulp"]
    assert set(r["curves"]) == {"exact/fp32/perturb-ulp", "exact/fp32/perturb-large", "tanh/fp32", "exact/fp16"}
    assert sorted(d["identical"] for d in r["determinism"]) == [True, True]  # the re-run and the duplicate cell
    probe = {(x["cell"], x["kind"], x["third"]): x for x in r["probe"]}
    assert probe[("tanh/fp32", "gelu", "late")]["median"] > 0 and not r["legacy_probe"]
    assert ("exact/fp32", "dtype", "late") not in probe  # fp32 runs have no dtype contrast
    assert probe[("exact/fp16", "dtype", "late")]["median"] > 0
    assert (out / "drift.md").exists()


def test_real_runs_not_yet_paired_by_drift_eval_are_refused_with_the_command(real, tmp_path, capsys):
    from esper_exp.drift_eval import main as eval_main

    _, dirs = real
    unpaired = tmp_path / "fp16"
    shutil.copytree(dirs["fp16"], unpaired)
    recs = [r for r in _records(unpaired) if r["states"]["source"] == "self"]
    (unpaired / "snapshots.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    with pytest.raises(M.DriftError, match="drift_eval"):
        D.run_pair(unpaired, dirs["ref"])
    assert eval_main([str(tmp_path / "nothing")]) == 2
    assert "no run directories" in capsys.readouterr().err


def test_a_damaged_run_is_left_out_loudly_and_the_sweep_exits_1(tmp_path, capsys):
    for s in range(5):
        for gelu, kw in (("exact", {}), ("tanh", {"level": ctrl_level, "noise_key": 1})):
            d = run_path(tmp_path, "cartpole", gelu, "fp32", s)
            write_run(d, gelu=gelu, seed=s, total_timesteps=30_720)
            write_drift_files(d, seed=s, **kw)
    assert D.main(["--sweep", str(tmp_path), "--out", str(tmp_path / "d0"), "--reps", "200"]) == 0
    metrics = run_path(tmp_path, "cartpole", "tanh", "fp32", 2) / "metrics.jsonl"
    metrics.write_text(metrics.read_text()[:-40])  # cut mid-line, as a crash while writing would
    capsys.readouterr()
    assert D.main(["--sweep", str(tmp_path), "--out", str(tmp_path / "d1"), "--reps", "200"]) == D.EXIT_DAMAGED
    assert "DAMAGED RUN EXCLUDED" in capsys.readouterr().err
