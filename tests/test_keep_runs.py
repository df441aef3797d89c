"""experiments/mujoco_gelu_amp/keep_runs.sh: after a device call, every block of seeds of a group (env and cell) whose
runs have all completed is archived once (archive.py) and staged in git; a block with a run still unfinished is left
alone and named; an existing archive is never rewritten; other sweeps (the probe: seeds 1-5 in blocks of 3) by
SEEDS/BLOCK; an archive over the size cap is removed and named; bad settings are one line and exit 2."""

import os
import shutil
import subprocess
import tarfile
import sys
from pathlib import Path

from tests.synthetic_runs import write_run

ROOT = Path(__file__).resolve().parents[1]
CELLS = [("exact", "fp32"), ("tanh", "fp32"), ("exact", "bf16"), ("tanh", "bf16")]


def _repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    for rel in ("experiments/mujoco_gelu_amp/keep_runs.sh", "experiments/gpu_throughput/archive.py"):
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / rel, repo / rel)
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    return repo


def _block(sweep: Path, env: str, seeds, unfinished=()) -> None:
    for g, p in CELLS:
        for s in seeds:
            status = "interrupted" if (g, p, s) in unfinished else "completed"
            write_run(sweep / f"{env}-{g}-{p}" / f"seed={s}", env=env, gelu=g, precision=p, seed=s, status=status,
                      total_timesteps=2048, stop_at=1024 if status == "interrupted" else None)


def archive_members(path: Path) -> list[str]:
    with tarfile.open(path, "r:xz") as t:
        return t.getnames()


def _keep(repo: Path, *args: str, **env_vars: str) -> subprocess.CompletedProcess:
    # archive.py imports esper_exp from this checkout
    env = dict(os.environ, PYTHONPATH=str(ROOT), PY=sys.executable, **env_vars)
    return subprocess.run(["bash", "experiments/mujoco_gelu_amp/keep_runs.sh", *args], cwd=repo, env=env,
                          capture_output=True, text=True)


def test_complete_blocks_are_archived_once_and_staged_unfinished_ones_left_alone(tmp_path):
    repo = _repo(tmp_path)
    sweep = repo / "outputs" / "sweeps" / "mujoco_gelu_amp"
    _block(sweep, "halfcheetah", range(1, 11))
    _block(sweep, "halfcheetah", range(11, 21), unfinished={("tanh", "bf16", 17)})
    r = _keep(repo)
    assert r.returncode == 0, r.stderr
    runs = repo / "experiments" / "mujoco_gelu_amp" / "runs"
    want = [f"halfcheetah-{g}-{p}_seeds01-10.tar.xz" for g, p in sorted(CELLS)] + [
        f"halfcheetah-{g}-{p}_seeds11-20.tar.xz" for g, p in sorted(CELLS) if (g, p) != ("tanh", "bf16")]
    assert sorted(p.name for p in runs.iterdir()) == sorted(want)
    assert "halfcheetah-tanh-bf16 seeds 11-20: 9 of 10 runs completed, not packed yet" in r.stdout
    staged = subprocess.run(["git", "diff", "--cached", "--name-only"], cwd=repo, capture_output=True, text=True)
    assert sorted(staged.stdout.split()) == sorted(f"experiments/mujoco_gelu_amp/runs/{n}" for n in want)
    one = runs / "halfcheetah-exact-fp32_seeds01-10.tar.xz"
    assert {n.split("/")[1] for n in archive_members(one)} == {"halfcheetah-exact-fp32"}
    before = one.stat().st_mtime_ns
    r = _keep(repo)
    assert r.returncode == 0 and one.stat().st_mtime_ns == before


def test_no_sweep_directory_is_one_line_and_exit_2(tmp_path):
    r = _keep(_repo(tmp_path))
    assert r.returncode == 2 and r.stderr.strip() == "keep_runs.sh: no sweep directory outputs/sweeps/mujoco_gelu_amp"


def test_another_sweep_is_kept_in_blocks_of_its_own_size_and_an_oversized_archive_refused(tmp_path):
    repo = _repo(tmp_path)
    sweep = repo / "outputs" / "sweeps" / "probe"
    _block(sweep, "hopper", range(1, 6))
    dest = "experiments/mujoco_gelu_amp/probe/runs"
    r = _keep(repo, "outputs/sweeps/probe", dest, SEEDS="1 5", BLOCK="3", MAX_BYTES="1")
    assert r.returncode == 1 and r.stderr.count("over 2 MiB: removed; use a smaller BLOCK") == 8
    assert not list((repo / dest).iterdir())
    r = _keep(repo, "outputs/sweeps/probe", dest, SEEDS="1 5", BLOCK="3")
    assert r.returncode == 0, r.stderr
    want = [f"hopper-{g}-{p}_seeds{s}.tar.xz" for g, p in CELLS for s in ("01-03", "04-05")]
    assert sorted(p.name for p in (repo / dest).iterdir()) == sorted(want)
    one = repo / dest / "hopper-tanh-bf16_seeds04-05.tar.xz"
    assert {n.split("/")[2] for n in archive_members(one) if n.count("/") >= 3} == {"seed=4", "seed=5"}


def test_bad_seed_settings_are_one_line_and_exit_2(tmp_path):
    repo = _repo(tmp_path)
    (repo / "outputs" / "sweeps" / "mujoco_gelu_amp").mkdir(parents=True)
    for env in ({"SEEDS": "1 x"}, {"SEEDS": "5 1"}, {"BLOCK": "0"}):
        r = _keep(repo, **env)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "SEEDS=" in r.stderr, r.stderr
    assert not (repo / "experiments" / "mujoco_gelu_amp" / "runs").exists()
