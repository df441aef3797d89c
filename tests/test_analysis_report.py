"""esper-report end to end on synthetic run directories (tests/synthetic_runs.py writes the
trainer's exact on-disk format)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from synthetic_runs import make_sweep, run_path, write_run  # noqa: E402

from esper_exp.analysis import stats as S  # noqa: E402
from esper_exp.analysis.load import load_sweep  # noqa: E402
from esper_exp.analysis.report import main, run_report  # noqa: E402

SEEDS = range(10)
SHIFTS = {"tanh/fp32": -40.0, "exact/fp16": +30.0}  # planted, return units; every other cell is null


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    # data_seed_offset picks one fixed draw of the synthetic noise
    make_sweep(root, seeds=SEEDS, shifts=SHIFTS, skip={("tanh/fp16", 3)}, total_timesteps=40_000,
               data_seed_offset=1)
    # a failed fp16 run that went non-finite and stopped early
    write_run(run_path(root, "cartpole", "tanh", "fp16", 4), gelu="tanh", precision="fp16", seed=4,
              status="failed", reason="FloatingPointError: non-finite loss at update 20",
              stop_at=11_000, nonfinite_at=(5, 9, 20), total_timesteps=40_000, data_seed_offset=1)
    # a completed run that skipped one optimizer step (GradScaler found inf grads)
    write_run(run_path(root, "cartpole", "exact", "fp16", 2), gelu="exact", precision="fp16", seed=2,
              shift=SHIFTS["exact/fp16"], nonfinite_at=(12,), total_timesteps=40_000, data_seed_offset=1)
    # merged from a second machine: a failed copy of a cell+seed that also completed here
    write_run(root / "machine_b" / "exact" / "fp32" / "seed=5", gelu="exact", precision="fp32", seed=5,
              status="failed", reason="killed", stop_at=5_000, total_timesteps=40_000,
              ended_at="2026-11-23T00:00:00+00:00")
    # a crash mid-write: truncated last metrics line
    with open(run_path(root, "cartpole", "tanh", "bf16", 7) / "metrics.jsonl", "a") as f:
        f.write('{"global_step": 99999, "update": 19')
    return root


@pytest.fixture(scope="module")
def report(sweep, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    run_report(sweep, out, reps=1000, curve_reps=200, seed=0)
    summary = json.loads((out / "summary.json").read_text())
    return out, summary


def _dec(summary, contrast):
    (row,) = [c for c in summary["decision"] if c["contrast"] == contrast]
    return row


def test_planted_shifts_move_the_contrasts_with_the_right_sign(report):
    _, summary = report
    r = _dec(summary, "tanh/fp32 - exact/fp32")
    assert r["estimate"] == pytest.approx(-40.0 / 478, abs=0.01) and r["ci_holm"][1] < 0
    assert r["verdict"] == "equivalent" and r["different"]  # -0.08: detected, but inside the 0.1 margin
    r = _dec(summary, "exact/fp16 - exact/fp32")
    assert r["estimate"] == pytest.approx(30.0 / 478, abs=0.01) and r["ci_holm"][0] > 0
    # the failed seed 4 and the missing seed 3 of tanh/fp16 leave 8 pairs
    assert _dec(summary, "tanh/fp16 - exact/fp16")["n"] == 8
    assert _dec(summary, "tanh/fp16 - exact/fp16")["unpaired_runs_left_out"] == 2


def test_null_false_positive_rate_on_run_directories(tmp_path):
    """Many independent null sweeps (two cells, 8 seeds, no shift) read back from disk: "different" is rare."""
    from esper_exp.analysis import decision as Dc
    from esper_exp.analysis.load import load_run
    from esper_exp.analysis.rule import Rule

    rule, n_sets, hits = Rule(), 30, 0
    for off in range(n_sets):
        fin = {}
        for g in ("exact", "tanh"):
            fin[g] = np.array([rule.normalise("cartpole", S.final_return(load_run(write_run(
                tmp_path / str(off) / g / str(s), gelu=g, seed=s, total_timesteps=15_000, cap=100.0,
                data_seed_offset=off)).episodes_return, last=50)) for s in range(8)])
        row = Dc.decide([Dc.estimate([fin["tanh"]], [fin["exact"]], True, rule, 300, off)], rule)[0]
        hits += row["different"]
    assert hits / n_sets <= 0.15, hits


def test_outcome_table_counts(report):
    _, summary = report
    rows = {o["cell"]: o for o in summary["outcomes"]}
    assert set(rows) == {f"{g}/{p}" for g in ("exact", "tanh") for p in ("fp32", "bf16", "fp16")}
    assert rows["exact/fp32"]["n_seeds"] == 10 and rows["exact/fp32"]["failed"] == 0
    assert rows["tanh/fp16"]["n_seeds"] == 8 and rows["tanh/fp16"]["failed"] == 1
    assert rows["tanh/fp16"]["nonfinite_events"] == 3
    for o in rows.values():
        for m in ("final_return_iqm", "auc_iqm", "auc_norm_iqm", "final_norm_iqm"):
            assert o[f"{m}_lo"] <= o[m] <= o[f"{m}_hi"]
    assert rows["exact/fp32"]["auc_norm_iqm"] == pytest.approx((rows["exact/fp32"]["auc_iqm"] - 22) / 478)


def test_missing_and_failed_runs_are_reported_not_fatal(report):
    out, summary = report
    assert {"env": "cartpole", "cell": "tanh/fp16", "seed": 3} in summary["missing"]
    assert len(summary["missing"]) == 1
    md = (out / "report.md").read_text()
    assert "tanh/fp16: seed 3" in md
    failed = [r for r in summary["runs"] if r["status"] == "failed"]
    assert [(r["cell"], r["seed"]) for r in failed] == [("tanh/fp16", 4)]
    assert not failed[0]["used_in_stats"]
    assert "FloatingPointError: non-finite loss at update 20" in md


def test_nonfinite_runs_are_flagged(report):
    out, summary = report
    flagged = {(r["cell"], r["seed"]) for r in summary["runs"] if r["flagged"]}
    assert flagged == {("tanh/fp16", 4), ("exact/fp16", 2)}
    (r,) = [r for r in summary["runs"] if (r["cell"], r["seed"]) == ("exact/fp16", 2)]
    assert r["nonfinite_events"] == 1 and r["skipped_steps"] == 1 and r["nonfinite_metric_updates"] == 1
    health = {h["cell"]: h for h in summary["health"]}
    assert health["exact/fp16"]["runs_flagged_nonfinite"] == 1
    assert health["exact/fp16"]["updates_with_nonfinite"] == 1
    assert health["exact/fp32"]["runs_flagged_nonfinite"] == 0
    assert health["tanh/fp16"]["loss_scale"] < 65536  # the failed run's scale went down
    md = (out / "report.md").read_text()
    assert "Runs with non-finite events" in md


def test_health_reports_the_value_loss_late_in_training(report):
    # the synthetic runs' value loss is |N(50, 10)| at every update: each cell's late median sits near 50
    out, summary = report
    for h in summary["health"]:
        assert 35 < h["value_loss"] < 65, h
    assert "value loss (late)" in (out / "report.md").read_text()


def test_duplicates_keep_the_completed_copy(sweep, report):
    _, summary = report
    (d,) = summary["duplicates"]
    assert (d["cell"], d["seed"], d["status"]) == ("exact/fp32", 5, "failed")
    assert "machine_b" in d["path"] and "machine_b" not in d["kept"]
    s = load_sweep(sweep)
    (kept,) = [r for r in s.runs if r.cell == "exact/fp32" and r.seed == 5]
    assert kept.status == "completed"


def test_truncated_metrics_line_is_flagged_and_excluded(sweep, report):
    out, summary = report
    s = load_sweep(sweep)
    assert not [r for r in s.runs if r.cell == "tanh/bf16" and r.seed == 7]
    (d,) = s.damaged
    assert (d.cell, d.seed) == ("tanh/bf16", 7) and "metrics.jsonl: line" in d.damage and "cut off" in d.damage
    (row,) = summary["damaged"]
    assert (row["cell"], row["seed"], row["included"]) == ("tanh/bf16", 7, False)
    assert {"env": "cartpole", "cell": "tanh/bf16", "seed": 7} not in summary["missing"]
    assert not [r for r in summary["runs"] if (r["cell"], r["seed"]) == ("tanh/bf16", 7)]
    assert "Damaged runs (1; EXCLUDED" in (out / "report.md").read_text()


def _assert_real_image(path, min_kb=15):
    import matplotlib.image as mpimg

    assert path.exists() and path.stat().st_size > min_kb * 1024, path
    img = mpimg.imread(path)[..., :3]
    nonwhite = (img.min(axis=-1) < 0.9).mean()
    assert 0.03 < nonwhite < 0.9, (path, nonwhite)  # not blank, not a solid block
    assert len(np.unique(img.reshape(-1, 3).round(2), axis=0)) > 20  # several colours drawn


def test_figures_are_produced_and_not_blank(report):
    out, _ = report
    names = ("forest.png", "curves.png", "difference_cartpole.png", "profiles.png", "health_cartpole.png")
    for name in names:
        _assert_real_image(out / name)
    md = (out / "report.md").read_text()
    for name in names:
        assert f"]({name})" in md


def test_curves_show_the_planted_shift(report):
    import csv

    out, _ = report
    rows = list(csv.DictReader(open(out / "curves.csv")))
    last = {}
    for r in rows:
        last[r["cell"]] = r  # rows are in step order per cell
    assert float(last["tanh/fp32"]["hi"]) < float(last["exact/fp32"]["lo"])
    assert float(last["exact/fp16"]["lo"]) > float(last["exact/fp32"]["hi"])
    for r in rows:
        assert float(r["lo"]) <= float(r["iqm"]) <= float(r["hi"])


def test_report_is_reproducible(sweep, report, tmp_path):
    out, summary = report
    run_report(sweep, tmp_path, reps=1000, curve_reps=200, seed=0)
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    assert (tmp_path / "report.md").read_text() == (out / "report.md").read_text()


def test_other_reference_and_partial_sweep(tmp_path):
    """A sweep of two cells, one seed missing in one; the reference and contrasts come from a --rule override."""
    make_sweep(tmp_path / "s", seeds=range(6), precisions=("bf16",), shifts={"tanh/bf16": 50.0})
    shutil.rmtree(run_path(tmp_path / "s", "cartpole", "exact", "bf16", 0))
    out = tmp_path / "r"
    assert main([str(tmp_path / "s"), "--out", str(out), "--reps", "500", "--no-figures",
                 "--rule", "reference=tanh/bf16", "--rule", "contrasts=exact/bf16 - tanh/bf16"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    (c,) = summary["decision"]
    assert c["contrast"] == "exact/bf16 - tanh/bf16" and c["estimate"] < 0 and c["n"] == 5
    assert not summary["rule_source"]["preregistered"]
    assert "![" not in (out / "report.md").read_text()  # --no-figures: no link to a figure that was not drawn


@pytest.mark.parametrize("case", ["no_such_dir", "empty_dir", "bad_reference", "bad_reps"])
def test_bad_input_gives_one_clear_line(case, sweep, tmp_path, capsys):
    args = {"no_such_dir": [str(tmp_path / "nope")],
            "empty_dir": [str(tmp_path)],
            "bad_reference": [str(sweep), "--rule", "reference=exact/fp64", "--out", str(tmp_path / "o")],
            "bad_reps": [str(sweep), "--reps", "0", "--out", str(tmp_path / "o")]}[case]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("esper-report: error:")
    if case == "bad_reference":
        assert "exact/fp64" in err[0]
        for cell in ("exact/fp32", "tanh/fp32", "exact/bf16", "tanh/bf16", "exact/fp16", "tanh/fp16"):
            assert cell in err[0]
    elif case == "bad_reps":
        assert "--reps" in err[0] and "0" in err[0]
    else:
        assert args[0] in err[0]
    assert not (tmp_path / "o").exists()


def test_cli_entry_point_runs_without_traceback_and_never_imports_the_trainer(sweep, tmp_path):
    code = ("import sys; from esper_exp.analysis.report import main; rc = main(sys.argv[1:]); "
            "bad = [m for m in sys.modules if m.split('.')[:2] in (['esper_exp','train'], "
            "['esper_exp','ppo'], ['esper_exp','policy'])]; "
            "print('TRAINER_MODULES', bad); sys.exit(rc)")
    p = subprocess.run([sys.executable, "-c", code, str(sweep), "--rule", "reference=nope/fp32"],
                       capture_output=True, text=True)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "unknown reference cell 'nope/fp32'" in p.stderr
    p = subprocess.run([sys.executable, "-c", code, str(sweep), "--out", str(tmp_path), "--reps", "50",
                        "--no-figures"],
                       capture_output=True, text=True)
    assert p.returncode == 1, p.stderr  # the fixture holds one damaged run (cut metrics line)
    assert "Traceback" not in p.stderr and p.stderr.count("DAMAGED RUN") == 1
    assert "TRAINER_MODULES []" in p.stdout
    assert (tmp_path / "report.md").exists()


def test_nonfinite_is_flagged_from_each_signal_alone(tmp_path):
    """run.json's counter, the metrics' skipped-step counter, a NaN/Infinity metric and a NaN
    episode return each flag the run on their own (a crashing run may not update every one)."""
    from esper_exp.analysis.load import load_run

    def variant(name, edit_info=None, edit_metrics=None, edit_episodes=None, **kw):
        d = write_run(tmp_path / name, precision="fp16", total_timesteps=8_000, **kw)
        if edit_info:
            info = json.loads((d / "run.json").read_text())
            edit_info(info)
            (d / "run.json").write_text(json.dumps(info))
        for fname, edit in (("metrics.jsonl", edit_metrics), ("episodes.jsonl", edit_episodes)):
            if edit:
                rows = [json.loads(line) for line in (d / fname).read_text().splitlines()]
                edit(rows)
                (d / fname).write_text("".join(json.dumps(r) + "\n" for r in rows))
        return load_run(d).nonfinite_summary()

    def zero_counter(info):
        info["nonfinite_events"] = 0

    def drop_nan_metrics(rows):
        for r in rows:
            r["grad_norm"] = 0.5 if r["grad_norm"] != r["grad_norm"] else r["grad_norm"]
            r["policy_loss"] = 0.0 if abs(r["policy_loss"]) == float("inf") else r["policy_loss"]

    def zero_skipped(rows):
        for r in rows:
            r["nonfinite_grad_steps"] = 0

    def nan_value_loss(rows):
        rows[3]["value_loss"] = float("nan")

    def nan_return(rows):
        rows[-1]["return"] = float("nan")

    clean = variant("clean")
    assert not clean["flagged"]
    only_counter = variant("counter", edit_metrics=lambda r: (drop_nan_metrics(r), zero_skipped(r)),
                           nonfinite_at=(3,))
    assert only_counter["flagged"] and only_counter["nonfinite_events"] == 1
    only_skipped = variant("skipped", edit_info=zero_counter, edit_metrics=drop_nan_metrics,
                           nonfinite_at=(3,))
    assert only_skipped["flagged"] and only_skipped["skipped_steps"] == 1
    only_metric = variant("metric", edit_metrics=nan_value_loss)
    assert only_metric["flagged"] and only_metric["nonfinite_metric_updates"] == 1
    only_episode = variant("episode", edit_episodes=nan_return)
    assert only_episode["flagged"] and only_episode["nonfinite_episode_returns"] == 1


def test_vs_with_pairs_compares_an_arm_whose_cells_the_primary_lacks(tmp_path, capsys):
    """esper-report PRIMARY --vs ARM --pair exact/fp16=exact/fp32 (issue 13's fp16 arm against the primary's fp32
    cells): only the named pairs, ARM's cell minus PRIMARY's, by PRIMARY's rule; a planted shift is found with its
    sign; a bad pair, a pair no env holds, or --pair without --vs: one line, exit 2."""
    from esper_exp.analysis.report import main

    kw = dict(seeds=range(8), total_timesteps=40_000, data_seed_offset=3, seed_effect_sd=30.0)
    primary = make_sweep(tmp_path / "primary", precisions=("fp32", "bf16"), **kw)
    arm = make_sweep(tmp_path / "arm", precisions=("fp16",), shifts={"tanh/fp16": -300.0}, **kw)
    out = tmp_path / "twin"
    assert main([str(primary), "--vs", str(arm), "--pair", "exact/fp16=exact/fp32", "--pair",
                 "tanh/fp16=tanh/fp32", "--out", str(out), "--reps", "500"]) == 0
    rows = {(r["a"], r["b"]): r for r in json.loads((out / "twin.json").read_text())["rows"] if r["scope"] == "all"}
    assert sorted(rows) == [("B:exact/fp16", "A:exact/fp32"), ("B:tanh/fp16", "A:tanh/fp32")]
    shifted = rows[("B:tanh/fp16", "A:tanh/fp32")]
    assert shifted["verdict"] == "different" and shifted["estimate"] < 0 and shifted["n"] == 8
    assert "tanh/fp16 - tanh/fp32" in (out / "twin.md").read_text()
    assert "2 cells compared" in capsys.readouterr().out
    for bad in (["--pair", "exact-fp16"], ["--pair", "exact/fp16=exact/fp8"]):
        assert main([str(primary), "--vs", str(arm), "--out", str(tmp_path / "x"), *bad]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and bad[1] in err[0]
    assert main([str(primary), "--pair", "exact/fp16=exact/fp32", "--out", str(tmp_path / "y")]) == 2
    assert "--vs" in capsys.readouterr().err


def test_a_stalled_fp16_run_is_counted_and_flagged(tmp_path):
    """A run whose fp16 loss scaler skipped every minibatch step of some updates (seen on CUDA: the scale halved to 0
    and the policy stopped changing while the run went on) is flagged with its stalled updates: from the skipped-step
    counter against epochs x num_minibatches, or, without those, from a loss scale of 0. Skipping some of an
    update's steps is not a stall."""
    from esper_exp.analysis.load import load_run

    d = write_run(tmp_path / "stalled", precision="fp16", total_timesteps=8_000)
    info = json.loads((d / "run.json").read_text())
    info["config"]["ppo"]["num_minibatches"] = 4
    (d / "run.json").write_text(json.dumps(info))
    rows = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
    skipped = 0
    for u, r in enumerate(rows):
        r["epochs"] = 2 if u == 9 else 3  # a target-KL stop: fewer steps attempted
        skipped += {4: 5, 7: 12, 8: 12, 9: 8, 10: 11}.get(u, 0)  # 7-9 stalled; 4 and 10 partly skipped
        r["nonfinite_grad_steps"], r["loss_scale"] = skipped, 0.0 if 7 <= u <= 9 else 1024.0
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = load_run(d).nonfinite_summary()
    assert summary["stalled_updates"] == 3 and summary["flagged"]
    del info["config"]["ppo"]["num_minibatches"]  # an older run.json: the loss scale says it
    (d / "run.json").write_text(json.dumps(info))
    assert load_run(d).nonfinite_summary()["stalled_updates"] == 3
    clean = write_run(tmp_path / "clean", precision="fp16", total_timesteps=8_000)
    assert load_run(clean).nonfinite_summary()["stalled_updates"] == 0


