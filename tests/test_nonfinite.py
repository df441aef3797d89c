"""The non-finite trace (esper_exp/nonfinite.py): it names the backward op that first makes a non-finite gradient,
judges a stacked tensor on the traced member's row, and leaves a run bitwise as it is."""

import json
import math

import pytest
import torch
from conftest import TINY_CARTPOLE, NaNGradAtCount, graph_code_on_cpu, make_cfg, read_jsonl, without_wall_clock

from esper_exp.nonfinite import Tracer, trace_backward
from esper_exp.runtime import prepare
from esper_exp.tracking import read_run_json
from esper_exp.train import build_ppo

FP16 = ("model.gelu=exact", "precision=fp16", "model.alpha.ramp_updates=2")


def test_trace_names_the_op_whose_finite_input_gradient_becomes_non_finite():
    # exp overflows to inf; the minimum picks the constant, so the loss is finite, yet exp's backward gives 0 * inf
    z = torch.tensor([100.0, 1.0], requires_grad=True)
    loss = torch.minimum(z.exp(), torch.tensor(2.0)).sum()
    assert torch.isfinite(loss)
    out = trace_backward(loss, [z])
    assert out["first"]["node"] == "ExpBackward0" and out["first"]["path"][-1] == "ExpBackward0"
    assert out["first"]["path"][0] == "SumBackward0" and not out["inputs_finite"]
    assert out["first"]["incoming_absmax"] == 0.0 and out["nonfinite_nodes"] >= 1
    assert out["first"]["saved"]["result"] == {"absmax": float("inf"), "nonfinite": 1}  # exp(100) = inf in fp32
    assert z.grad is None  # torch.autograd.grad: nothing accumulated
    fine = trace_backward(torch.minimum((z * 0.01).exp(), torch.tensor(2.0)).sum(), [z])
    assert fine["first"] is None and fine["inputs_finite"] and fine["nonfinite_nodes"] == 0


def test_a_stacked_tensor_is_judged_on_the_traced_members_row():
    z = torch.tensor([[100.0], [1.0]], requires_grad=True)  # member 0's exp overflows, member 1's does not
    per_member = torch.minimum(z.exp(), torch.tensor(2.0)).sum(-1)  # [K]
    assert trace_backward(per_member[0], [z], members=2, k=0)["first"]["node"] == "ExpBackward0"
    # member 1's backward sends 0 into member 0's row, where 0 * inf is NaN: not member 1's doing
    one = trace_backward(torch.minimum(z.exp(), torch.tensor(2.0)).sum(-1)[1], [z], members=2, k=1)
    assert one["first"] is None and one["inputs_finite"]


class _Stacked(torch.nn.Module):
    """Two members' weights [K, 3] and biases [K, 1]; member k's loss is sum(w_k * x_k) + b_k."""

    def __init__(self):
        super().__init__()
        self.w, self.b = torch.nn.Parameter(torch.zeros(2, 3)), torch.nn.Parameter(torch.zeros(2, 1))

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        return (self.w * x).sum(-1) + self.b[:, 0]


def test_step_gradients_tell_a_norm_overflow_from_a_step_whose_own_gradient_went_non_finite():
    from esper_exp.nonfinite import step_gradients
    from esper_exp.stacked import FlatParams, MemberGradScaler

    model = _Stacked()
    flat, scaler = FlatParams(model, 2, align=8), MemberGradScaler(2, torch.device("cpu"), True)
    assert flat.columns == {"w": (0, 3), "b": (3, 1)}
    scale = torch.tensor([4.0, 0.5])
    x = torch.tensor([[1.0, -2.0, 3.0], [3e19, 0.0, 1.0]])  # member 1's gradient is finite, its fp32 norm is not
    step_row = torch.zeros(8)
    step_row[3] = float("nan")  # the step left a NaN in member 0's bias, which the recomputation does not make
    out = step_gradients(flat, scaler, model.loss(x), scale, 0, step_row)
    assert out["step"] == {"nonfinite": {"b": 1}} and out["eager"]["nonfinite"] == {}
    assert out["eager"]["grad_norm"] == pytest.approx(15 ** 0.5)  # |(1, -2, 3, 1)|, unscaled by the step's 4
    assert out["eager"]["absmax_finite"] == 3.0 and out["eager"]["absmax_key"] == "w"
    one = step_gradients(flat, scaler, model.loss(x), scale, 1, torch.zeros(8))["eager"]
    assert one["grad_norm"] == float("inf") and one["grad_norm_f64"] == pytest.approx(3e19)
    assert one["nonfinite"] == {} and one["absmax_finite"] == pytest.approx(3e19)
    assert model.w.grad is None and flat.grad.abs().sum() == 0  # nothing written


