"""esper_exp.tracking's record of the code a run ran: the commit, "-dirty" and what differs from it."""

import subprocess

from esper_exp.tracking import git_state


def _git(repo, *args):
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True,
                   capture_output=True)


def test_git_state_names_the_commit_and_what_differs_from_it(tmp_path):
    assert git_state(tmp_path) == (None, [])  # not a checkout
    _git(tmp_path, "init", "-q")
    for name in ("a.py", "b.py", "c.py"):
        (tmp_path / name).write_text("x = 1\n")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-qm", "one")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    (tmp_path / "untracked.txt").write_text("not part of the code\n")
    assert git_state(tmp_path) == (head, [])  # untracked files do not make it dirty
    (tmp_path / "a.py").write_text("x = 2\n")
    (tmp_path / "b.py").unlink()
    assert git_state(tmp_path) == (head + "-dirty", [" M a.py", " D b.py"])
    (tmp_path / "c.py").write_text("x = 3\n")
    assert git_state(tmp_path, limit=2) == (head + "-dirty", [" M a.py", " D b.py", "... and 1 more"])