def test_sweep_with_no_completed_run_still_reports(tmp_path):
    for s in range(2):
        write_run(run_path(tmp_path / "s", "cartpole", "exact", "fp32", s), seed=s, status="running",
                  stop_at=3000, total_timesteps=8000)
        write_run(run_path(tmp_path / "s", "cartpole", "tanh", "fp32", s), gelu="tanh", seed=s,
                  status="interrupted", reason="KeyboardInterrupt", stop_at=2000, total_timesteps=8000)
    assert main([str(tmp_path / "s"), "--out", str(tmp_path / "r"), "--reps", "50"]) == 0
    md = (tmp_path / "r" / "report.md").read_text()
    assert "No completed run with episodes" in md and "KeyboardInterrupt" in md
    assert "tanh/fp32 - exact/fp32: inconclusive**: no runs to compare" in md
    assert not (tmp_path / "r" / "curves.png").exists() and "curves.png" not in md


# --------------------------------------------------------------------------- damaged runs (issue 9)


def _small_sweep(root):
    return make_sweep(root, seeds=range(4), precisions=("fp32",), total_timesteps=16 * 512)


def _report_main(root, out, capsys, *extra):
    rc = main([str(root), "--out", str(out), "--reps", "50", "--no-figures", *extra])
    err = capsys.readouterr().err
    return rc, err, json.loads((out / "summary.json").read_text()), (out / "report.md").read_text()