def _traced(tmp_path, monkeypatch, below="1e9", most="2"):
    path = tmp_path / "trace.jsonl"
    monkeypatch.setenv("ESPER_NONFINITE_TRACE", str(path))
    monkeypatch.setenv("ESPER_NONFINITE_TRACE_BELOW", below)  # fp16 from 2^16: trace ordinary overflows too
    monkeypatch.setenv("ESPER_NONFINITE_TRACE_MAX", most)
    return path


def test_a_traced_run_is_bitwise_the_untraced_one_and_traces_its_skipped_steps(train_run, tmp_path, monkeypatch):
    plain = train_run(*TINY_CARTPOLE, *FP16, name="plain")
    path = _traced(tmp_path, monkeypatch)
    traced = train_run(*TINY_CARTPOLE, *FP16, name="traced")
    metrics = [without_wall_clock(read_jsonl(d / "metrics.jsonl")) for d in (plain, traced)]
    assert metrics[0] == metrics[1]
    assert read_jsonl(plain / "episodes.jsonl") == read_jsonl(traced / "episodes.jsonl")
    assert read_run_json(traced)["nonfinite_trace"] == str(path) and "nonfinite_trace" not in read_run_json(plain)
    records = read_jsonl(path)
    skipped = read_jsonl(traced / "metrics.jsonl")[-1]["nonfinite_grad_steps"]
    assert skipped > 0 and len(records) == min(skipped, 2)  # at most ESPER_NONFINITE_TRACE_MAX per member
    for r in records:
        assert r["member"] == 0 and r["seed"] == 1 and not r["failed"] and r["loss_scale"] >= 2.0 ** 10
        assert (r["env_id"], r["gelu"], r["precision"]) == ("CartPole-v1", "exact", "fp16")
        assert r["trace"]["first"] is not None and not r["trace"]["inputs_finite"]  # the recompute overflows again
        eager, step = r["step_gradients"]["eager"], r["step_gradients"]["step"]
        assert eager["nonfinite"] and eager["nonfinite"] == step["nonfinite"]  # the host step, recomputed: the same
        assert eager["grad_norm"] == float("inf")
        assert r["step_stats"]["grad_norm"] == float("inf")  # the step's own statistics, beside the recomputation's:
        assert all(r["step_stats"][n] == r[n] for n in ("policy_loss", "value_loss", "entropy", "clipfrac"))
        assert 1 <= r["epoch"] and 1 <= r["minibatch"] and r["update"] >= 1


