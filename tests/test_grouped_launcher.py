"""The grouped launcher (hydra/launcher=grouped, esper_exp/launch.py): a sweep's jobs trained as groups.

Same layout, .hydra files, summary and metrics as the joblib launcher; group formation; SIGTERM, resume and skip
on re-run; the submitit_local backend; a group process that dies does not stop the others; Slurm parameters.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from esper_exp.launch import form_groups

ESPER_TRAIN = str(Path(sys.executable).with_name("esper-train"))
TINY = ("ppo.num_steps=64", "tracking.wandb.mode=disabled", "tracking.progress=off", "device=cpu")
WALL_CLOCK = {"sps", "time_env", "time_inference", "time_update"}


def command(sweep_dir: Path, *overrides: str, steps: int = 512) -> list[str]:
    return [ESPER_TRAIN, "-m", *overrides, f"ppo.total_timesteps={steps}", *TINY, f"hydra.sweep.dir={sweep_dir}"]


def sweep(sweep_dir: Path, *overrides: str, steps: int = 512) -> subprocess.CompletedProcess:
    proc = subprocess.run(command(sweep_dir, *overrides, steps=steps), capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HYDRA_FULL_ERROR": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def summary(sweep_dir: Path) -> dict:
    return json.loads((sweep_dir / "summary.json").read_text())


def run_json(run_dir: Path) -> dict:
    return json.loads((run_dir / "run.json").read_text())


def records(path: Path, drop=WALL_CLOCK) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in drop} for line in path.read_text().splitlines()]


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def comparable_hydra_yaml(path: Path, sweep_dir: Path) -> str:
    """hydra.yaml without what differs by design between two launchers: the launcher node and choice, the sweep dir."""
    cfg = OmegaConf.load(path)
    del cfg.hydra["launcher"]
    cfg.hydra.runtime.choices["hydra/launcher"] = "LAUNCHER"
    cfg.hydra.overrides.hydra = [o for o in cfg.hydra.overrides.hydra if not o.startswith("hydra/launcher=")]
    return OmegaConf.to_yaml(cfg).replace(str(sweep_dir), "SWEEP_DIR")


def test_grouped_smoke_sweep_is_the_joblib_sweep_with_groups(tmp_path):
    grouped, joblib = tmp_path / "grouped", tmp_path / "joblib"
    proc = sweep(grouped, "experiment=smoke", "hydra/launcher=grouped", "hydra.launcher.n_jobs=2")
    sweep(joblib, "experiment=smoke", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2")

    # same files, same summary
    assert tree(grouped) == tree(joblib)
    jobs = sorted(p.parent.relative_to(grouped) for p in grouped.rglob("run.json"))
    assert len(jobs) == 12 and all(str(j).endswith(("seed=1", "seed=2")) for j in jobs)
    assert summary(grouped)["counts"] == summary(joblib)["counts"] == {
        "completed": 12, "failed": 0, "interrupted": 0, "skipped": 0, "other": 0}
    assert "12 jobs launched: 12 completed, 0 failed, 0 interrupted, 0 skipped" in proc.stdout
    for job in jobs:
        # Hydra's files as run_job writes them (hydra.yaml: up to the launcher and the sweep dir), same job id/num
        for name in ("config.yaml", "overrides.yaml"):
            assert (grouped / job / ".hydra" / name).read_text() == (joblib / job / ".hydra" / name).read_text()
        assert (comparable_hydra_yaml(grouped / job / ".hydra" / "hydra.yaml", grouped)
                == comparable_hydra_yaml(joblib / job / ".hydra" / "hydra.yaml", joblib))
        # the same training, bit for bit on CPU
        assert records(grouped / job / "metrics.jsonl") == records(joblib / job / "metrics.jsonl")
        assert (grouped / job / "episodes.jsonl").read_text() == (joblib / job / "episodes.jsonl").read_text()
        assert run_json(grouped / job)["status"] == "completed"

    # the groups: one process per cell (its two seeds), six processes, none of them reused
    pids = {str(job): run_json(grouped / job)["pid"] for job in jobs}
    cells = {str(job.parent) for job in jobs}
    assert len(cells) == 6
    for cell in cells:
        assert pids[f"{cell}/seed=1"] == pids[f"{cell}/seed=2"]
    assert len(set(pids.values())) == 6


def test_form_groups_same_key_chunks_of_at_most_max_members_in_order():
    keys = ["a", "b", "a", "a", "c", "b", "a"]
    assert form_groups(keys, 10) == [[0, 2, 3, 6], [1, 5], [4]]
    assert form_groups(keys, 2) == [[0, 2], [1, 5], [3, 6], [4]]
    assert form_groups(keys, 3) == [[0, 2], [1, 5], [3, 6], [4]]  # 4 members, at most 3: 2 + 2, not 3 + 1
    assert form_groups(keys, 1) == [[i] for i in range(7)]
    for max_members in range(1, 9):
        groups = form_groups(keys, max_members)
        assert sorted(i for g in groups for i in g) == list(range(7))  # every job exactly once
        assert all(len(g) <= max_members and len({keys[i] for i in g}) == 1 and g == sorted(g) for g in groups)
        assert [g[0] for g in groups] == sorted(g[0] for g in groups)
    assert [len(g) for g in form_groups(["k"] * 12, 10)] == [6, 6]
    assert [len(g) for g in form_groups(["k"] * 25, 10)] == [9, 8, 8]
    assert form_groups([], 4) == []
    with pytest.raises(ValueError):
        form_groups(keys, 0)


def test_group_keys_of_composed_jobs(tmp_path):
    """The launcher composes each job as Hydra does and groups by esper_exp.train.group_key: seeds together."""
    from hydra import compose, initialize_config_dir

    from esper_exp.launch import GroupedLaunch
    from esper_exp.train import CONFIG_DIR

    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfgs = [compose("train", overrides=[*o, *TINY], return_hydra_config=True)
                for o in (["seed=1"], ["seed=2"], ["seed=1", "precision=bf16"], ["seed=3"])]
    keys, limits, order = GroupedLaunch().group_keys(cfgs)
    assert limits == [10] * 4 and form_groups(keys, limits, order) == [[0, 1, 3], [2]]  # CPU: one cell per group
    # mix_cells: the cells share a group, its members sorted by cell (each cell one contiguous segment)
    assert form_groups(*GroupedLaunch(mix_cells=True).group_keys(cfgs)) == [[2, 0, 1, 3]]
    assert form_groups(*GroupedLaunch(mix_cells=True, max_members=2).group_keys(cfgs)) == [[2, 0], [1, 3]]


def test_on_cuda_jobs_mix_cells_in_one_group_per_gpu():
    """auto (the default): jobs on CUDA mix cells and form one group per visible GPU (here none: one group); the
    applied-update probe, model.compile and checkpointing keep a job out of mixed groups."""
    from hydra import compose, initialize_config_dir

    from esper_exp.launch import GroupedLaunch
    from esper_exp.train import CONFIG_DIR

    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfgs = [compose("train", overrides=[*o, *TINY, "device=cuda"], return_hydra_config=True)
                for o in [[f"seed={s}", f"precision={p}", f"model.gelu={g}"] for s in range(1, 13)
                          for p in ("fp32", "bf16") for g in ("tanh", "exact")]
                + [["seed=1", "drift.probe_every=2"], ["seed=2", "drift.probe_every=2"]]]
    groups = form_groups(*GroupedLaunch().group_keys(cfgs))
    assert [len(g) for g in groups] == [48, 2]
    cells = [(cfgs[i].model.gelu, cfgs[i].precision.name) for i in groups[0]]
    # by precision, then GELU: bf16 exact, bf16 tanh, fp32 exact, fp32 tanh (one segment per precision)
    assert cells == sorted(cells, key=lambda c: (c[1], c[0])) and len(set(cells)) == 4
    with pytest.raises(ValueError, match="mix_cells='sometimes' is not allowed; allowed: auto, true, false"):
        GroupedLaunch(mix_cells="sometimes")
    with pytest.raises(ValueError, match="max_members=0 is not allowed; allowed: auto or an integer >= 1"):
        GroupedLaunch(max_members=0)


def _lines(path: Path) -> int:
    try:
        return len(path.read_text().splitlines())
    except OSError:
        return 0


def _dead(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_sigterm_stops_every_group_with_checkpoints_then_rerun_resumes_and_then_skips(tmp_path):
    from hydra import compose, initialize_config_dir

    from esper_exp.train import CONFIG_DIR, run_group

    def make_cfg(*overrides):
        with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
            return compose("train", overrides=list(overrides))

    sw, ref = tmp_path / "stopped", tmp_path / "reference"
    args = ("seed=1,2", "hydra/launcher=grouped")
    steps, updates = 2048, 8
    proc = subprocess.Popen(command(sw, *args, steps=steps), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    first = sw / "cartpole-exact-fp32" / "seed=1"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and _lines(first / "metrics.jsonl") < 2:
        time.sleep(0.05)
    assert proc.poll() is None, "the sweep ended before it could be stopped"
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-3000:]
    assert "interrupted (SIGTERM)" in err
    stopped = [p.parent for p in sw.rglob("run.json")]
    assert stopped
    for run_dir in stopped:  # every started member stopped at an update boundary, checkpointed there
        info = run_json(run_dir)
        assert info["status"] == "interrupted" and 0 < info["update"] < updates, info
        ckpts = sorted((run_dir / "checkpoints").glob("ckpt-*.pt"))
        assert int(ckpts[-1].stem.split("-")[1]) == info["update"]
        assert _dead(info["pid"])  # no group process left behind

    rerun = sweep(sw, *args, steps=steps)
    assert summary(sw)["counts"] == {"completed": 2, "failed": 0, "interrupted": 0, "skipped": 0, "other": 0}
    for run_dir in stopped:
        assert run_json(run_dir)["resumed_at"], rerun.stdout
    for seed in (1, 2):  # equal to the same runs never interrupted (in this process: a group of one each)
        job = sw / "cartpole-exact-fp32" / f"seed={seed}"
        assert run_json(job)["status"] == "completed" and run_json(job)["global_step"] == steps
        assert run_group([(make_cfg(f"seed={seed}", f"ppo.total_timesteps={steps}", *TINY), ref / job.name)]) == [
            "completed"]
        assert records(job / "metrics.jsonl") == records(ref / job.name / "metrics.jsonl")
        assert (job / "episodes.jsonl").read_text() == (ref / job.name / "episodes.jsonl").read_text()

    # once more: everything is found completed and skipped, nothing rewritten
    mtimes = {p: p.stat().st_mtime_ns for p in sw.rglob("metrics.jsonl")}
    sweep(sw, *args, steps=steps)
    assert summary(sw)["counts"] == {"completed": 0, "failed": 0, "interrupted": 0, "skipped": 2, "other": 0}
    assert {p: p.stat().st_mtime_ns for p in sw.rglob("metrics.jsonl")} == mtimes


def test_submitit_local_backend_runs_a_group_as_one_task(tmp_path):
    sw = tmp_path / "submitit"
    sweep(sw, "seed=1,2", "hydra/launcher=grouped", "hydra.launcher.backend=submitit_local",
          "hydra.launcher.timeout_min=5")
    assert summary(sw)["counts"] == {"completed": 2, "failed": 0, "interrupted": 0, "skipped": 0, "other": 0}
    runs = [sw / "cartpole-exact-fp32" / f"seed={s}" for s in (1, 2)]
    assert run_json(runs[0])["pid"] == run_json(runs[1])["pid"]  # one group
    task_dirs = [p.name for p in (sw / ".submitit").iterdir() if p.name != "%j"]
    assert len(task_dirs) == 1  # one submitit task, its id in the members' hydra.yaml (as hydra's submitit launcher)
    assert [str(OmegaConf.load(d / ".hydra" / "hydra.yaml").hydra.job.id) for d in runs] == task_dirs * 2
    assert "completed 512 steps" in next((sw / ".submitit" / task_dirs[0]).glob("*_log.out")).read_text()


def test_a_group_process_that_dies_does_not_stop_the_other_groups(tmp_path):
    sw = tmp_path / "crash"
    proc = subprocess.Popen(command(sw, "seed=1,2", "hydra/launcher=grouped", "hydra.launcher.max_members=1",
                                    "hydra.launcher.n_jobs=2", steps=16384),  # long enough not to end first
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    victim, other = (sw / "cartpole-exact-fp32" / f"seed={s}" for s in (1, 2))
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and min(_lines(victim / "metrics.jsonl"),
                                                                 _lines(other / "metrics.jsonl")) < 2:
        time.sleep(0.05)
    assert proc.poll() is None, "the sweep ended before a group could be killed"
    pid = run_json(victim)["pid"]
    assert pid != run_json(other)["pid"] and pid != proc.pid
    os.kill(pid, signal.SIGKILL)  # the group process of seed=1 (started by this test's sweep)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 1, err[-3000:]  # a sweep with a failed or interrupted job exits non-zero (issue 9)
    assert "crashed" in out + err
    cats = {j["job"]: j for j in summary(sw)["jobs"]}
    assert cats["cartpole-exact-fp32/seed=2"]["category"] == "completed"
    assert cats["cartpole-exact-fp32/seed=1"]["category"] == "interrupted"
    assert "died" in cats["cartpole-exact-fp32/seed=1"]["reason"]


def test_a_group_process_that_dies_before_its_runs_start_leaves_them_failed_and_counted(tmp_path):
    """A group process that dies on start-up (here: at once, exit code 3, through a sitecustomize that only the group
    processes act on) leaves no run of its own; each member still gets a run.json saying failed and why, the sweep
    summary counts them, and the same command run again trains them."""
    sw, site = tmp_path / "dead", tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import os, sys\n"
        "if any(a.endswith('.pkl') for a in sys.argv) and os.environ.get('ESPER_TEST_KILL_GROUPS'):\n"
        "    os._exit(3)\n")
    env = {**os.environ, "ESPER_TEST_KILL_GROUPS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(command(sw, "seed=1,2", "hydra/launcher=grouped"), capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode == 1, proc.stderr[-3000:]
    s = summary(sw)
    assert s["counts"]["failed"] == 2 and s["launched"] == 2
    for seed in (1, 2):
        info = run_json(sw / "cartpole-exact-fp32" / f"seed={seed}")
        assert info["status"] == "failed" and info["seed"] == seed
        assert "died before the run started" in info["reason"] and "exit code 3" in info["reason"]
    sweep(sw, "seed=1,2", "hydra/launcher=grouped")  # the same command, now able to start: both train
    assert summary(sw)["counts"]["completed"] == 2


def test_slurm_backend_submits_one_array_task_per_group_with_the_submitit_parameters(tmp_path, monkeypatch):
    """No Slurm here: the sbatch file the submitit_slurm backend would submit for 10 groups."""
    from esper_exp.launch import GroupedLaunch

    bin_dir = tmp_path / "bin"  # submitit's SlurmExecutor wants to see an srun (never called here)
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")
    (bin_dir / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")

    launch = GroupedLaunch(backend="submitit_slurm", n_jobs=4, max_members=10, partition="gpu", gpus_per_node=1,
                           timeout_min=90, mem_gb=16, cpus_per_task=None, signal_delay_s=120, max_num_timeout=0,
                           account="proj", setup=["module load cuda"], submitit_folder=str(tmp_path / "%j"),
                           name="train", additional_parameters={})
    executor = launch._executor(tmp_path, n_groups=10, threads=2)._executor
    executor.parameters["map_count"] = 10
    sbatch = executor._make_submission_file_text("python -m submitit.core._submit", "uid")
    for line in ("--partition=gpu", "--gpus-per-node=1", "--time=90", "--mem=16GB", "--cpus-per-task=2",
                 "--ntasks-per-node=1", "--nodes=1", "--signal=USR2@120", "--account=proj", "--array=0-9%4",
                 "module load cuda"):
        assert line in sbatch, (line, sbatch)
    with pytest.raises(ValueError, match="unknown"):
        GroupedLaunch(backend="submitit_slurm", nodes=2)._executor(tmp_path, 1, 1)
    with pytest.raises(ValueError, match="backend"):
        GroupedLaunch(backend="ray")
