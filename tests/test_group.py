"""Grouped runs: a member of a group is the run it would be trained alone (bitwise on CPU: metrics and episodes),
fails alone, stops alone, resumes alone, and computes in its cell's dtype; the member-axis optimizer pieces match
torch's."""

import pytest
import torch

from conftest import interrupt_after_update, make_cfg, read_jsonl, without_wall_clock
from esper_exp.stacked import FlatParams, MemberAdam, MemberGradScaler, clip_grad_norm_per_member
from esper_exp.tracking import read_run_json
from esper_exp.train import run, run_group

DISCRETE = ("env=cartpole", "ppo.total_timesteps=1024", "ppo.num_steps=64", "model.alpha.ramp_updates=4")
CONTINUOUS = ("env=halfcheetah", "ppo.total_timesteps=768", "ppo.num_steps=64", "ppo.num_minibatches=4",
              "ppo.update_epochs=4", "env.max_episode_steps=100", "model.alpha.ramp_updates=4")
SEEDS = (1, 2, 3)


def _group(tmp_path, overrides, seeds=SEEDS, name="group"):
    jobs = [(make_cfg(*overrides, f"seed={s}"), tmp_path / name / f"seed={s}") for s in seeds]
    return run_group(jobs), [d for _, d in jobs]


def _alone(tmp_path, overrides, seed, name="alone"):
    run_dir = tmp_path / name / f"seed={seed}"
    assert run(make_cfg(*overrides, f"seed={seed}"), run_dir) == "completed"
    return run_dir


def _same_run(a, b) -> None:
    assert without_wall_clock(read_jsonl(a / "metrics.jsonl")) == without_wall_clock(read_jsonl(b / "metrics.jsonl"))
    assert read_jsonl(a / "episodes.jsonl") == read_jsonl(b / "episodes.jsonl")


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("space", ["discrete", "continuous"])
def test_a_member_equals_the_same_run_trained_alone(tmp_path, space, precision):
    overrides = (*(DISCRETE if space == "discrete" else CONTINUOUS), f"precision={precision}")
    statuses, dirs = _group(tmp_path, overrides)
    assert statuses == ["completed"] * 3
    for k, (seed, run_dir) in enumerate(zip(SEEDS, dirs)):
        _same_run(run_dir, _alone(tmp_path, overrides, seed))
        group = read_run_json(run_dir)["group"]
        assert group["size"] == 3 and group["member_index"] == k and group["members"][k] == str(run_dir)
    # the members are different runs (not one run copied three times)
    assert read_jsonl(dirs[0] / "metrics.jsonl")[-1]["value_loss"] != read_jsonl(dirs[1] / "metrics.jsonl")[-1]["value_loss"]


def test_a_non_finite_member_fails_alone_and_the_others_equal_their_single_runs(tmp_path, monkeypatch):
    from esper_exp.policy import ActorCritic

    evaluate, calls = ActorCritic.evaluate, []

    def poisoned(self, obs, action, numerics):  # member 1 of a group of 3 gets NaN values from update 3 on
        logp, ent, value = evaluate(self, obs, action, numerics)
        if self.members == 3:
            calls.append(1)
            if len(calls) > 2 * 4 * 4:  # 2 updates x 4 epochs x 4 minibatches
                value = value.clone()
                value[1] = float("nan")
        return logp, ent, value

    monkeypatch.setattr(ActorCritic, "evaluate", poisoned)
    statuses, dirs = _group(tmp_path, DISCRETE)
    assert statuses == ["completed", "failed", "completed"]
    info = read_run_json(dirs[1])
    assert info["status"] == "failed" and "non-finite loss" in info["reason"] and "update 3" in info["reason"]
    assert [r["update"] for r in read_jsonl(dirs[1] / "metrics.jsonl")] == [1, 2]  # updates before the failure stay
    for seed, run_dir in ((1, dirs[0]), (3, dirs[2])):
        _same_run(run_dir, _alone(tmp_path, DISCRETE, seed))


@pytest.mark.parametrize("precision,dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16),
                                             ("fp32", torch.float32)])
