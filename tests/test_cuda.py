"""The GPU suite (issue 12, item 5): ``pytest -m cuda`` on a machine with a CUDA GPU; every test here is skipped
elsewhere. Tiny HalfCheetah / CartPole runs: CUDA single run and group complete with the pinned numerics recorded,
a bf16 member's seed MLP computes in bf16 on CUDA, every drift control runs on CUDA, and a deterministic CUDA run
repeats bitwise (esper-repro re-runs its group and says identical)."""

import math

import pytest
import torch

from conftest import NaNGradAtCount, make_cfg, read_jsonl, without_wall_clock
from esper_exp.tracking import read_run_json
from esper_exp.train import run, run_group

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

CHEETAH = ("env=halfcheetah", "ppo.total_timesteps=768", "ppo.num_steps=64", "ppo.num_minibatches=4",
           "ppo.update_epochs=2", "env.max_episode_steps=100", "model.alpha.ramp_updates=2")
CARTPOLE = ("env=cartpole", "ppo.total_timesteps=512", "ppo.num_steps=64", "model.alpha.ramp_updates=2")


def _group(tmp_path, overrides, seeds=(1, 2, 3), name="group"):
    jobs = [(make_cfg(*overrides, f"seed={s}"), tmp_path / name / f"seed={s}") for s in seeds]
    return run_group(jobs), [d for _, d in jobs]


@pytest.mark.parametrize("device", ["cuda", "cuda:0", "auto"])
def test_a_single_cuda_run_completes_with_its_numerics_recorded(tmp_path, device):
    assert run(make_cfg(*CHEETAH, f"device={device}"), tmp_path / "run") == "completed"
    info = read_run_json(tmp_path / "run")
    assert info["cuda"]["gpu"] == info["device"] and info["cuda"]["gpu_index"] == 0 and info["cuda_graphs"] is True
    flags = info["cuda"]["flags"]
    assert flags["matmul_allow_tf32"] is False and info["cuda"]["gpu"]


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_a_cuda_group_completes_and_its_members_are_different_runs(tmp_path, precision):
    statuses, dirs = _group(tmp_path, (*CHEETAH, "device=cuda", f"precision={precision}"))
    assert statuses == ["completed"] * 3
    group = read_run_json(dirs[1])["group"]
    assert group["size"] == 3 and group["member_index"] == 1
    last = [read_jsonl(d / "metrics.jsonl")[-1]["value_loss"] for d in dirs]
    assert len(set(last)) == 3


def test_a_bf16_member_computes_its_seed_mlp_in_bf16_on_cuda():
    from esper_exp.runtime import prepare
    from esper_exp.train import build_ppo

    cfg = make_cfg(*CHEETAH, "precision=bf16", "device=cuda")
    device = torch.device("cuda:0")
    prepare(1, device, True, 1)
    ppo = build_ppo(cfg, [1, 2], device)[0]
    seen = []
    hook = ppo.policy.trunk.seed.fc1.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    with torch.no_grad():
        ppo.policy.heads(ppo.next_obs, ppo.numerics)
    hook.remove()
    ppo.close()
    assert seen == [torch.bfloat16]


@pytest.mark.parametrize("perturb", ["ulp", "large", "persistent", "duplicate"])
def test_every_drift_control_runs_on_cuda(tmp_path, perturb):
    status = run(make_cfg(*CARTPOLE, "device=cuda", f"drift.perturb={perturb}", "drift.probe_every=2",
                          "drift.snapshot_every=2", "drift.probe_set_size=32"), tmp_path / "run")
    assert status == "completed"
    assert read_jsonl(tmp_path / "run" / "probe.jsonl") and read_jsonl(tmp_path / "run" / "snapshots.jsonl")


def test_a_deterministic_cuda_group_repeats_bitwise_and_esper_repro_says_identical(tmp_path, capsys):
    from esper_exp.repro import main

    overrides = (*CHEETAH, "device=cuda", "precision=bf16", "deterministic=true")
    _, first = _group(tmp_path, overrides, name="a")
    _, second = _group(tmp_path, overrides, name="b")
    for a, b in zip(first, second):
        assert without_wall_clock(read_jsonl(a / "metrics.jsonl")) == without_wall_clock(read_jsonl(b / "metrics.jsonl"))
        assert read_jsonl(a / "episodes.jsonl") == read_jsonl(b / "episodes.jsonl")
    assert main([str(first[1])]) == 0
    out = capsys.readouterr().out
    assert "re-running its group of 3" in out and "identical" in out


