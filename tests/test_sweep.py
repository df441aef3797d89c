"""Multirun sweeps end to end: layout, summary, failures that do not stop the others, skipping, submitit_local."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from esper_exp.sweep import snapshot, summarize

ESPER_TRAIN = str(Path(sys.executable).with_name("esper-train"))
TINY = ("ppo.total_timesteps=512", "ppo.num_steps=64", "tracking.wandb.mode=disabled", "tracking.progress=off",
        "device=cpu")
CELLS = {f"cartpole-{g}-{p}" for g in ("exact", "tanh") for p in ("fp32", "bf16", "fp16")}


def sweep(sweep_dir: Path, *overrides: str, rc: int = 0) -> subprocess.CompletedProcess:
    proc = subprocess.run([ESPER_TRAIN, "-m", *overrides, *TINY, f"hydra.sweep.dir={sweep_dir}"],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "HYDRA_FULL_ERROR": "1"})
    assert proc.returncode == rc, proc.stderr[-3000:]
    return proc


def read_summary(sweep_dir: Path) -> dict:
    return json.loads((sweep_dir / "summary.json").read_text())


def categories(summary: dict) -> dict[str, str]:
    return {j["job"]: j["category"] for j in summary["jobs"]}


def test_joblib_smoke_sweep_layout_summary_then_rerun_skips_everything(tmp_path):
    sw = tmp_path / "smoke"
    proc = sweep(sw, "experiment=smoke", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2")
    assert {p.name for p in sw.iterdir() if p.is_dir()} == CELLS
    for cell in CELLS:
        assert sorted(p.name for p in (sw / cell).iterdir()) == ["seed=1", "seed=2"]
        for seed in (1, 2):
            info = json.loads((sw / cell / f"seed={seed}" / "run.json").read_text())
            assert info["status"] == "completed" and info["seed"] == seed and info["global_step"] == 512
            assert info["cell"].replace("/", "-") == cell
    summary = read_summary(sw)
    assert summary["counts"] == {"completed": 12, "failed": 0, "interrupted": 0, "skipped": 0, "other": 0}
    assert summary["env_steps"] == 12 * 512
    assert "12 jobs launched: 12 completed, 0 failed, 0 interrupted, 0 skipped" in proc.stdout
    assert (sw / "summary.md").read_text().count("12 completed") == 1

    # the same command again (serial launcher this time): every run is found completed and skipped
    mtimes = {p: p.stat().st_mtime_ns for p in sw.rglob("metrics.jsonl")}
    proc = sweep(sw, "experiment=smoke")
    assert proc.stdout.count("skipped: ") == 12
    assert read_summary(sw)["counts"] == {"completed": 0, "failed": 0, "interrupted": 0, "skipped": 12, "other": 0}
    assert {p: p.stat().st_mtime_ns for p in sw.rglob("metrics.jsonl")} == mtimes

    # one more seed of one cell: only that job runs; the 12 old run dirs are reported as not launched now
    sweep(sw, "experiment=smoke", "seed=3", "model.gelu=exact", "precision=fp32")
    assert read_summary(sw)["counts"] == {"completed": 1, "failed": 0, "interrupted": 0, "skipped": 0, "other": 12}


@pytest.mark.parametrize("launcher", [pytest.param("basic", marks=pytest.mark.slow), "joblib"])
def test_a_diverging_job_fails_alone_and_the_summary_names_it(tmp_path, launcher):
    sw = tmp_path / launcher
    # the diverging job is launched first; the two after it must still complete
    proc = sweep(sw, "ppo.learning_rate=1e30,2.5e-4,1e-3", f"hydra/launcher={launcher}", "hydra.launcher.n_jobs=2"
                 if launcher == "joblib" else "seed=1", "hydra.sweep.subdir=lr${ppo.learning_rate}",
                 rc=1)  # a sweep with a failed job exits non-zero
    summary = read_summary(sw)
    assert summary["counts"]["completed"] == 2 and summary["counts"]["failed"] == 1
    assert categories(summary) == {"lr1e+30": "failed", "lr0.00025": "completed", "lr0.001": "completed"}
    failed = next(j for j in summary["jobs"] if j["category"] == "failed")
    assert "non-finite" in failed["reason"]
    assert "lr1e+30" in proc.stdout and "non-finite" in (sw / "summary.md").read_text()


def test_submitit_local_job_runs(tmp_path):
    sw = tmp_path / "submitit"
    sweep(sw, "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5", "seed=7")
    info = json.loads((sw / "cartpole-exact-fp32" / "seed=7" / "run.json").read_text())
    assert info["status"] == "completed" and info["global_step"] == 512
    assert read_summary(sw)["counts"]["completed"] == 1
    assert list((sw / ".submitit").iterdir())  # submitit's own job folder


def _fake_job(sweep_dir: Path, name: str, status: str | None) -> Path:
    job = sweep_dir / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "hydra.yaml").write_text("old\n")
    if status:
        (job / "run.json").write_text(json.dumps({"status": status, "reason": None, "global_step": 0}))
    return job


def test_summary_classifies_from_run_json_and_launch_marks(tmp_path):
    done = _fake_job(tmp_path, "done", "completed")
    crashed = _fake_job(tmp_path, "crashed", None)
    other = _fake_job(tmp_path, "other", "failed")
    before = snapshot(tmp_path)
    # relaunch three jobs: done is skipped (run.json untouched), crashed never wrote run.json,
    # killed wrote "running" and died; other was not launched
    for job in (done, crashed):
        (job / ".hydra" / "hydra.yaml").write_text("relaunched\n")
    _fake_job(tmp_path, "killed", "running")
    cats = categories(summarize(tmp_path, before))
    assert cats == {"done": "skipped", "crashed": "failed", "killed": "interrupted", "other": "other"}
    assert other.exists()


def test_wheelhouse_closure_skips_target_packages_with_their_deps_and_uses_target_markers():
    from esper_exp.wheelhouse import closure, target_env

    def item(name, *requires):
        return {"metadata": {"name": name, "version": "1.0", "requires_dist": list(requires)}}

    report = {"install": [
        item("esper-exp", "torch>=2.4", "hydra-core", "gymnasium[mujoco]>=1.1"),
        item("torch", "sympy", "setuptools; python_version >= '3.12'"), item("sympy"), item("setuptools"),
        item("hydra_core", "omegaconf", "importlib-resources; python_version < '3.9'"), item("omegaconf", "PyYAML"),
        item("PyYAML"), item("gymnasium", "numpy", "mujoco; extra == 'mujoco'", "box2d; extra == 'box2d'"),
        item("numpy"), item("mujoco"),
    ]}
    need, skipped = closure(report, "esper-exp", target_env("3.12", "x86_64"), {"torch", "numpy", "pyyaml"})
    assert set(need) == {"esper-exp", "hydra-core", "omegaconf", "gymnasium", "mujoco"}
    assert skipped == {"torch", "numpy", "pyyaml"}
    need, _ = closure(report, "esper-exp", target_env("3.12", "x86_64"), set())
    assert {"sympy", "setuptools", "torch"} <= set(need) and "box2d" not in need


def test_a_run_still_running_elsewhere_is_not_reported_dead(tmp_path):
    """Two sweeps writing into one directory: the summary must not call the other sweep's live runs dead."""
    import json
    import os
    import platform
    import subprocess
    import sys

    from esper_exp.sweep import summarize

    job = tmp_path / "cartpole-exact-fp32" / "seed=1"
    job.mkdir(parents=True)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        info = {"status": "running", "reason": None, "cell": "cartpole/exact/fp32", "seed": 1,
                "host": platform.node(), "pid": other.pid}
        (job / "run.json").write_text(json.dumps(info))
        entry = summarize(tmp_path, before={})["jobs"][0]
        assert entry["category"] == "other" and str(other.pid) in entry["reason"]
    finally:
        other.kill()
        other.wait()
    entry = summarize(tmp_path, before={})["jobs"][0]
    assert entry["category"] == "interrupted" and "died" in entry["reason"]
    assert os.getpid() != info["pid"]