def test_a_member_computes_its_seed_mlp_in_its_cells_dtype(tmp_path, monkeypatch, precision, dtype):
    """Guards the vmap trap (torch.func.vmap silently drops autocast): the stacked seed must really run in bf16."""
    from esper_exp.seeds import MLPSeed

    seen = set()
    forward = MLPSeed.branch

    def spy(self, x, numerics):
        out = forward(self, x, numerics)
        seen.add((self.fc1(x).dtype, out.dtype, torch.is_grad_enabled()))
        return out

    monkeypatch.setattr(MLPSeed, "branch", spy)
    statuses, _ = _group(tmp_path, (*DISCRETE, "ppo.total_timesteps=256", f"precision={precision}"))
    assert statuses == ["completed"] * 3
    assert seen == {(dtype, dtype, False), (dtype, dtype, True)}  # rollout (no grad) and update


def test_target_kl_stops_each_member_on_its_own(tmp_path):
    overrides = (*DISCRETE, "ppo.target_kl=0.002", "ppo.learning_rate=1e-3")
    statuses, dirs = _group(tmp_path, overrides)
    assert statuses == ["completed"] * 3
    epochs = [[r["epochs"] for r in read_jsonl(d / "metrics.jsonl")] for d in dirs]
    assert any(len({e[u] for e in epochs}) > 1 for u in range(len(epochs[0])))  # members stopped at different epochs
    for seed, run_dir in zip(SEEDS, dirs):
        _same_run(run_dir, _alone(tmp_path, overrides, seed))


def test_members_resumed_at_different_updates_equal_their_uninterrupted_runs(tmp_path, monkeypatch):
    overrides = (*DISCRETE, "tracking.checkpoint_every=2")
    # seed 2 alone, stopped (as by Ctrl-C) after update 3: its last checkpoint is at update 2
    interrupt_after_update(monkeypatch, (*overrides, "seed=2"), tmp_path / "group" / "seed=2", 3)
    assert read_run_json(tmp_path / "group" / "seed=2")["status"] == "interrupted"
    # the group: seeds 1 and 3 start fresh, seed 2 continues from its update-2 checkpoint
    statuses, dirs = _group(tmp_path, overrides)
    assert statuses == ["completed"] * 3
    assert read_run_json(dirs[1])["resumed_at"]
    for seed, run_dir in zip(SEEDS, dirs):
        _same_run(run_dir, _alone(tmp_path, overrides, seed))


def test_group_rejects_jobs_that_differ_beyond_the_seed_and_cell(tmp_path):
    # a GELU x precision cell may differ (a mixed group), an env or hyper-parameter may not; nor may a cell where
    # a job cannot be mixed (the applied-update probe)
    for other in (("ppo.learning_rate=0.001",), ("drift.probe_every=2", "precision=bf16")):
        jobs = [(make_cfg(*DISCRETE, "seed=1", *other[:1] if len(other) > 1 else ()), tmp_path / "a"),
                (make_cfg(*DISCRETE, "seed=2", *other), tmp_path / "b")]
        with pytest.raises(ValueError, match="group_key"):
            run_group(jobs)


# ------------------------------------------------------------------------------------------ member-axis pieces
def _flat(members=3, shapes=((16, 5), (7,))):
    gen = torch.Generator().manual_seed(0)
    module = torch.nn.ParameterList([torch.nn.Parameter(torch.randn(members, *s, generator=gen)) for s in shapes])
    return module, FlatParams(module, members)


def test_member_adam_equals_torch_fused_adam_and_a_masked_member_does_not_move():
    module, flat = _flat()
    ref = [[torch.nn.Parameter(p[k].detach().clone()) for p in module] for k in range(3)]
    opts = [torch.optim.Adam(r, lr=3e-4, eps=1e-5, fused=True) for r in ref]
    adam = MemberAdam(flat, lr=3e-4, eps=1e-5)
    gen = torch.Generator().manual_seed(1)
    for step in range(30):
        mask = [True, step % 3 != 0, True]  # member 1 skips every third step (e.g. an fp16 overflow)
        lr = 3e-4 * (1 - step / 60)
        adam.set_lr([lr] * 3)
        adam.zero_grad()
        grads = [torch.randn(p.shape, generator=gen) for p in module]
        for p, g in zip(module, grads):
            p.grad = g.clone()
        flat.gather_grads()
        before = flat.data.clone()
        adam.step(mask)
        for k in range(3):
            if mask[k]:
                opts[k].param_groups[0]["lr"] = lr
                for r, g in zip(ref[k], grads):
                    r.grad = g[k].clone()
                opts[k].step()
            else:
                assert torch.equal(flat.data[k], before[k])
            for p, r in zip(module, ref[k]):
                assert torch.equal(p[k], r.detach())  # bitwise torch.optim.Adam(fused=True)