def test_the_cuda_graph_paths_code_traces_without_changing_it(tmp_path, monkeypatch):
    """The CUDA-graph path's code run eagerly on CPU (as tests/test_probe.py does): the trace reads the step's flags
    and pre-step scale from the device tensors, leaves the path's numbers as they are, and its first record (the
    first skipped step, before any Adam step: the graphed Adam rounds apart from the host loop's) is the host loop's."""
    def ppo_run(graphed: bool, traced: str | None) -> tuple[list[dict], list[dict]]:
        monkeypatch.delenv("ESPER_NONFINITE_TRACE", raising=False)
        path = _traced(tmp_path, monkeypatch, most="3").with_name(f"{traced}.jsonl") if traced else None
        if path:
            monkeypatch.setenv("ESPER_NONFINITE_TRACE", str(path))
        cfg = make_cfg("env=cartpole", "ppo.num_steps=32", "ppo.total_timesteps=1280", *FP16)
        prepare(cfg.seed, torch.device("cpu"), True, 1)
        ppo, _ = build_ppo(cfg, [1, 2], torch.device("cpu"))
        if graphed:
            graph_code_on_cpu(ppo)
        if path:
            Tracer.from_env().attach(ppo)
        records = [ppo.run_update(lambda *a: None).records for _ in range(3)]
        ppo.close()
        strip = [{k: {n: v for n, v in r.items() if not n.startswith("time_")} for k, r in u.items()} for u in records]
        return strip, read_jsonl(path) if path else []

    plain, _ = ppo_run(True, None)
    graph, graph_trace = ppo_run(True, "graph")
    _, host_trace = ppo_run(False, "host")
    assert plain == graph
    for k in (0, 1):
        skipped = graph[-1][k]["nonfinite_grad_steps"]
        mine = [r for r in graph_trace if r["member"] == k]
        assert skipped > 0 and len(mine) == min(skipped, 3) and all(not r["trace"]["inputs_finite"] for r in mine)
    assert mine[0]["loss_scale"] == 2.0 ** 16  # the scale the step ran with, not the halved one after it
    # the step's own statistics: the host loop's as computed, the graph's as what the replay added to the sums
    graph_stats, host_stats = graph_trace[0].pop("step_stats"), host_trace[0].pop("step_stats")
    assert graph_stats.keys() == host_stats.keys() and graph_stats["grad_norm"] == float("inf")
    assert graph_stats == pytest.approx(host_stats, nan_ok=True)
    assert json.dumps(graph_trace[0]) == json.dumps(host_trace[0])


def test_bad_trace_settings_are_refused_with_the_allowed_values(monkeypatch):
    monkeypatch.setenv("ESPER_NONFINITE_TRACE", "/tmp/x.jsonl")
    monkeypatch.setenv("ESPER_NONFINITE_TRACE_MAX", "0")
    with pytest.raises(ValueError, match="ESPER_NONFINITE_TRACE_MAX='0' is not allowed; allowed: an integer >= 1"):
        Tracer.from_env()
    monkeypatch.setenv("ESPER_NONFINITE_TRACE_MAX", "3")
    monkeypatch.setenv("ESPER_NONFINITE_TRACE_BELOW", "small")
    with pytest.raises(ValueError, match="ESPER_NONFINITE_TRACE_BELOW='small' is not allowed"):
        Tracer.from_env()
    monkeypatch.delenv("ESPER_NONFINITE_TRACE")
    assert Tracer.from_env() is None


def test_a_trunk_tensor_of_2k_rows_is_judged_on_the_members_critic_and_actor_rows():
    from esper_exp.nonfinite import _bad

    t = torch.zeros(4, 3)  # K = 2: critic rows 0, 1, actor rows 2, 3
    t[3, 0] = float("nan")  # member 1's actor row
    assert _bad(t, 2, 1) and not _bad(t, 2, 0) and _bad(t, 1, 0)


def test_a_mixed_groups_segment_trunk_tensor_is_judged_on_the_members_rows_in_that_segment():
    from esper_exp.nonfinite import _bad

    # K = 4 in segments [0, 2) and [2, 4): the second segment's trunk tensor has 2 x 2 rows (critic 0, 1; actor 2, 3)
    t = torch.zeros(4, 3)
    t[3, 0] = float("inf")  # segment member 1's actor row: member 3's (as a K-row tensor, row 3 is member 3's too)
    assert _bad(t, 4, 3, (2, 4))
    t = torch.zeros(4, 3)
    t[2, 0] = float("inf")  # member 2's actor row in its segment (row 2 of a K-row tensor would be member 2's too)
    assert _bad(t, 4, 2, (2, 4)) and not _bad(t, 4, 3, (2, 4))
    t = torch.zeros(4, 3)
    t[1, 0] = float("inf")  # member 3's critic row in its segment: a K-row reading would give member 1 only
    assert _bad(t, 4, 3, (2, 4)) and not _bad(t, 4, 3)
    assert not _bad(torch.zeros(2, 3), 4, 3, (2, 4)) and _bad(torch.full((2, 3), float("nan")), 4, 3, (2, 4))


