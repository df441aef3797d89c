"""esper_exp/analysis/provenance.py: one row per distinct device / driver / CUDA / versions / flags / commit among a
sweep's runs, with run counts and dates, the fields that differ named; and the report's section built from it."""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from synthetic_runs import make_sweep, run_path  # noqa: E402

from esper_exp.analysis import provenance as P  # noqa: E402
from esper_exp.analysis.load import load_sweep  # noqa: E402
from esper_exp.analysis.report import run_report  # noqa: E402


def _edit(run_dir: Path, **changes) -> None:
    info = json.loads((run_dir / "run.json").read_text())
    info.update(changes)
    (run_dir / "run.json").write_text(json.dumps(info))


def _cuda(driver: str, deterministic: bool = True, tf32: bool = False) -> dict:
    return {"gpu": "NVIDIA H100 80GB HBM3", "driver": driver, "cuda_runtime": "13.0",
            "flags": {"deterministic_algorithms": deterministic, "matmul_allow_tf32": tf32, "cudnn_allow_tf32": False}}


def test_rows_group_the_runs_by_where_and_with_what_they_ran(tmp_path):
    make_sweep(tmp_path, seeds=range(4), gelus=("exact",), precisions=("fp32",), total_timesteps=4_000)
    runs = [run_path(tmp_path, "cartpole", "exact", "fp32", s) for s in range(4)]
    for s, d in enumerate(runs):  # seeds 0-2 on one box and commit; seed 3 resumed on another commit, a dirty tree
        _edit(d, device="NVIDIA H100 80GB HBM3", cuda=_cuda("580.159.04"),
              git_sha="a" * 40 if s < 3 else "b" * 40 + "-dirty",
              git_changes=[] if s < 3 else [" M tests/conftest.py"],
              **({"git_before_resume": [{"git_sha": "a" * 40, "git_changes": [], "up_to_update": 7}],
                  "cuda_before_resume": [_cuda("570.1")]} if s == 3 else {}),
              started_at=f"2026-11-2{s}T00:00:00+00:00", ended_at=f"2026-11-2{s}T01:00:00+00:00")
    rows = P.provenance(load_sweep(tmp_path).runs)
    assert [r["runs"] for r in rows] == [3, 1]
    assert rows[0]["commit"] == "a" * 12 and rows[0]["uncommitted_changes"] == "none"
    assert rows[1]["commit"] == "b" * 12 + "-dirty" and rows[1]["uncommitted_changes"] == "M tests/conftest.py"
    assert (rows[0]["first_started"], rows[0]["last_ended"]) == ("2026-11-20T00:00:00+00:00",
                                                                 "2026-11-22T01:00:00+00:00")
    assert rows[0]["driver"] == "580.159.04" and rows[0]["deterministic"] is True and rows[0]["tf32"] is False
    assert rows[1]["earlier_commits"] == "a" * 12 and rows[1]["cuda_changed_on_resume"] is True
    assert rows[0]["earlier_commits"] is None and rows[0]["cuda_changed_on_resume"] is False
    assert P.varying(rows) == ["commit", "uncommitted_changes", "earlier_commits", "cuda_changed_on_resume"]


def test_cpu_runs_take_determinism_from_the_config_and_have_no_cuda_fields(tmp_path):
    make_sweep(tmp_path, seeds=range(2), gelus=("exact",), precisions=("fp32",), total_timesteps=4_000)
    for s in range(2):
        d = run_path(tmp_path, "cartpole", "exact", "fp32", s)
        info = json.loads((d / "run.json").read_text())
        info["config"]["deterministic"] = True
        _edit(d, config=info["config"], git_changes=[])  # a clean tree
    (row,) = P.provenance(load_sweep(tmp_path).runs)
    assert row["runs"] == 2 and row["deterministic"] is True
    assert row["driver"] is None and row["tf32"] is None and row["uncommitted_changes"] == "none"
    assert P.varying([row]) == []


def test_the_report_states_the_provenance_and_what_differs(tmp_path):
    sweep = tmp_path / "sweep"
    make_sweep(sweep, seeds=range(3), gelus=("exact", "tanh"), precisions=("fp32",), total_timesteps=4_000)
    _edit(run_path(sweep, "cartpole", "tanh", "fp32", 2), device="NVIDIA H200", cuda=_cuda("580.1"))
    out = tmp_path / "report"
    run_report(sweep, out, reps=200, curve_reps=50, seed=0, figures=False)
    summary = json.loads((out / "summary.json").read_text())
    assert sorted(r["runs"] for r in summary["provenance"]) == [1, 5]
    text = (out / "report.md").read_text()
    assert "**Provenance**" in text and "The runs differ in: device, driver, cuda, deterministic, tf32." in text
    assert (out / "provenance.csv").read_text().count("\n") == 3  # header + two rows


def test_code_trees_add_a_column_only_where_runs_record_them(tmp_path):
    """run.json's code_trees (since session 19) name the code even where .git lagged the files: where any run has
    them the table gains a "code" column after the commit's, and runs under one commit with other trees differ."""
    sweep = tmp_path / "sweep"
    make_sweep(sweep, seeds=range(3), gelus=("exact",), precisions=("fp32",), total_timesteps=4_000)
    assert "code" not in P.columns(P.provenance(load_sweep(sweep).runs))  # none recorded: the table as before
    trees = {"esper_exp": "e5ab02516c837ba114e860bdbf099c369e377cfa",
             "configs": "9f375ad6ed9cf9c09a9993248d7860b9108b2076"}
    for s in range(3):
        _edit(run_path(sweep, "cartpole", "exact", "fp32", s), git_sha="a" * 40, git_changes=[],
              code_trees=trees if s < 2 else {**trees, "esper_exp": "1" * 40})
    rows = P.provenance(load_sweep(sweep).runs)
    cols = P.columns(rows)
    assert cols[cols.index("uncommitted_changes") + 1] == "code"
    assert [r["code"] for r in rows] == ["configs 9f375ad6ed9c, esper_exp e5ab02516c83",
                                         "configs 9f375ad6ed9c, esper_exp 111111111111"]
    assert P.varying(rows) == ["code"]
    out = tmp_path / "report"
    run_report(sweep, out, reps=200, curve_reps=50, seed=0, figures=False)
    text = (out / "report.md").read_text()
    assert "| code |" in text and "The runs differ in: code." in text