def test_grad_clip_and_loss_scale_are_per_member():
    module, flat = _flat(members=2, shapes=((3, 4), (3,)))
    for p in module:
        p.grad = torch.stack([torch.full(p.shape[1:], 10.0), torch.full(p.shape[1:], 0.01)])
    flat.gather_grads()
    norms = clip_grad_norm_per_member(flat.grad, max_norm=0.5)
    torch.testing.assert_close(norms, torch.tensor([10.0 * 15**0.5, 0.01 * 15**0.5]))
    assert torch.equal(flat.grad[1, :12], torch.full((12,), 0.01))  # the small member is not clipped
    torch.testing.assert_close(torch.linalg.vector_norm(flat.grad[0]), torch.tensor(0.5), rtol=1e-5, atol=0)
    scaler = MemberGradScaler(2, torch.device("cpu"), enabled=True, growth_interval=2)
    overflow = torch.tensor([True, False])
    scaler.update(found_inf=overflow, stepped=~overflow)
    assert scaler.scale.tolist() == [2.0**15, 2.0**16]  # only the overflowing member backs off
    scaler.update(found_inf=torch.tensor([False, False]), stepped=torch.tensor([True, True]))
    assert scaler.scale.tolist() == [2.0**15, 2.0**17]  # member 1 grew after 2 good steps; member 0 after 1 only


def test_a_nan_gradient_does_not_outlive_its_step():
    # the clip multiplies whole rows in place: a NaN norm makes every column NaN, the padding too; the next gather
    # must leave a row that is the new gradients alone (before session 22 the padding kept the NaN, so every later
    # norm of that member was NaN: an fp16 member skipped every later step)
    module, flat = _flat(members=2, shapes=((3, 4), (3,)))
    assert flat.used == 15 and flat.grad.shape[1] == 64  # 49 columns of padding
    for p in module:
        p.grad = torch.ones_like(p)
    module[0].grad[1, 0, 0] = float("nan")
    flat.gather_grads()
    assert clip_grad_norm_per_member(flat.grad, 0.5)[1].isnan() and flat.grad[1].isnan().all()
    for p in module:
        p.grad = torch.ones_like(p)
    flat.gather_grads()
    assert torch.equal(flat.grad, flat.flatten([p.grad for p in module]))  # as a fresh buffer: padding zero
    torch.testing.assert_close(clip_grad_norm_per_member(flat.grad, 0.5), torch.full((2,), 15**0.5))


def test_env_workers_change_nothing_and_a_run_resumes_across_worker_counts(tmp_path, monkeypatch):
    # env_workers is not part of a run's identity: a run started with 2 env worker processes, stopped, and resumed
    # with the envs in the training process equals the run trained in one go without workers, bitwise
    overrides = (*CONTINUOUS, "tracking.checkpoint_every=2")
    reference = _alone(tmp_path, overrides, 2)
    run_dir = tmp_path / "workers" / "seed=2"
    interrupt_after_update(monkeypatch, (*overrides, "seed=2", "env_workers=2", "env_spin_us=50"), run_dir, 3)
    assert read_run_json(run_dir)["status"] == "interrupted"
    assert run(make_cfg(*overrides, "seed=2", "env_workers=0"), run_dir) == "completed"
    assert read_run_json(run_dir)["resumed_at"]  # from its update-2 checkpoint, not started over
    _same_run(run_dir, reference)


