"""esper-report --recompute: a report's verdicts recomputed from its runs.csv and summary.json alone (the run
directories stay out of git) equal the stored ones; a changed per-run value is caught; bad input is one line."""
import csv
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from synthetic_runs import make_sweep  # noqa: E402

from esper_exp.analysis.report import main, run_report  # noqa: E402


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """Two envs (so an 'all envs' scope too), a planted tanh shift, one seed missing from one cell."""
    root = tmp_path_factory.mktemp("sweep")
    for env in ("cartpole", "halfcheetah"):
        make_sweep(root / env, env=env, seeds=range(6), precisions=("fp32", "bf16"), shifts={"tanh/fp32": -30.0},
                   skip={("exact/bf16", 2)}, total_timesteps=8_000, seed_effect_sd=20.0)
    out = tmp_path_factory.mktemp("report")
    run_report(root, out, reps=300, curve_reps=50, seed=3, figures=False)
    # the run directories are gone: only the report's files remain, as in the repository
    shutil.rmtree(root)
    return out


def test_the_verdicts_recompute_identically_from_the_report_files(report, capsys):
    assert main([str(report), "--recompute"]) == 0
    out = capsys.readouterr().out
    assert "all envs: tanh/fp32 - exact/fp32:" in out and "cartpole: tanh/bf16 - exact/bf16:" in out
    assert out.rstrip().endswith("identical to summary.json")


def test_a_changed_per_run_value_is_named(report, tmp_path, capsys):
    copy = tmp_path / "report"
    shutil.copytree(report, copy)
    with open(copy / "runs.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    target = next(r for r in rows if r["env"] == "halfcheetah" and r["cell"] == "tanh/fp32" and r["seed"] == "4")
    target["auc_norm"] = str(float(target["auc_norm"]) + 0.5)
    with open(copy / "runs.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    assert main([str(copy), "--recompute"]) == 1
    err = capsys.readouterr().err
    assert "DIFFERS decision: halfcheetah tanh/fp32 - exact/fp32: estimate stored" in err
    assert "DIFFERS decision: all envs tanh/fp32 - exact/fp32: estimate stored" in err


@pytest.mark.parametrize("case", ["no report", "with --rule"])
def test_bad_input_is_one_line_exit_2(case, report, tmp_path, capsys):
    argv = [str(tmp_path), "--recompute"] if case == "no report" else \
        [str(report), "--recompute", "--rule", "delta=0.05"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("esper-report: ")
    assert ("not a readable esper-report directory" in err[0]) if case == "no report" else ("--rule" in err[0])
