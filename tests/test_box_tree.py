"""experiments/gpu_throughput/box_tree.sh: `slim` leaves the reports out of what travels to a GPU box without git
calling them deleted; `box` (run on the box by sweep_box.sh, whose copy of the tree arrives without the sparse-checkout
marks) makes the box's git see the same: the left-out files are no change, while a file of the slim set that is
modified or deleted still is, so run.json's git_changes stays the truth."""

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = "experiments/gpu_throughput/box_tree.sh"
FILES = {"esper_exp/a.py": "a", "esper_exp/b.py": "b", "experiments/report/README.md": "r",
         "experiments/gpu_throughput/c.py": "c"}


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


def _repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    for rel, text in FILES.items():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text(text)
    (repo / SCRIPT).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / SCRIPT, repo / SCRIPT)
    _git(repo.parent, "init", "-q", str(repo))
    _git(repo, "add", "-A")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    return repo


def _run(repo: Path, mode: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", SCRIPT, mode], cwd=repo, capture_output=True, text=True)


def test_slim_leaves_reports_out_without_changes_and_full_brings_them_back(tmp_path):
    repo = _repo(tmp_path)
    r = _run(repo, "slim")
    assert r.returncode == 0, r.stderr
    assert not (repo / "experiments/report/README.md").exists()
    assert (repo / "experiments/gpu_throughput/c.py").exists() and (repo / "esper_exp/a.py").exists()
    assert _git(repo, "status", "--porcelain") == ""
    assert _run(repo, "full").returncode == 0
    assert (repo / "experiments/report/README.md").read_text() == "r"


def test_box_marks_what_slim_left_out_but_keeps_real_changes(tmp_path):
    repo = _repo(tmp_path)
    # the box's copy: the left-out file simply absent (no sparse marks), one slim-set file edited, one deleted
    (repo / "experiments/report/README.md").unlink()
    (repo / "esper_exp/b.py").write_text("edited")
    (repo / "esper_exp/a.py").unlink()
    assert " D experiments/report/README.md" in _git(repo, "status", "--porcelain")
    r = _run(repo, "box")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith("2 changed path(s)"), r.stdout
    assert sorted(_git(repo, "status", "--porcelain").splitlines()) == [" D esper_exp/a.py", " M esper_exp/b.py"]
    assert (repo / "esper_exp/b.py").read_text() == "edited"  # nothing restored or overwritten


def test_box_on_a_full_tree_changes_nothing(tmp_path):
    repo = _repo(tmp_path)
    r = _run(repo, "box")
    assert r.returncode == 0 and r.stdout.strip().endswith("0 changed path(s)"), (r.stdout, r.stderr)
    assert (repo / "experiments/report/README.md").exists()
    assert subprocess.run(["git", "-C", str(repo), "config", "core.sparseCheckout"], capture_output=True,
                          text=True).stdout.strip() in ("", "false")


def test_bad_mode_is_one_line_and_exit_2(tmp_path):
    r = _run(_repo(tmp_path), "thin")
    assert r.returncode == 2 and r.stderr.strip() == "usage: box_tree.sh slim|full|box (got 'thin')"