@pytest.mark.parametrize("space", ["discrete", "continuous"])
def test_a_mixed_group_member_equals_the_same_run_trained_alone(tmp_path, space):
    """Members of several GELU x precision cells in one group (the GPU sweep's layout, hydra.launcher.mix_cells):
    each computes its own cell's numerics, bitwise what it computes alone (fp16 members with their loss scale,
    the others with none)."""
    base = DISCRETE if space == "discrete" else CONTINUOUS
    cells = [("exact", "fp32"), ("exact", "fp32"), ("tanh", "bf16"), ("exact", "fp16"), ("tanh", "fp16")]
    jobs = [(make_cfg(*base, f"model.gelu={g}", f"precision={p}", f"seed={s}"), tmp_path / "mixed" / f"{g}-{p}-{s}")
            for s, (g, p) in zip((1, 2, 1, 3, 3), cells)]
    assert run_group(jobs) == ["completed"] * 5
    for cfg, run_dir in jobs:
        assert read_run_json(run_dir)["group"]["size"] == 5
        overrides = (*base, f"model.gelu={cfg.model.gelu}", f"precision={cfg.precision.name}")
        _same_run(run_dir, _alone(tmp_path, overrides, cfg.seed, name=f"alone-{run_dir.name}"))
    scaled = ["loss_scale" in read_jsonl(d / "metrics.jsonl")[0] for _, d in jobs]
    assert scaled == [False, False, False, True, True]


def test_a_pipelined_rollout_changes_nothing(tmp_path):
    """A mixed group with env workers steps its precision segments' envs separately (one part's envs step while
    the next part's actions are computed): each member is still bitwise the run trained alone."""
    cells = [("exact", "fp32"), ("tanh", "fp32"), ("tanh", "bf16"), ("exact", "bf16")]
    jobs = [(make_cfg(*CONTINUOUS, f"model.gelu={g}", f"precision={p}", f"seed={s}", "env_workers=2"),
             tmp_path / "mixed" / f"{g}-{p}-{s}") for s, (g, p) in zip((1, 2, 2, 3), cells)]
    from esper_exp import envs as envs_module

    seen = []
    step_wait = envs_module.GroupEnvs.step_wait

    def recording(self, part=0):
        seen.append((len(self.parts), part))
        return step_wait(self, part)

    import pytest as _pytest

    with _pytest.MonkeyPatch.context() as mp:
        mp.setattr(envs_module.GroupEnvs, "step_wait", recording)
        assert run_group(jobs) == ["completed"] * 4
    assert {n for n, _ in seen} == {2} and {p for _, p in seen} == {0, 1}  # two parts, stepped apart
    for cfg, run_dir in jobs:
        overrides = (*CONTINUOUS, f"model.gelu={cfg.model.gelu}", f"precision={cfg.precision.name}")
        _same_run(run_dir, _alone(tmp_path, overrides, cfg.seed, name=f"alone-{run_dir.name}"))


@pytest.mark.slow  # ~30 s on 2 cores: Inductor compiles the trunk (a C++ compiler is needed)
def test_a_compiled_group_trains_and_computes_what_the_eager_group_does(tmp_path):
    """model.compile=true (the study's compile arm, issue 13): the trunks really are compiled (Dynamo captured
    graphs), the group completes, and its first update is the eager group's up to float rounding (fp32)."""
    from torch._dynamo.utils import counters

    base = ("env=cartpole", "ppo.total_timesteps=256", "ppo.num_steps=64", "ppo.update_epochs=1")

    def train(name, *extra):
        jobs = [(make_cfg(*base, *extra, f"seed={s}"), tmp_path / name / f"seed={s}") for s in (1, 2)]
        assert run_group(jobs) == ["completed", "completed"]
        return [read_jsonl(d / "metrics.jsonl")[0] for _, d in jobs]

    torch._dynamo.reset()
    counters.clear()
    compiled = train("compiled", "model.compile=true")
    assert counters["stats"]["unique_graphs"] >= 1
    eager = train("eager")
    for c, e in zip(compiled, eager):
        for key in ("policy_loss", "value_loss", "entropy", "approx_kl", "grad_norm"):
            assert c[key] == pytest.approx(e[key], rel=1e-4, abs=1e-6), key
    assert compiled[0]["value_loss"] != compiled[1]["value_loss"]  # two runs, not one twice
