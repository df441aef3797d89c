"""esper-repro: identical for a fresh run, first divergence for an altered one, exit 2 for bad input."""

import json
import shutil
import subprocess
import sys

from conftest import read_jsonl

from esper_exp.repro import first_divergence, main

TINY = ("env=cartpole", "ppo.total_timesteps=512", "ppo.num_steps=64")


def test_repro_identical_then_names_first_divergence(train_run, tmp_path, capsys):
    run_dir = train_run(*TINY, "precision=bf16", name="orig")
    assert main([str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "\nidentical" in out and "diverges" not in out

    altered = tmp_path / "altered"
    shutil.copytree(run_dir, altered)
    metrics = read_jsonl(altered / "metrics.jsonl")
    assert len(metrics) == 2
    stored_value = metrics[1]["value_loss"]
    metrics[1]["value_loss"] = stored_value * (1 + 1e-6)
    (altered / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    assert main([str(altered), "--out", str(tmp_path / "rerun")]) == 1
    out = capsys.readouterr().out
    line = next(l for l in out.splitlines() if l.startswith("diverges"))
    assert "update 2" in line and "value_loss" in line
    assert repr(metrics[1]["value_loss"]) in line and repr(stored_value) in line
    assert "\nidentical" not in out


def test_first_divergence_ignores_wall_clock_and_reports_length():
    a = [{"update": 1, "global_step": 256, "loss": 1.0, "sps": 10.0}]
    assert first_divergence(a, [{"update": 1, "global_step": 256, "loss": 1.0, "sps": 99.0}]) is None
    assert first_divergence(a, [{**a[0], "loss": float("nan")}]) == \
        "diverges at update 1 (global_step 256): loss: stored 1.0, re-run nan"
    assert "stored has 1 updates, re-run has 2" in first_divergence(a, a + a)


def test_repro_bad_input_exits_2_with_one_line(tmp_path):
    for target in (tmp_path / "missing", tmp_path):
        proc = subprocess.run([sys.executable, "-m", "esper_exp.repro", str(target)], capture_output=True, text=True)
        assert proc.returncode == 2, proc
        assert proc.stdout == "" and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
    (tmp_path / "run.json").write_text(json.dumps({"status": "running", "config": {}}))
    proc = subprocess.run([sys.executable, "-m", "esper_exp.repro", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 2 and "not finished" in proc.stderr


def test_repro_refuses_a_damaged_run_before_re_running_and_leaves_no_temp_dir(train_run, tmp_path):
    import os

    run_dir = train_run(*TINY, name="orig")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp)}
    text = (run_dir / "metrics.jsonl").read_text()
    for damaged, why in ((text[: len(text) - 40], "line 2 is cut off"),
                         (text.splitlines(keepends=True)[0], "holds 1 updates but run.json says completed at update 2")):
        (run_dir / "metrics.jsonl").write_text(damaged)
        proc = subprocess.run([sys.executable, "-m", "esper_exp.repro", str(run_dir)], capture_output=True,
                              text=True, env=env, timeout=300)
        assert proc.returncode == 2, proc.stderr
        assert proc.stdout == "" and len(proc.stderr.strip().splitlines()) == 1 and why in proc.stderr, proc.stderr
        assert not list(tmp.iterdir())


def test_repro_removes_its_temp_dir_when_the_re_run_crashes(train_run, tmp_path, monkeypatch):
    import tempfile

    import pytest

    from esper_exp import repro

    run_dir = train_run(*TINY, name="orig")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))

    def crash(config, out_dir, device, *group):
        (out_dir / "metrics.jsonl").write_text("")
        raise RuntimeError("boom")

    monkeypatch.setattr(repro, "rerun", crash)
    with pytest.raises(RuntimeError):
        main([str(run_dir)])
    assert not list(tmp.iterdir())


def test_a_cuda_group_member_is_re_run_with_its_whole_group(tmp_path, monkeypatch):
    # on CUDA a member's numbers depend on its group, so esper-repro re-runs the group in the stored layout and
    # graph mode; CPU members are re-run alone (they compute bitwise what they compute alone)
    import pytest
    from conftest import make_cfg

    from esper_exp import repro
    from esper_exp.train import run_group

    jobs = [(make_cfg(*TINY, f"seed={s}"), tmp_path / "sweep" / "cell" / f"seed={s}") for s in (1, 2, 3)]
    assert run_group(jobs) == ["completed"] * 3
    stored = repro.load_stored(jobs[1][1])
    assert repro.group_layout(jobs[1][1], stored, None) is None  # a CPU run: alone
    assert repro.group_layout(jobs[1][1], {**stored, "cuda": {"gpu": "H100"}}, None) is not None  # a CUDA run
    assert repro.group_layout(jobs[1][1], stored, "cpu") is None
    configs, k = repro.group_layout(jobs[1][1], stored, "cuda")
    assert k == 1 and [c["seed"] for c in configs] == [1, 2, 3]
    # the sweep moved elsewhere: members found beside the run
    moved = tmp_path / "moved"
    (tmp_path / "sweep").rename(moved)
    configs, k = repro.group_layout(moved / "cell" / "seed=2", stored, "cuda")
    assert [c["seed"] for c in configs] == [1, 2, 3]
    # a missing member is one clear error
    import shutil

    shutil.rmtree(moved / "cell" / "seed=3")
    with pytest.raises(repro.BadInput, match="member 2"):
        repro.group_layout(moved / "cell" / "seed=2", stored, "cuda")
    # the group re-run (here on CPU, forced through the group path) reproduces the member, with the graph flag restored
    monkeypatch.setenv("ESPER_CUDA_GRAPHS", "1")
    members = [repro.load_stored(moved / "cell" / "seed=1")["config"], stored["config"], {**stored["config"], "seed": 3}]
    status, info, target = repro.rerun(stored["config"], tmp_path / "re", None, (members, 1), cuda_graphs=False)
    assert status == "completed" and target == tmp_path / "re" / "member-1"
    assert repro.compare(moved / "cell" / "seed=2", target, stored, info)[0]
    import os

    assert os.environ["ESPER_CUDA_GRAPHS"] == "1"


def test_a_mixed_cuda_group_member_is_re_run_with_its_cells(tmp_path, monkeypatch):
    # a mixed group (several cells in one process, the GPU sweep's layout): the group's members are found in their
    # cells' directories, also after the sweep moved, and the group re-run reproduces the member
    from conftest import make_cfg

    from esper_exp import repro
    from esper_exp.train import run_group

    cells = [("exact", "fp32", 1), ("tanh", "bf16", 1), ("tanh", "bf16", 2)]
    jobs = [(make_cfg(*TINY, f"model.gelu={g}", f"precision={p}", f"seed={s}"), tmp_path / "sweep" / f"{g}-{p}" /
             f"seed={s}") for g, p, s in cells]
    assert run_group(jobs) == ["completed"] * 3
    (tmp_path / "sweep").rename(tmp_path / "moved")
    run_dir = tmp_path / "moved" / "tanh-bf16" / "seed=1"
    stored = repro.load_stored(run_dir)
    configs, k = repro.group_layout(run_dir, stored, "cuda")
    assert k == 1 and [(c["model"]["gelu"], c["precision"]["name"], c["seed"]) for c in configs] == cells
    monkeypatch.setenv("ESPER_CUDA_GRAPHS", "1")
    status, info, target = repro.rerun(stored["config"], tmp_path / "re", None, (configs, k), cuda_graphs=False)
    assert status == "completed" and repro.compare(run_dir, target, stored, info)[0]