def test_the_trace_and_the_drift_probe_are_not_combined(tmp_path, monkeypatch):
    from esper_exp.config import ConfigError
    from esper_exp.train import run

    _traced(tmp_path, monkeypatch)
    with pytest.raises(ConfigError, match="cannot be combined with drift.probe_every=1"):
        run(make_cfg(*TINY_CARTPOLE, "drift.probe_every=1"), tmp_path / "run")
    assert not (tmp_path / "run" / "run.json").exists() and not (tmp_path / "trace.jsonl").exists()


@pytest.mark.parametrize("graphed", [False, True], ids=["host", "graph-code"])
def test_an_fp16_member_skips_one_step_for_one_nan_gradient_and_then_steps_again(graphed, monkeypatch):
    """One NaN gradient in member 1 (update 1, its 3rd minibatch step): member 1 skips that step and steps again
    from the next one, as torch's GradScaler would; member 0 is bitwise the run without it. Before session 22 the NaN
    stayed in the flat gradients' padding and member 1 skipped every later step (the fp16 arm's stalls)."""
    import esper_exp.ppo as ppo_module

    real_loss = ppo_module.ppo_loss

    def run_updates(inject: bool) -> list[dict]:
        calls = [0]

        def loss_with_a_nan_gradient(evaluate, mb, p, numerics):
            loss, parts = real_loss(evaluate, mb, p, numerics)
            calls[0] += 1
            if inject and calls[0] == steps_per_update + 3:
                param = next(evaluate.__self__.parameters())
                loss = loss + NaNGradAtCount.apply(param, torch.zeros((), dtype=torch.long), 2, 1)
            return loss, parts

        monkeypatch.setattr(ppo_module, "ppo_loss", loss_with_a_nan_gradient)
        cfg = make_cfg("env=cartpole", "ppo.num_steps=32", "ppo.total_timesteps=1280", *FP16)
        prepare(cfg.seed, torch.device("cpu"), True, 1)
        ppo, _ = build_ppo(cfg, [1, 2], torch.device("cpu"))
        if graphed:
            graph_code_on_cpu(ppo)
        records = [ppo.run_update(lambda *a: None).records for _ in range(4)]
        ppo.close()
        return [{k: {n: v for n, v in r.items() if not n.startswith("time_")} for k, r in u.items()} for u in records]

    cfg = make_cfg("env=cartpole", "ppo.num_steps=32", "ppo.total_timesteps=1280")
    steps_per_update = cfg.ppo.update_epochs * cfg.ppo.num_minibatches
    plain, injected = run_updates(False), run_updates(True)
    assert [u[0] for u in plain] == [u[0] for u in injected]  # member 0: bitwise the run without the NaN
    assert [u[1] for u in plain[:1]] == [u[1] for u in injected[:1]]  # update 0: before the NaN
    skipped = lambda records, u: (records[u][1]["nonfinite_grad_steps"]  # noqa: E731
                                  - records[u - 1][1]["nonfinite_grad_steps"])
    assert skipped(injected, 1) >= 1 and math.isnan(injected[1][1]["grad_norm"])  # the update's mean holds it
    for u in (2, 3):  # it steps again: most of its steps are taken, and their norms are finite
        assert skipped(injected, u) < steps_per_update // 2 and math.isfinite(injected[u][1]["grad_norm"])
        assert injected[u][1]["loss_scale"] >= 2.0 ** -8