def test_a_mixed_cuda_group_completes_and_repeats_bitwise(tmp_path, monkeypatch):
    """A mixed group (the GPU sweep's layout: several GELU x precision cells in one process, CUDA graphs):
    every member completes in its own cell, only fp16 members carry a loss scale, and the group trained twice
    gives the same bits (deterministic algorithms), also with its segments on one stream instead of one each, and
    with its rollout stepped as one part instead of one part per precision segment (ESPER_ENV_PARTS=one)."""
    cells = [("exact", "fp32", 1), ("tanh", "bf16", 1), ("exact", "fp16", 2), ("tanh", "fp16", 2)]

    def train(name):
        jobs = [(make_cfg(*CHEETAH, "device=cuda", "deterministic=true", f"model.gelu={g}", f"precision={p}",
                          f"seed={s}"), tmp_path / name / f"{g}-{p}-{s}") for g, p, s in cells]
        assert run_group(jobs) == ["completed"] * 4
        return [d for _, d in jobs]

    first, second = train("a"), train("b")
    monkeypatch.setenv("ESPER_ENV_PARTS", "one")
    one_part = train("d")
    monkeypatch.delenv("ESPER_ENV_PARTS")
    monkeypatch.setenv("ESPER_SEGMENT_STREAMS", "0")
    one_stream = train("c")
    for a, b, c, d in zip(first, second, one_stream, one_part):
        for other in (b, c, d):
            assert without_wall_clock(read_jsonl(a / "metrics.jsonl")) == \
                without_wall_clock(read_jsonl(other / "metrics.jsonl")), other
        assert read_run_json(a)["cuda_graphs"] is True and read_run_json(a)["group"]["size"] == 4
        assert read_run_json(a)["segment_streams"] is True and read_run_json(c)["segment_streams"] is False
        assert read_run_json(a)["env_parts"] == 3 and read_run_json(d)["env_parts"] == 1
    assert ["loss_scale" in read_jsonl(d / "metrics.jsonl")[0] for d in first] == [False, False, True, True]
    assert len({read_jsonl(d / "metrics.jsonl")[-1]["value_loss"] for d in first}) == 4


def test_a_probed_cuda_group_records_the_applied_update_probe_and_trains_as_unprobed(tmp_path):
    """The probe sweep's layout on CUDA (mujoco_gelu_amp_probe: HalfCheetah, one cell per process, deterministic, CUDA
    graphs, every optimizer step of a probed update probed eagerly outside the graph), before its first run on a
    box: the group completes, every member's probe.jsonl holds every optimizer step of every probed update with a
    finite applied step, a non-zero bf16-vs-fp32 difference and a non-zero noise floor, and the probe changes none
    of the training's numbers (the same group unprobed gives the same metrics and episodes)."""
    base = (*CHEETAH, "device=cuda", "deterministic=true", "precision=bf16", "model.gelu=tanh")
    statuses, probed = _group(tmp_path, (*base, "drift.probe_every=2"), seeds=(1, 2), name="probed")
    assert statuses == ["completed"] * 2
    _, plain = _group(tmp_path, base, seeds=(1, 2), name="plain")
    updates = len(read_jsonl(probed[0] / "metrics.jsonl"))
    steps_per_update = 2 * 4  # ppo.update_epochs x ppo.num_minibatches (CHEETAH)
    for p, q in zip(probed, plain):
        assert read_run_json(p)["cuda_graphs"] is True
        records = read_jsonl(p / "probe.jsonl")
        assert [r["update"] for r in records] == list(range(2, updates + 1, 2))
        for r in records:
            st = r["steps"]
            assert all(len(v) == steps_per_update for v in st.values())
            assert all(math.isfinite(a) and a > 0 for a in st["applied_norm"])
            assert all(d > 0 for d in st["dtype_diff_norm"]) and all(n > 0 for n in st["noise_diff_norm"])
        assert without_wall_clock(read_jsonl(p / "metrics.jsonl")) == \
            without_wall_clock(read_jsonl(q / "metrics.jsonl"))
        assert read_jsonl(p / "episodes.jsonl") == read_jsonl(q / "episodes.jsonl")


def test_a_compiled_cuda_group_completes_with_its_trunks_compiled(tmp_path):
    """The compile arm's layout (model.compile=true, bf16, HalfCheetah: Inductor on CUDA, which turns CUDA graphs off)
    before its first run on a box: Dynamo captured the trunks, the group completes with finite losses, and the two
    members are two runs. (Compiled-vs-eager numbers: tests/test_group.py, on CPU.)"""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    statuses, dirs = _group(tmp_path, (*CHEETAH, "device=cuda", "precision=bf16", "model.compile=true"), seeds=(1, 2))
    assert statuses == ["completed"] * 2
    assert counters["stats"]["unique_graphs"] >= 1
    assert [read_run_json(d)["cuda_graphs"] for d in dirs] == [False, False]
    last = [read_jsonl(d / "metrics.jsonl")[-1] for d in dirs]
    assert all(math.isfinite(m["value_loss"]) and math.isfinite(m["policy_loss"]) for m in last)
    assert last[0]["value_loss"] != last[1]["value_loss"]


