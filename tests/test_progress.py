"""experiments/gpu_throughput/progress.py: a sweep's progress from its run files; over an interval, the mean times
are over the runs that trained in it (not over finished runs too), and the wall time outside updates follows."""
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
        d.joinpath("run.json").write_text(json.dumps({"status": "completed", "global_step": 1000, "update": 10}
                                                     if done else {"status": "running"}))
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