def test_a_cut_metrics_line_is_flagged_excluded_reported_and_exits_1(tmp_path, capsys):
    root = _small_sweep(tmp_path / "s")
    bad = run_path(root, "cartpole", "tanh", "fp32", 2) / "metrics.jsonl"
    text = bad.read_text()
    bad.write_text(text[:-40])  # the crash cut the last line mid-way
    rc, err, summary, md = _report_main(root, tmp_path / "r", capsys)
    assert rc == 1
    lines = [ln for ln in err.splitlines() if "DAMAGED" in ln]
    assert len(lines) == 1 and str(bad) in lines[0] and "line 16 is cut off" in lines[0]
    assert "EXCLUDED" in lines[0]
    (d,) = summary["damaged"]
    assert (d["cell"], d["seed"], d["included"]) == ("tanh/fp32", 2, False) and "cut off" in d["reason"]
    assert not [r for r in summary["runs"] if (r["cell"], r["seed"]) == ("tanh/fp32", 2)]
    assert {o["cell"]: o["n_seeds"] for o in summary["outcomes"]} == {"exact/fp32": 4, "tanh/fp32": 3}
    assert summary["missing"] == []
    assert "Damaged runs (1; EXCLUDED" in md and "line 16 is cut off" in md
    assert "All runs completed" not in md
    # --include-damaged: the 15 readable updates are used, the run is still listed, exit 0
    rc, err, summary, md = _report_main(root, tmp_path / "r2", capsys, "--include-damaged")
    assert rc == 0 and err.count("DAMAGED RUN INCLUDED") == 1
    assert {o["cell"]: o["n_seeds"] for o in summary["outcomes"]} == {"exact/fp32": 4, "tanh/fp32": 4}
    (d,) = summary["damaged"]
    assert d["included"] and "All runs completed" not in md and "Damaged runs (1; INCLUDED" in md
    (r,) = [r for r in summary["runs"] if (r["cell"], r["seed"]) == ("tanh/fp32", 2)]
    assert r["bad_lines"] == 1 and r["damaged"]