def test_a_traced_fp16_cuda_group_trains_as_untraced_and_traces_its_skipped_steps(tmp_path, monkeypatch):
    """ESPER_NONFINITE_TRACE on the captured CUDA-graph path (the fp16 arm's layout in small: one fp16 group,
    deterministic): the trace reads each minibatch replay's flags and pre-step scale, recomputes a skipped step's
    loss eagerly outside the graph, finds its gradient non-finite again, and in the same parameters as the replayed
    step (nonfinite.step_gradients), and changes none of the training's numbers."""
    base = (*CHEETAH, "device=cuda", "deterministic=true", "precision=fp16", "model.gelu=exact")
    _, plain = _group(tmp_path, base, seeds=(1, 2), name="plain")
    trace = tmp_path / "trace.jsonl"
    monkeypatch.setenv("ESPER_NONFINITE_TRACE", str(trace))
    monkeypatch.setenv("ESPER_NONFINITE_TRACE_BELOW", "1e9")  # from 2^16: trace the scaler's ordinary overflows
    statuses, traced = _group(tmp_path, base, seeds=(1, 2), name="traced")
    assert statuses == ["completed"] * 2
    for p, q in zip(traced, plain):
        assert read_run_json(p)["cuda_graphs"] is True and read_run_json(p)["nonfinite_trace"] == str(trace)
        assert without_wall_clock(read_jsonl(p / "metrics.jsonl")) == \
            without_wall_clock(read_jsonl(q / "metrics.jsonl"))
        assert read_jsonl(p / "episodes.jsonl") == read_jsonl(q / "episodes.jsonl")
    records = read_jsonl(trace)
    skipped = [read_jsonl(p / "metrics.jsonl")[-1]["nonfinite_grad_steps"] for p in traced]
    assert sum(skipped) > 0 and len(records) == sum(min(n, 3) for n in skipped)
    assert all(r["trace"]["first"] is not None and not r["trace"]["inputs_finite"] for r in records)
    for r in records:  # the whole step recomputed eagerly is non-finite where the replayed step was (an inf norm
        eager, step = r["step_gradients"]["eager"], r["step_gradients"]["step"]  # clips inf to NaN, the rest to 0;
        assert eager["nonfinite"] and set(eager["nonfinite"]) <= set(step["nonfinite"])  # a NaN norm: all NaN)
        if eager["grad_norm"] == float("inf"):
            assert eager["nonfinite"] == step["nonfinite"]
        # the same loss (the replay's, as a difference of the update's float32 sums: rounded)
        assert r["step_stats"]["policy_loss"] == pytest.approx(r["policy_loss"], rel=1e-3, abs=1e-5)


def test_a_captured_fp16_member_skips_one_step_for_one_nan_gradient_and_then_steps_again(monkeypatch):
    """The session 22 fix on the captured graph path: one NaN gradient in member 1 (update 1's 4th replay) is skipped
    once; before the fix it stayed in the flat gradients' padding, and every later step of member 1 was skipped with
    a NaN norm until its loss scale was 0 (the fp16 arm's stalls). tests/test_nonfinite.py checks the same on CPU."""
    import esper_exp.ppo as ppo_module
    from esper_exp.runtime import prepare
    from esper_exp.train import build_ppo

    counter = torch.full((), 10**6, dtype=torch.long, device="cuda")
    real_loss = ppo_module.ppo_loss

    def loss_with_a_nan_gradient(evaluate, mb, p, numerics):
        loss, parts = real_loss(evaluate, mb, p, numerics)
        return loss + NaNGradAtCount.apply(next(evaluate.__self__.parameters()), counter, 2, 1), parts

    monkeypatch.setattr(ppo_module, "ppo_loss", loss_with_a_nan_gradient)
    cfg = make_cfg(*CHEETAH, "device=cuda", "deterministic=true", "precision=fp16")
    device = torch.device("cuda:0")
    prepare(cfg.seed, device, True, 1)
    ppo = build_ppo(cfg, [1, 2], device)[0]
    assert ppo.cuda_graphs and ppo.graph_capture
    records = [ppo.run_update(lambda *a: None).records]
    counter.fill_(3)  # after update 0 (the capture's warm-up runs counted down too): NaN at update 1's 4th replay
    records += [ppo.run_update(lambda *a: None).records for _ in range(3)]
    ppo.close()
    steps = cfg.ppo.update_epochs * cfg.ppo.num_minibatches
    member = [r[1] for r in records]
    skipped = [b["nonfinite_grad_steps"] - a["nonfinite_grad_steps"] for a, b in zip(member, member[1:])]
    assert skipped[0] >= 1 and math.isnan(member[1]["grad_norm"])  # update 1: the NaN step skipped
    for r, n in zip(member[2:], skipped[1:]):  # it steps again: not every step skipped, no NaN norm, a scale left
        assert n < steps and not math.isnan(r["grad_norm"]) and r["loss_scale"] > 0
    assert all(not math.isnan(r[0]["grad_norm"]) for r in records)  # member 0 never saw it
