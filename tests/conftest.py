from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from esper_exp.train import CONFIG_DIR, run

WALL_CLOCK = {"sps", "time_env", "time_inference", "time_update"}


def make_cfg(*overrides: str):
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=["tracking.wandb.mode=disabled", "tracking.progress=off", *overrides])


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def without_wall_clock(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in WALL_CLOCK} for r in records]


@pytest.fixture
def train_run(tmp_path):
    """train_run(*overrides, name=...) -> run dir of a finished in-process run."""

    def _run(*overrides: str, name: str = "run") -> Path:
        run_dir = tmp_path / name
        status = run(make_cfg(*overrides), run_dir)
        assert status in ("completed", "failed", "skipped"), status
        return run_dir

    return _run


# The engine's layout switches read from the environment (train.py). A caller's setting (a box script that exports
# ESPER_ENV_PARTS=one for its sweep, then runs the suite) must not change what the tests check: each test starts
# with them unset, and a test that wants one sets it with monkeypatch.
LAYOUT_SWITCHES = ("ESPER_CUDA_GRAPHS", "ESPER_ENV_PARTS", "ESPER_SEGMENT_STREAMS",
                   "ESPER_NONFINITE_TRACE", "ESPER_NONFINITE_TRACE_BELOW", "ESPER_NONFINITE_TRACE_MAX")  # + the trace


@pytest.fixture(autouse=True)
def _default_layout(monkeypatch):
    for name in LAYOUT_SWITCHES:
        monkeypatch.delenv(name, raising=False)


TINY_CARTPOLE = ("env=cartpole", "ppo.total_timesteps=2048", "ppo.num_steps=64")


def interrupt_after_update(monkeypatch, overrides, run_dir: Path, update: int) -> None:
    """Train ``overrides`` alone in ``run_dir`` and stop it as a Ctrl-C would, right after update ``update`` is
    logged (status interrupted; checkpoints as configured stay)."""
    from esper_exp.tracking import Tracker

    log_update = Tracker.log_update

    def stop(self, record):
        log_update(self, record)
        if record["update"] == update:
            raise KeyboardInterrupt("SIGINT")

    with monkeypatch.context() as m:
        m.setattr(Tracker, "log_update", stop)
        with pytest.raises(KeyboardInterrupt):
            run(make_cfg(*overrides), run_dir)


def graph_code_on_cpu(ppo):
    """A PPO built on CPU switched to the CUDA-graph path's code, run eagerly (no capture): device-side flags and
    sums, the static tensors, and the device-side Adam (MemberAdam ``on_device``). What the GPU suite captures and
    replays, checkable on CPU. Returns ``ppo``."""
    from esper_exp.stacked import MemberAdam

    ppo.cuda_graphs, ppo.graph_capture = True, False
    ppo.optimizer = MemberAdam(ppo.flat, lr=ppo.hp.learning_rate, eps=ppo.hp.adam_eps, on_device=True)
    ppo._init_static()
    return ppo


class NaNGradAtCount(torch.autograd.Function):
    """A [K] zero added to the loss; its backward is NaN in member k's rows of ``param`` when the device counter is 0,
    zero otherwise, and counts down at every backward: one NaN gradient at a chosen step, also at a chosen replay of a
    captured step (a finite loss with a NaN gradient, as fp16's backward makes one now and then: inf - inf, 0 * inf)."""

    @staticmethod
    def forward(ctx, param, counter, members, k):
        ctx.shape, ctx.members, ctx.k, ctx.counter = param.shape, members, k, counter
        return param.new_zeros(members)

    @staticmethod
    def backward(ctx, grad):
        g = grad.new_zeros(ctx.shape)
        rows = g[ctx.k::ctx.members]
        rows.copy_(torch.where(ctx.counter == 0, float("nan"), 0.0).expand_as(rows))
        ctx.counter.sub_(1)
        return g, None, None, None