def test_a_completed_run_with_fewer_metric_rows_than_its_update_is_flagged(tmp_path, capsys):
    from esper_exp.analysis.load import load_run

    root = _small_sweep(tmp_path / "s")
    d = run_path(root, "cartpole", "exact", "fp32", 1)
    assert json.loads((d / "run.json").read_text())["update"] == 16
    lines = (d / "metrics.jsonl").read_text().splitlines(keepends=True)
    (d / "metrics.jsonl").write_text("".join(lines[:9]))  # whole lines: only the count is wrong
    run = load_run(d)
    assert "holds 9 updates but run.json says completed at update 16" in run.damage
    assert len(run.metrics["global_step"]) == 9
    rc, err, summary, md = _report_main(root, tmp_path / "r", capsys)
    assert rc == 1 and err.count("DAMAGED RUN EXCLUDED") == 1 and "update 16" in err
    assert [(x["cell"], x["seed"]) for x in summary["damaged"]] == [("exact/fp32", 1)]
    assert "All runs completed" not in md


def test_a_healthy_sweep_exits_0_with_no_damage_flags(tmp_path, capsys):
    root = _small_sweep(tmp_path / "s")
    rc, err, summary, md = _report_main(root, tmp_path / "r", capsys)
    assert rc == 0 and "DAMAGED" not in err
    assert summary["damaged"] == [] and "Damaged runs" not in md
    assert "All runs completed; no missing, duplicate or unreadable runs." in md


