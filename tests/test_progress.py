"""experiments/gpu_throughput/progress.py: a sweep's progress from its run files; over an interval, the mean times
are over the runs that trained in it (not over finished runs too), per group of runs trained together and summed over
the groups (which ran one after another), and the wall time outside updates follows."""
import importlib.util
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("progress", ROOT / "experiments" / "gpu_throughput" / "progress.py")
progress = importlib.util.module_from_spec(spec)
spec.loader.exec_module(progress)


def _metrics(run: Path, updates: int) -> None:
    """updates records of 100 env steps, each with 2.0 + 0.5 + 0.25 s of env, inference and update time"""
    run.joinpath("metrics.jsonl").write_text("".join(json.dumps(
        {"global_step": 100 * u, "update": u, "time_env": 2.0, "time_inference": 0.5, "time_update": 0.25}) + "\n"
        for u in range(1, updates + 1)))


def test_interval_means_are_over_the_runs_that_trained(tmp_path, monkeypatch):
    sweep = tmp_path / "sweep"
    runs = {name: sweep / name for name in ("a-exact-fp32/seed=1", "a-exact-fp32/seed=2", "a-tanh-fp32/seed=2")}
    for name, d in runs.items():
        d.mkdir(parents=True)
        done = name.endswith("seed=1")  # a completed run carried as its run.json alone (carry.py)
        group = {"size": 2, "members": [str(runs["a-exact-fp32/seed=2"]), str(runs["a-tanh-fp32/seed=2"])]}
        d.joinpath("run.json").write_text(json.dumps({"status": "completed", "global_step": 1000, "update": 10}
                                                     if done else {"status": "running", "group": group}))
        if not done:
            _metrics(d, 4)
    before, after = tmp_path / "before.json", tmp_path / "after.json"
    monkeypatch.setattr(sys, "argv", ["progress.py", str(sweep), str(before)])
    progress.main()
    for name in ("a-exact-fp32/seed=2", "a-tanh-fp32/seed=2"):
        _metrics(runs[name], 10)  # 6 more updates each
    monkeypatch.setattr(sys, "argv", ["progress.py", str(sweep), str(after), str(before), str(time.time() - 20.0)])
    progress.main()
    result = json.loads(after.read_text())
    iv = result["interval"]
    assert iv["env_steps"] == 2 * 600 and iv["runs_advanced"] == 2
    assert (iv["time_env_s_member_mean"], iv["time_inference_s_member_mean"], iv["time_update_s_member_mean"]) == \
        (12.0, 3.0, 1.5)  # over the two runs that trained, not over all three
    assert abs(iv["outside_updates_s"] - (iv["wall_s"] - 16.5)) < 1e-9  # wall minus the three means
    assert result["runs"]["a-exact-fp32/seed=1"]["steps"] == 1000
    assert result["statuses"] == {"completed": 1, "running": 2}


def test_groups_that_ran_one_after_another_add_their_update_times(tmp_path, monkeypatch):
    """An interval in which one group finished and the next started: each group's member mean counts once, so the
    second group's updates are not taken for time outside updates."""
    sweep = tmp_path / "sweep"
    groups = {"a": [sweep / f"a-exact-fp32/seed={i}" for i in (1, 2)], "b": [sweep / f"b-exact-fp32/seed={i}" for i in (1, 2, 3)]}
    for members in groups.values():
        for d in members:
            d.mkdir(parents=True)
            d.joinpath("run.json").write_text(json.dumps(
                {"status": "running", "group": {"size": len(members), "members": [str(m) for m in members]}}))
    for d in groups["a"]:
        _metrics(d, 4)
    before, after = tmp_path / "before.json", tmp_path / "after.json"
    monkeypatch.setattr(sys, "argv", ["progress.py", str(sweep), str(before)])
    progress.main()
    for d in groups["a"]:
        _metrics(d, 10)  # group a: 6 more updates, then group b: 8 updates
    for d in groups["b"]:
        _metrics(d, 8)
    monkeypatch.setattr(sys, "argv", ["progress.py", str(sweep), str(after), str(before), str(time.time() - 60.0)])
    progress.main()
    iv = json.loads(after.read_text())["interval"]
    assert iv["runs_advanced"] == 5 and iv["env_steps"] == 2 * 600 + 3 * 800
    assert iv["groups"]["a-exact-fp32/seed=1"]["runs"] == 2 and iv["groups"]["b-exact-fp32/seed=1"]["runs"] == 3
    assert iv["groups"]["b-exact-fp32/seed=1"]["time_env_s_member_mean"] == 16.0
    assert (iv["time_env_s_member_mean"], iv["time_inference_s_member_mean"], iv["time_update_s_member_mean"]) == \
        (12.0 + 16.0, 3.0 + 4.0, 1.5 + 2.0)
    assert abs(iv["outside_updates_s"] - (iv["wall_s"] - 16.5 - 22.0)) < 1e-9


def test_between_recomputes_a_saved_interval_with_the_groups_of_the_run_files(tmp_path, monkeypatch, capsys):
    """--between: two saved outputs without groups (as session 11's box wrote them), the groups from the run files,
    the wall time between the outputs' `when`."""
    sweep = tmp_path / "sweep"
    members = {g: [sweep / f"{g}-exact-fp32/seed={i}" for i in (1, 2)] for g in ("a", "b")}
    saved = {}
    for step, counts in (("before", {"a": 4, "b": 0}), ("after", {"a": 10, "b": 8})):
        for g, ms in members.items():
            for d in ms:
                d.mkdir(parents=True, exist_ok=True)
                d.joinpath("run.json").write_text(json.dumps({"status": "running", "group": {"members": [str(m) for m in ms]}}))
                if counts[g]:
                    _metrics(d, counts[g])
        out = tmp_path / f"{step}.json"
        monkeypatch.setattr(sys, "argv", ["progress.py", str(sweep), str(out)])
        progress.main()
        data = json.loads(out.read_text())
        for r in data["runs"].values():
            del r["group"]
        data["when"] = "2026-11-24T04:00:00Z" if step == "before" else "2026-11-24T04:01:40Z"
        out.write_text(json.dumps(data))
        saved[step] = out
    capsys.readouterr()
    monkeypatch.setattr(sys, "argv", ["progress.py", "--between", str(saved["before"]), str(saved["after"]), str(sweep)])
    progress.main()
    iv = json.loads(capsys.readouterr().out)
    assert iv["wall_s"] == 100 and iv["env_steps"] == 2 * 600 + 2 * 800 and set(iv["groups"]) == \
        {"a-exact-fp32/seed=1", "b-exact-fp32/seed=1"}
    assert abs(iv["outside_updates_s"] - (100 - 16.5 - 22.0)) < 1e-9


def test_a_wrong_argument_count_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    for argv in (["progress.py"], ["progress.py", str(tmp_path), str(tmp_path / "out.json"), "before.json"],
                 ["progress.py", "--between", "a.json", "b.json"]):
        monkeypatch.setattr(sys, "argv", argv)
        try:
            progress.main()
        except SystemExit as e:
            assert e.code == 2
        else:
            raise AssertionError(f"{argv} was accepted")
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "usage: progress.py" in err
    assert not (tmp_path / "out.json").exists()
