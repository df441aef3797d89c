"""End-to-end runs: bitwise reproduction, paired seeds, learning, failures, interrupts, tracking."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import TINY_CARTPOLE, read_jsonl, without_wall_clock
from esper_exp.tracking import read_run_json


def test_same_config_and_seed_give_bitwise_identical_metrics(train_run):
    a = train_run(*TINY_CARTPOLE, "precision=bf16", name="a")
    b = train_run(*TINY_CARTPOLE, "precision=bf16", name="b")
    ma, mb = read_jsonl(a / "metrics.jsonl"), read_jsonl(b / "metrics.jsonl")
    assert len(ma) == 2048 // (4 * 64)
    assert without_wall_clock(ma) == without_wall_clock(mb)
    assert read_jsonl(a / "episodes.jsonl") == read_jsonl(b / "episodes.jsonl")
    c = train_run(*TINY_CARTPOLE, "precision=bf16", "seed=2", name="c")
    assert without_wall_clock(read_jsonl(c / "metrics.jsonl")) != without_wall_clock(ma)


def test_halfcheetah_runs_reproduce_bitwise(train_run):
    args = ("env=halfcheetah", "ppo.total_timesteps=512", "ppo.num_steps=256", "ppo.num_minibatches=4",
            "ppo.update_epochs=2", "env.max_episode_steps=100")
    a, b = train_run(*args, name="a"), train_run(*args, name="b")
    assert without_wall_clock(read_jsonl(a / "metrics.jsonl")) == without_wall_clock(read_jsonl(b / "metrics.jsonl"))
    assert len(read_jsonl(a / "episodes.jsonl")) == 5  # truncated every 100 steps


def test_seeds_are_paired_across_gelu_cells(train_run):
    # alpha is 0 during the first update, so the seed is out of the forward pass and gets no gradient:
    # paired seeds must then give identical first updates; once alpha > 0 the variants differ.
    exact = read_jsonl(train_run(*TINY_CARTPOLE, "model.gelu=exact", name="exact") / "metrics.jsonl")
    tanh = read_jsonl(train_run(*TINY_CARTPOLE, "model.gelu=tanh", name="tanh") / "metrics.jsonl")
    assert exact[0]["alpha"] == 0.0 and exact[1]["alpha"] > 0
    assert without_wall_clock(exact[:1]) == without_wall_clock(tanh[:1])
    assert without_wall_clock(exact) != without_wall_clock(tanh)


def test_run_json_fingerprint_and_episode_records(train_run):
    run_dir = train_run(*TINY_CARTPOLE, "model.gelu=tanh", "precision=fp16", name="r")
    info = read_run_json(run_dir)
    assert info["status"] == "completed" and info["reason"] is None
    assert (info["seed"], info["gelu"], info["precision"], info["cell"]) == (1, "tanh", "fp16", "cartpole/tanh/fp16")
    assert info["versions"]["torch"] and info["versions"]["gymnasium"] and info["device"].startswith("cpu")
    assert info["global_step"] == 2048 and info["ended_at"]
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    required = {"global_step", "update", "alpha", "lr", "policy_loss", "value_loss", "entropy", "approx_kl", "clipfrac",
                "explained_variance", "grad_norm", "sps", "time_env", "time_inference", "time_update", "loss_scale"}
    assert required <= set(metrics[-1])
    assert [m["global_step"] for m in metrics] == [256 * (i + 1) for i in range(8)]
    assert metrics[-1]["lr"] < metrics[0]["lr"]  # linear anneal
    episodes = read_jsonl(run_dir / "episodes.jsonl")
    assert episodes and all(e["return"] == e["length"] for e in episodes)  # CartPole: +1 per step


def test_a_stalled_fp16_run_says_so_and_goes_on(train_run, monkeypatch, capsys):
    """An fp16 run whose loss scaler skips every minibatch step of an update (gradients non-finite at every scale, as
    seen on CUDA) is not failed: it goes on with unchanged weights, and train.log and stderr say once that it stalled."""
    from esper_exp.stacked import MemberGradScaler

    unscale = MemberGradScaler.unscale_

    def non_finite(self, grad):  # every fp16 gradient non-finite, whatever the scale; the loss stays finite
        unscale(self, grad)
        if self.enabled:
            grad.mul_(float("inf"))

    monkeypatch.setattr(MemberGradScaler, "unscale_", non_finite)
    run_dir = train_run(*TINY_CARTPOLE, "precision=fp16", "ppo.total_timesteps=768", name="stalled")
    assert read_run_json(run_dir)["status"] == "completed"
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    steps = [m["epochs"] * 4 for m in metrics]  # every step of every update skipped (4 minibatches per epoch)
    assert [m["nonfinite_grad_steps"] for m in metrics] == [sum(steps[:i + 1]) for i in range(3)] and min(steps) > 0
    assert metrics[-1]["approx_kl"] == 0 and metrics[-1]["clipfrac"] == 0  # the weights never changed
    notes = [line for line in (run_dir / "train.log").read_text().splitlines() if "stalled" in line]
    assert len(notes) == 1 and "stalled at update 1:" in notes[0]
    assert capsys.readouterr().err.count("run stalled:") == 1
    fine = train_run(*TINY_CARTPOLE, "ppo.total_timesteps=768", name="fp32")  # fp32: the patch does nothing
    assert "stalled" not in (fine / "train.log").read_text()


def test_cartpole_learns(train_run):
    run_dir = train_run("env=cartpole", "ppo.total_timesteps=60000", name="learn")
    returns = [e["return"] for e in read_jsonl(run_dir / "episodes.jsonl")]
    first, last = sum(returns[:20]) / 20, sum(returns[-20:]) / 20
    assert first < 40 and last > 150, (first, last)


def test_completed_run_is_not_overwritten(train_run, tmp_path):
    from conftest import make_cfg
    from esper_exp.config import ConfigError
    from esper_exp.train import run

    run_dir = train_run(*TINY_CARTPOLE, name="done")
    before = (run_dir / "metrics.jsonl").read_text()
    assert run(make_cfg(*TINY_CARTPOLE), run_dir) == "skipped"
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        run(make_cfg(*TINY_CARTPOLE, "seed=5"), run_dir)
    assert (run_dir / "metrics.jsonl").read_text() == before


def test_non_finite_loss_fails_the_run_and_keeps_its_metrics(train_run, monkeypatch):
    from esper_exp.policy import ActorCritic

    evaluate, calls = ActorCritic.evaluate, []

    def poisoned(self, obs, action, numerics):  # NaN values from the 3rd update on (4 epochs x 4 minibatches each)
        calls.append(1)
        logp, ent, value = evaluate(self, obs, action, numerics)
        return logp, ent, value * float("nan") if len(calls) > 32 else value

    monkeypatch.setattr(ActorCritic, "evaluate", poisoned)
    run_dir = train_run(*TINY_CARTPOLE, name="nan")
    info = read_run_json(run_dir)
    assert info["status"] == "failed" and "non-finite loss" in info["reason"] and "update 3" in info["reason"]
    assert info["nonfinite_events"] == 1
    assert len(read_jsonl(run_dir / "metrics.jsonl")) == 2  # the updates before the failure stay


def test_diverging_run_exits_non_zero_with_status_failed(tmp_path):
    out = tmp_path / "nan"
    proc = subprocess.run([sys.executable, "-m", "esper_exp.train", *TINY_CARTPOLE, "ppo.learning_rate=1e30",
                           "tracking.wandb.mode=disabled", f"hydra.run.dir={out}"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr
    info = read_run_json(out)
    assert info["status"] == "failed" and "non-finite" in info["reason"]
    assert "Traceback" not in proc.stderr


def test_ctrl_c_leaves_status_interrupted(tmp_path):
    out = tmp_path / "int"
    proc = subprocess.Popen([sys.executable, "-m", "esper_exp.train", "env=cartpole", "ppo.total_timesteps=10000000",
                             "tracking.wandb.mode=disabled", f"hydra.run.dir={out}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not ((out / "metrics.jsonl").exists() and (out / "metrics.jsonl").stat().st_size):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0
    info = read_run_json(out)
    assert info["status"] == "interrupted" and info["reason"] == "SIGINT"
    metrics = read_jsonl(out / "metrics.jsonl")
    assert metrics and (out / "checkpoints" / f"ckpt-{metrics[-1]['update']:08d}.pt").exists()
    assert "Traceback" not in err


@pytest.mark.parametrize("override,allowed", [
    ("model.gelu=fast", "exact, tanh"),
    ("precision=fp8", "bf16, fp16, fp32"),
    ("env=pong", "cartpole"),
    ("ppo.total_timesteps=-5", "> 0"),
    ("ppo.num_minibatches=3", "divisor of 512"),
    ("model.blueprint=conv", "mlp_small, mlp"),
    ("tracking.wandb.mode=maybe", "offline, online, disabled"),
    ("env.id=HalfCheetah-v9", "did you mean HalfCheetah-v5"),
    ("drift.perturb=bit", "none, ulp, large"),
])
def test_bad_input_is_one_clear_line_and_a_non_zero_exit(tmp_path, override, allowed):
    proc = subprocess.run([sys.executable, "-m", "esper_exp.train", override, "tracking.wandb.mode=disabled",
                           f"hydra.run.dir={tmp_path / 'x'}"] if "wandb" not in override else
                          [sys.executable, "-m", "esper_exp.train", override, f"hydra.run.dir={tmp_path / 'x'}"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    bad_value = override.split("=", 1)[1]
    assert bad_value in lines[0] and allowed in lines[0]
    assert not (tmp_path / "x" / "metrics.jsonl").exists()


def test_wandb_offline_run_is_readable_without_network(train_run, tmp_path):
    run_dir = train_run(*TINY_CARTPOLE, "tracking.wandb.mode=offline", name="wb")
    info = read_run_json(run_dir)
    assert info["wandb_run_dir"] and os.path.isdir(info["wandb_run_dir"])
    wandb = os.path.join(os.path.dirname(sys.executable), "wandb")
    proc = subprocess.run([wandb, "leet", "inspect", "--summary", "--json", info["wandb_run_dir"]],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    text = json.dumps(summary)
    assert "global_step" in text and "2048" in text and "approx_kl" in text
    assert "cartpole-exact-fp32" in text  # the group / name derived from the cell


def test_a_resumed_run_continues_its_own_wandb_run(tmp_path, monkeypatch):
    from conftest import interrupt_after_update, make_cfg
    from esper_exp.train import run

    overrides = (*TINY_CARTPOLE, "tracking.wandb.mode=offline", "tracking.checkpoint_every=2")
    run_dir = tmp_path / "wb"
    interrupt_after_update(monkeypatch, overrides, run_dir, 3)
    first = read_run_json(run_dir)["wandb_id"]
    assert run(make_cfg(*overrides), run_dir) == "completed"
    info = read_run_json(run_dir)
    assert info["wandb_id"] == first and info["resumed_at"]
    # every offline run directory of this run directory belongs to the one wandb run (wandb sync merges them)
    runs = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert runs and all(f"-{first}" in p.name for p in runs)  # wandb adds "-1" when the second is the same


def test_sigterm_while_the_group_is_built_leaves_status_interrupted(tmp_path, monkeypatch):
    """A stop request before the first update (e.g. a cluster preempting a job at start-up) is honoured cleanly."""
    import os

    from conftest import make_cfg
    from esper_exp import train

    build = train.build_ppo

    def build_then_sigterm(*args, **kwargs):
        out = build(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)  # handled by the run's StopRequest: no process death
        return out

    monkeypatch.setattr(train, "build_ppo", build_then_sigterm)
    with pytest.raises(KeyboardInterrupt):
        train.run(make_cfg(*TINY_CARTPOLE), tmp_path / "early")
    info = read_run_json(tmp_path / "early")
    assert info["status"] == "interrupted" and info["reason"] == "SIGTERM"


def test_train_log_says_when_and_where_each_attempt_ran_and_how_it_ended(tmp_path, monkeypatch):
    from conftest import interrupt_after_update, make_cfg

    from esper_exp.train import run

    run_dir = tmp_path / "run"
    interrupt_after_update(monkeypatch, (*TINY_CARTPOLE, "tracking.checkpoint_every=2"), run_dir, 3)
    assert run(make_cfg(*TINY_CARTPOLE, "tracking.checkpoint_every=2"), run_dir) == "completed"
    lines = (run_dir / "train.log").read_text().splitlines()
    assert len(lines) == 4, lines
    assert "started: cartpole/exact/fp32 seed 1 on cpu" in lines[0] and "group member 1 of 1" in lines[0]
    assert "interrupted at update 3" in lines[1]
    assert "resumed at update 2" in lines[2] and "completed at update 8 (global_step 2048)" in lines[3]
