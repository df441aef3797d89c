"""esper_exp.tracking's record of the code a run ran: the commit, "-dirty" and what differs from it; a resumed
run keeps the code states of its earlier launches where they differ."""

import subprocess

import torch
from conftest import make_cfg
from omegaconf import OmegaConf

from esper_exp import tracking
from esper_exp.tracking import Tracker, git_state, read_run_json


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


def test_a_run_resumed_on_other_code_keeps_the_earlier_launches_commits(tmp_path, monkeypatch):
    config = OmegaConf.to_container(make_cfg("env=cartpole"), resolve=True)
    states = iter([("a" * 40, ()), ("a" * 40, ()), ("b" * 40 + "-dirty", (" M tests/conftest.py",)), ("c" * 40, ())])
    monkeypatch.setattr(tracking, "_code_state", lambda: next(states))
    cpu = torch.device("cpu")
    Tracker(tmp_path, config, cpu).finish("interrupted", "SIGTERM")
    Tracker(tmp_path, config, cpu, resume_at=(3, 96)).finish("interrupted", "SIGTERM")
    assert "git_before_resume" not in read_run_json(tmp_path)  # same commit, clean: nothing to keep
    Tracker(tmp_path, config, cpu, resume_at=(5, 160)).finish("interrupted", "SIGTERM")
    Tracker(tmp_path, config, cpu, resume_at=(8, 256)).finish("completed")
    info = read_run_json(tmp_path)
    assert info["git_sha"] == "c" * 40 and len(info["resumed_at"]) == 3
    assert info["git_before_resume"] == [
        {"git_sha": "a" * 40, "git_changes": [], "up_to_update": 5},
        {"git_sha": "b" * 40 + "-dirty", "git_changes": [" M tests/conftest.py"], "up_to_update": 8}]