@pytest.mark.slow  # 40 s; fast cover: test_grouped_launcher's SIGTERM-then-rerun test and test_group's resume test
def test_killed_sweep_rerun_finishes_only_what_is_missing(tmp_path):
    import signal
    import time

    sw = tmp_path / "killed"
    args = [ESPER_TRAIN, "-m", "experiment=smoke", "ppo.total_timesteps=4096", "ppo.num_steps=64",
            "tracking.wandb.mode=disabled", "tracking.progress=off", "device=cpu", f"hydra.sweep.dir={sw}"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def completed() -> list[Path]:
        return [p.parent for p in sw.rglob("run.json") if json.loads(p.read_text() or "{}").get("status") == "completed"]

    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and len(completed()) < 3:
        time.sleep(0.1)
    assert proc.poll() is None, "the sweep finished before it could be killed"
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143
    done_before = completed()
    assert 3 <= len(done_before) < 12
    # an interrupted sweep writes its summary too: what completed, the job that was stopped, by which signal
    stopped = read_summary(sw)
    assert stopped["interrupted_by"] == "SIGTERM" and stopped["counts"]["completed"] == len(done_before)
    assert stopped["counts"]["interrupted"] <= 1 and "stopped by SIGTERM" in (sw / "summary.md").read_text()
    assert "sweep summary:" in out
    mtimes = {d: (d / "metrics.jsonl").stat().st_mtime_ns for d in done_before}

    rerun = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    counts = read_summary(sw)["counts"]
    assert counts["completed"] + counts["skipped"] == 12 and counts["failed"] == counts["interrupted"] == 0
    assert counts["skipped"] == len(done_before)
    assert len(completed()) == 12
    assert {d: (d / "metrics.jsonl").stat().st_mtime_ns for d in done_before} == mtimes  # untouched
