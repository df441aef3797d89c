"""Checkpoints: a run killed mid-way and resumed equals the uninterrupted run bitwise; corrupt checkpoints
are detected and skipped; checkpoint files cannot run code."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import read_jsonl, without_wall_clock
from esper_exp import checkpoint
from esper_exp.tracking import read_run_json

CARTPOLE = ("env=cartpole", "ppo.num_steps=32", "ppo.total_timesteps=12800", "tracking.checkpoint_every=5")
HALFCHEETAH = ("env=halfcheetah", "ppo.num_steps=128", "ppo.num_minibatches=4", "ppo.update_epochs=2",
               "env.max_episode_steps=200", "ppo.total_timesteps=6400", "tracking.checkpoint_every=1")


def train_cmd(out: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "esper_exp.train", *overrides, "tracking.wandb.mode=disabled",
            "tracking.progress=off", f"hydra.run.dir={out}"]


def kill_after(out: Path, args, n_updates: int, sig: int) -> subprocess.CompletedProcess:
    proc = subprocess.Popen(train_cmd(out, *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and metrics.read_text().count("\n") >= n_updates:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be interrupted"
    proc.send_signal(sig)
    out_, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out_, err)


@pytest.mark.parametrize("args,sig", [  # SIGTERM resume is also held fast by test_grouped_launcher's SIGTERM test
    pytest.param(CARTPOLE, signal.SIGTERM, marks=pytest.mark.slow), (HALFCHEETAH, signal.SIGKILL)],
    ids=["cartpole-sigterm", "halfcheetah-sigkill"])
def test_interrupted_and_resumed_run_equals_the_uninterrupted_run_bitwise(tmp_path, args, sig):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    subprocess.run(train_cmd(whole, *args), check=True, capture_output=True, timeout=300)
    killed = kill_after(cut, args, 12, sig)
    assert killed.returncode != 0
    info = read_run_json(cut)
    if sig == signal.SIGTERM:
        assert info["status"] == "interrupted" and info["reason"] == "SIGTERM"
    else:
        assert info["status"] == "running"  # a hard kill leaves no chance to write a status
    n_before = len(read_jsonl(cut / "metrics.jsonl"))
    total = len(read_jsonl(whole / "metrics.jsonl"))
    assert 12 <= n_before < total
    resumed = subprocess.run(train_cmd(cut, *args), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout
    info = read_run_json(cut)
    assert info["status"] == "completed" and len(info["resumed_at"]) == 1
    assert without_wall_clock(read_jsonl(cut / "metrics.jsonl")) == without_wall_clock(read_jsonl(whole / "metrics.jsonl"))
    assert read_jsonl(cut / "episodes.jsonl") == read_jsonl(whole / "episodes.jsonl")


def test_corrupt_checkpoint_is_reported_and_the_previous_one_used(tmp_path):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    subprocess.run(train_cmd(whole, *CARTPOLE), check=True, capture_output=True, timeout=300)
    kill_after(cut, CARTPOLE, 12, signal.SIGTERM)
    ckpts = sorted((cut / "checkpoints").glob("ckpt-*.pt"))
    assert len(ckpts) == 2
    ckpts[-1].write_bytes(ckpts[-1].read_bytes()[:1000])  # truncate the newest
    resumed = subprocess.run(train_cmd(cut, *CARTPOLE), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"skipping checkpoint {ckpts[-1].name}: SHA-256 mismatch" in resumed.stderr
    assert f"from {ckpts[0].name}" in resumed.stdout
    assert without_wall_clock(read_jsonl(cut / "metrics.jsonl")) == without_wall_clock(read_jsonl(whole / "metrics.jsonl"))


class Payload:
    def __reduce__(self):
        return (print, ("this ran code",))


def test_checkpoint_files_cannot_run_code(tmp_path, capsys):
    path = checkpoint.save(tmp_path, 1, {"ok": torch.zeros(2)})
    assert torch.equal(checkpoint.load_file(path)["ok"], torch.zeros(2))
    evil = checkpoint.save(tmp_path, 2, {"x": Payload()})  # hash matches: only the safe loader stands in the way
    with pytest.raises(ValueError, match="cannot be loaded safely"):
        checkpoint.load_file(evil)
    assert "this ran code" not in capsys.readouterr().out
    state, used = checkpoint.load_latest(tmp_path, warn=lambda m: None)
    assert used == path


def test_only_the_newest_checkpoints_are_kept(tmp_path):
    for u in range(1, 6):
        checkpoint.save(tmp_path, u, {"u": u})
    assert [p.name for p in sorted(tmp_path.glob("ckpt-*.pt"))] == ["ckpt-00000004.pt", "ckpt-00000005.pt"]
    assert checkpoint.load_latest(tmp_path)[0]["u"] == 5