def test_a_metric_whose_values_are_all_nan_strings_loads_as_nan_floats(tmp_path):
    from esper_exp.analysis.load import load_run

    d = write_run(tmp_path / "run", total_timesteps=8 * 512)
    rows = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        r["grad_norm"] = "NaN"  # how runformat writes a non-finite float (strict JSON)
    rows[2]["value_loss"] = "Infinity"
    (d / "metrics.jsonl").write_text("".join(json.dumps(r, allow_nan=False) + "\n" for r in rows))
    run = load_run(d)
    assert run.damage is None
    g = run.metrics["grad_norm"]
    assert g.dtype == np.float64 and len(g) == 8 and np.isnan(g).all() and not run.absent["grad_norm"].any()
    assert run.metrics["value_loss"][2] == np.inf
    assert run.nonfinite_summary()["nonfinite_metric_updates"] == 8


def test_pilot_reads_only_the_largest_sd_and_gives_the_registered_seed_count(sweep, tmp_path, capsys):
    """esper-report --pilot (issue 13's pre-registered pilot rule): the largest per env x cell SD (ddof 1) of the
    normalised AUC, the seed count it gives, and nothing about contrasts."""
    import csv
    import statistics

    from esper_exp.analysis.pilot import seed_count
    from esper_exp.analysis.report import main

    assert seed_count(0.3, 0.3, 30) == 30 and seed_count(0.1, 0.3, 30) == 30
    assert seed_count(0.45, 0.3, 30) == 70  # 10 * ceil(3 * 2.25)
    assert seed_count(0.31, 0.3, 30) == 40  # any raise is to a multiple of 10
    # the same SDs as the README's script over a full report's runs.csv
    full = tmp_path / "full"
    run_report(sweep, full, reps=200, curve_reps=50, seed=0, figures=False)
    groups = {}
    for r in csv.DictReader(open(full / "runs.csv")):
        if r["used_in_stats"] == "True":
            groups.setdefault((r["env"], r["cell"]), []).append(float(r["auc_norm"]))
    expected = max(statistics.stdev(v) for v in groups.values())
    out = tmp_path / "pilot"
    code = main([str(sweep), "--pilot", "--out", str(out), "--pilot-sd-max", str(expected / 2)])
    assert code == 1  # the sweep holds a damaged run (excluded, said on stderr), as esper-report itself
    res = json.loads((out / "pilot.json").read_text())
    assert res["sd"] == pytest.approx(expected, rel=1e-12) and res["seeds"] == 120  # 10 * ceil(3 * 4)
    assert sorted((g["env"], g["cell"]) for g in res["groups"]) == sorted(groups)
    assert sorted(p.name for p in out.iterdir()) == ["pilot.json", "pilot.md"]  # no decision, no figures
    assert "120 seeds" in capsys.readouterr().out
    assert main([str(sweep), "--pilot", "--pilot-sd-max", "0", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["esper-report: error: --pilot-sd-max must be > 0 (got 0.0)"]


def test_a_pilot_missing_a_registered_env_is_provisional(tmp_path, capsys):
    """A pilot run one env at a time (issue 13's plan on lent boxes): the registered envs are the sweep's own env
    sweeper parameter (multirun.yaml); while one has no runs, pilot.md / pilot.json / the summary line say
    PROVISIONAL and the count is a lower bound. With every registered env present it is the count."""
    from esper_exp.analysis.report import main

    sw = make_sweep(tmp_path / "sw", seeds=range(4), precisions=("fp32",), total_timesteps=20_000)
    (sw / "multirun.yaml").write_text("hydra:\n  sweeper:\n    params:\n      env: cartpole,hopper\n"
                                      "      seed: range(0,4)\n")
    assert main([str(sw), "--pilot", "--out", str(tmp_path / "p1")]) == 0
    res = json.loads((tmp_path / "p1" / "pilot.json").read_text())
    assert res["registered_envs"] == ["cartpole", "hopper"] and res["missing_envs"] == ["hopper"]
    assert res["complete"] is False
    assert "PROVISIONAL (no runs of hopper; registered envs: cartpole, hopper)" in \
        (tmp_path / "p1" / "pilot.md").read_text()
    assert "PROVISIONAL (no runs of hopper): at least" in capsys.readouterr().out
    (sw / "multirun.yaml").write_text("hydra:\n  sweeper:\n    params:\n      env: cartpole\n")
    assert main([str(sw), "--pilot", "--out", str(tmp_path / "p2")]) == 0
    res = json.loads((tmp_path / "p2" / "pilot.json").read_text())
    assert res["complete"] is True and res["missing_envs"] == []
    assert "PROVISIONAL" not in (tmp_path / "p2" / "pilot.md").read_text() + capsys.readouterr().out
    # a run carried to the next box unfinished (interrupted) will resume and enter an SD: still provisional
    run_json = sw / "cartpole" / "tanh" / "fp32" / "seed=2" / "run.json"
    info = json.loads(run_json.read_text())
    run_json.write_text(json.dumps({**info, "status": "interrupted"}))
    assert main([str(sw), "--pilot", "--out", str(tmp_path / "p3")]) == 0
    res = json.loads((tmp_path / "p3" / "pilot.json").read_text())
    assert res["complete"] is False and res["unfinished_runs"] == {"cartpole": 1}
    assert "PROVISIONAL (1 run(s) of cartpole not finished): at least" in capsys.readouterr().out
    # a failed run is finished: complete again, the run left out of the SD and listed
    run_json.write_text(json.dumps({**info, "status": "failed", "reason": "test"}))
    assert main([str(sw), "--pilot", "--out", str(tmp_path / "p4")]) == 0
    res = json.loads((tmp_path / "p4" / "pilot.json").read_text())
    assert res["complete"] is True and res["failed_runs"] == ["cartpole tanh/fp32 seed=2"]
    assert [g["n"] for g in res["groups"] if g["cell"] == "tanh/fp32"] == [3]
    assert "Failed runs (finished, left out of the SDs): cartpole tanh/fp32 seed=2" in \
        (tmp_path / "p4" / "pilot.md").read_text()


def test_the_pilot_is_the_first_n_registered_seeds_whatever_else_the_sweep_holds(tmp_path, capsys):
    """The study goes on in the pilot's sweep directory (issue 13: seeds 11-20 run there after the pilot's 1-10):
    the pilot reads the first --pilot-n of the registered seed list only, so later seeds, finished or not, neither
    move its SD nor make it provisional; a pilot seed with no run directory yet makes it PROVISIONAL."""
    from esper_exp.analysis.report import main

    kw = dict(precisions=("fp32",), total_timesteps=20_000, seed_effect_sd=40.0)
    only = make_sweep(tmp_path / "only", seeds=range(4), **kw)  # the pilot's runs alone
    sw = make_sweep(tmp_path / "sw", seeds=range(6), **kw)  # the same runs and two later seeds
    (sw / "multirun.yaml").write_text("hydra:\n  sweeper:\n    params:\n      env: cartpole\n"
                                      "      seed: range(0,12)\n")
    later = sw / "cartpole" / "exact" / "fp32" / "seed=5" / "run.json"
    later.write_text(json.dumps({**json.loads(later.read_text()), "status": "interrupted"}))
    assert main([str(only), "--pilot", "--out", str(tmp_path / "p0")]) == 0
    assert main([str(sw), "--pilot", "--pilot-n", "4", "--out", str(tmp_path / "p1")]) == 0
    ref, res = (json.loads((tmp_path / p / "pilot.json").read_text()) for p in ("p0", "p1"))
    assert res["pilot_seeds"] == [0, 1, 2, 3] and res["runs_of_later_seeds"] == 4
    assert res["complete"] is True and res["unfinished_runs"] == {} and res["sd"] == ref["sd"]
    assert [g["n"] for g in res["groups"]] == [4, 4]
    assert "Pilot seeds: 0-3 (the first 4 of the registered seed list); runs of later seeds in the sweep, " \
        "left out: 4." in (tmp_path / "p1" / "pilot.md").read_text()
    capsys.readouterr()
    assert main([str(sw), "--pilot", "--pilot-n", "8", "--out", str(tmp_path / "p2")]) == 0  # seeds 6, 7 not run
    res = json.loads((tmp_path / "p2" / "pilot.json").read_text())
    assert res["complete"] is False and res["unlaunched_runs"] == {"cartpole": 4}
    assert res["unfinished_runs"] == {"cartpole": 1}  # seed 5 is a pilot seed now
    assert "PROVISIONAL (1 run(s) of cartpole not finished; 4 pilot run(s) of cartpole not launched): at least" \
        in capsys.readouterr().out
    assert main([str(sw), "--pilot", "--pilot-n", "0", "--out", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err.strip() == "esper-report: error: --pilot-n must be a positive integer (got 0)"


def test_vs_compares_two_sweeps_cell_by_cell(tmp_path, capsys):
    """esper-report SWEEP --vs OTHER (issue 13's twins, e.g. CPU vs CUDA): per shared cell, OTHER - SWEEP by SWEEP's
    rule: a copy of the same runs is equivalent (paired differences all 0), a planted shift is different."""
    from esper_exp.analysis.report import main

    kw = dict(seeds=range(8), precisions=("fp32",), total_timesteps=40_000, data_seed_offset=3, seed_effect_sd=30.0)
    a = make_sweep(tmp_path / "a", **kw)
    b = make_sweep(tmp_path / "b", shifts={"tanh/fp32": 300.0}, **kw)
    make_sweep(tmp_path / "b", gelus=("exact",), **{**kw, "seeds": range(3), "precisions": ("bf16",)})  # only in b
    out = tmp_path / "twin"
    assert main([str(a), "--vs", str(b), "--out", str(out), "--reps", "500"]) == 0
    res = json.loads((out / "twin.json").read_text())
    rows = {r["b"]: r for r in res["rows"] if r["scope"] == "all"}
    assert sorted(rows) == ["A:exact/fp32", "A:tanh/fp32"]  # shared cells only
    same, shifted = rows["A:exact/fp32"], rows["A:tanh/fp32"]
    assert same["verdict"] == "equivalent" and same["estimate"] == 0 and same["n"] == 8
    assert shifted["verdict"] == "different" and shifted["estimate"] > 0
    assert "2 cells compared (1 different, 1 equivalent)" in capsys.readouterr().out
    assert main([str(a), "--vs", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")]) == 2
    assert main([str(a), "--vs", str(b), "--pilot"]) == 2
