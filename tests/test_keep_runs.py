"""experiments/mujoco_gelu_amp/keep_runs.sh: after a device call, every block of 10 seeds of an env whose 40 runs have
all completed is archived once per cell (archive.py) and staged in git; a block with a run still unfinished is left alone and
named; an existing archive is never rewritten."""

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


def _keep(repo: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), PY=sys.executable)  # archive.py imports esper_exp from this checkout
    return subprocess.run(["bash", "experiments/mujoco_gelu_amp/keep_runs.sh"], cwd=repo, env=env,
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
    assert "halfcheetah tanh-bf16 seeds 11-20: 9 of 10 runs completed, not packed yet" in r.stdout
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
