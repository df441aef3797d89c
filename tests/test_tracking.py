"""esper_exp.tracking's record of the code a run ran: the commit, "-dirty" and what differs from it; a resumed
run keeps the code states of its earlier launches where they differ."""

import subprocess

import torch
from conftest import make_cfg
from omegaconf import OmegaConf

from esper_exp import tracking
from esper_exp.tracking import Tracker, code_trees, git_state, read_run_json


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


def _rev(repo, spec):
    return subprocess.run(["git", "rev-parse", spec], cwd=repo, capture_output=True, text=True).stdout.strip()


def test_code_trees_are_git_tree_ids_of_the_files_whatever_head_says(tmp_path):
    """Equal to `git rev-parse <commit>:<dir>` for the commit whose files are the same, also when .git's HEAD is an
    older commit (the lent box's case); untracked files left out; None outside a checkout."""
    assert code_trees(tmp_path) is None
    _git(tmp_path, "init", "-q")
    files = {"esper_exp/a.py": "x = 1\n", "esper_exp/sub/b.py": "y = 2\n", "esper_exp/sub.py": "z = 3\n",
             "esper_exp/run.sh": "#!/bin/sh\n", "configs/c.yaml": "k: 1\n", "README.md": "not code\n"}
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    (tmp_path / "esper_exp/run.sh").chmod(0o755)
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-qm", "one")
    one = {"esper_exp": _rev(tmp_path, "HEAD:esper_exp"), "configs": _rev(tmp_path, "HEAD:configs")}
    assert code_trees(tmp_path) == one  # no hydra_plugins here: left out
    (tmp_path / "esper_exp/untracked.py").write_text("not tracked\n")
    (tmp_path / "README.md").write_text("changed, not code\n")
    assert code_trees(tmp_path) == one
    (tmp_path / "esper_exp/sub/b.py").write_text("y = 3\n")
    edited = code_trees(tmp_path)
    assert edited["esper_exp"] != one["esper_exp"] and edited["configs"] == one["configs"]
    _git(tmp_path, "commit", "-qam", "two")
    assert edited["esper_exp"] == _rev(tmp_path, "HEAD:esper_exp")
    _git(tmp_path, "checkout", "-q", "HEAD~1", "--", ".")  # the files of commit one again, HEAD still two
    assert code_trees(tmp_path) == one


def test_a_run_resumed_on_other_code_keeps_the_earlier_launches_commits(tmp_path, monkeypatch):
    config = OmegaConf.to_container(make_cfg("env=cartpole"), resolve=True)
    states = iter([("a" * 40, ()), ("a" * 40, ()), ("b" * 40 + "-dirty", (" M tests/conftest.py",)), ("c" * 40, ())])
    monkeypatch.setattr(tracking, "_code_state", lambda: next(states))
    trees = iter([{"esper_exp": "1"}] * 4)
    monkeypatch.setattr(tracking, "_code_trees", lambda: next(trees))
    cpu = torch.device("cpu")
    Tracker(tmp_path, config, cpu).finish("interrupted", "SIGTERM")
    Tracker(tmp_path, config, cpu, resume_at=(3, 96)).finish("interrupted", "SIGTERM")
    assert "git_before_resume" not in read_run_json(tmp_path)  # same commit, clean: nothing to keep
    Tracker(tmp_path, config, cpu, resume_at=(5, 160)).finish("interrupted", "SIGTERM")
    Tracker(tmp_path, config, cpu, resume_at=(8, 256)).finish("completed")
    info = read_run_json(tmp_path)
    assert info["git_sha"] == "c" * 40 and len(info["resumed_at"]) == 3
    assert info["git_before_resume"] == [
        {"git_sha": "a" * 40, "git_changes": [], "code_trees": {"esper_exp": "1"}, "up_to_update": 5},
        {"git_sha": "b" * 40 + "-dirty", "git_changes": [" M tests/conftest.py"], "code_trees": {"esper_exp": "1"},
         "up_to_update": 8}]


def test_a_run_resumed_on_other_files_under_the_same_commit_keeps_the_earlier_code_trees(tmp_path, monkeypatch):
    """A lagging .git names the same commit and changed paths for two launches whose files differ: the trees tell."""
    config = OmegaConf.to_container(make_cfg("env=cartpole"), resolve=True)
    monkeypatch.setattr(tracking, "_code_state", lambda: ("a" * 40 + "-dirty", (" M esper_exp/ppo.py",)))
    trees = iter([{"esper_exp": "1"}, {"esper_exp": "2"}])
    monkeypatch.setattr(tracking, "_code_trees", lambda: next(trees))
    cpu = torch.device("cpu")
    Tracker(tmp_path, config, cpu).finish("interrupted", "SIGTERM")
    Tracker(tmp_path, config, cpu, resume_at=(3, 96)).finish("completed")
    info = read_run_json(tmp_path)
    assert info["code_trees"] == {"esper_exp": "2"}
    assert info["git_before_resume"] == [{"git_sha": "a" * 40 + "-dirty", "git_changes": [" M esper_exp/ppo.py"],
                                          "code_trees": {"esper_exp": "1"}, "up_to_update": 3}]
