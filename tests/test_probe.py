"""Drift instrumentation (trainer side, schema 2): the probe and the snapshots change nothing, the applied-update
probe of a numerics against itself is exactly 0, the controls do what they say, and the on-policy snapshots of a
sweep are paired on the reference's states by esper_exp.drift_eval."""

import math

import numpy as np
import pytest
import torch
from conftest import TINY_CARTPOLE, graph_code_on_cpu, make_cfg, read_jsonl, without_wall_clock

from esper_exp import probe as P
from esper_exp.numerics import Numerics, gelu_perturbation, hash_sign
from esper_exp.runtime import prepare
from esper_exp.tracking import read_run_json
from esper_exp.train import build_ppo

PROBED = ("drift.probe_every=1", "drift.snapshot_every=2")
RAMP = ("model.alpha.ramp_updates=2",)  # alpha > 0 from update 2: the seed (and its GELU) takes part early
STEP_KEYS = {"epoch", "minibatch", "applied_norm", "gelu_diff_norm", "dtype_diff_norm", "noise_diff_norm"}


@pytest.mark.parametrize("cell", [("model.gelu=tanh", "precision=bf16"), ("model.gelu=exact", "precision=fp16")])
def test_probe_and_snapshots_leave_the_run_bitwise_unchanged(train_run, cell):
    plain = train_run(*TINY_CARTPOLE, *RAMP, *cell, name="plain")
    probed = train_run(*TINY_CARTPOLE, *RAMP, *cell, *PROBED, name="probed")
    assert without_wall_clock(read_jsonl(plain / "metrics.jsonl")) == without_wall_clock(read_jsonl(probed / "metrics.jsonl"))
    assert read_jsonl(plain / "episodes.jsonl") == read_jsonl(probed / "episodes.jsonl")
    # schema-2 applied-update probe: every optimizer step of every update (4 epochs x 4 minibatches)
    probes = read_jsonl(probed / "probe.jsonl")
    assert [p["update"] for p in probes] == list(range(1, 9))
    for p in probes:
        assert p["schema"] == 2 and set(p["steps"]) == STEP_KEYS
        st = p["steps"]
        assert all(len(v) == 16 for v in st.values())
        assert st["epoch"] == [e for e in range(4) for _ in range(4)] and st["minibatch"] == list(range(4)) * 4
        applied = [a > 0 for a in st["applied_norm"]]
        assert all(n > 0 for n, a in zip(st["noise_diff_norm"], applied) if a)
        assert all(d is not None and d > 0 for d in st["dtype_diff_norm"])  # bf16/fp16 vs fp32 always differ
    # a step is 0 exactly when fp16's loss scaler skipped it (overflow), as the run counts them
    skipped = sum(a == 0 for p in probes for a in p["steps"]["applied_norm"])
    assert skipped == read_jsonl(probed / "metrics.jsonl")[-1]["nonfinite_grad_steps"]
    assert (skipped > 0) == ("precision=fp16" in cell)
    assert all(g > 0 for g in probes[-1]["steps"]["gelu_diff_norm"])  # alpha > 0: tanh vs exact shows
    # schema-2 snapshots: update 0 (on the first rollout's states), then every 2, fp32 on own on-policy states
    snaps = read_jsonl(probed / "snapshots.jsonl")
    assert [s["update"] for s in snaps] == [0, 2, 4, 6, 8]
    for s in snaps:
        assert s["schema"] == 2 and s["eval"] == {"gelu": "exact", "precision": "fp32"} and s["discrete"]
        assert s["states"]["kind"] == "on_policy" and s["states"]["source"] == "self" and s["states"]["n"] == 256
        assert np.array(s["actor_out"]).shape == (256, 2) and len(s["value"]) == 256
        assert len(s["params"]["sketch"]) == 1024 and P.snapshot_path(probed, s["update"]).exists()
    assert len({s["states"]["sha"] for s in snaps}) == 5  # each from its own rollout


def _ppo(*overrides, seeds=(1, 2)):
    cfg = make_cfg("env=cartpole", "ppo.num_steps=32", "ppo.total_timesteps=1280", *overrides)
    prepare(cfg.seed, torch.device("cpu"), True, 1)
    return build_ppo(cfg, list(seeds), torch.device("cpu"))


def _record_adam_steps(ppo, method: str = "step") -> dict[int, list[float]]:
    """Wrap ``ppo.optimizer.<method>`` (an instance attribute: ``del`` undoes it) to record the norm of each actual
    Adam step per member."""
    actual = {k: [] for k in range(ppo.members)}
    step = getattr(ppo.optimizer, method)

    def recording(mask):
        before = ppo.flat.data.clone()
        step(mask)
        for k in range(ppo.members):
            if mask[k]:
                actual[k].append(float((ppo.flat.data[k] - before[k]).double().norm()))

    setattr(ppo.optimizer, method, recording)
    return actual


def _steps_with_actual(ppo, probe):
    """Run one probed update, recording the norm of each actual Adam step per member."""
    actual = _record_adam_steps(ppo)
    try:
        result, steps = probe.run_update(lambda *a: None)
    finally:
        del ppo.optimizer.step
    return result, steps, actual


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_applied_update_probe_against_itself_is_exactly_zero_and_tanh_is_not(precision):
    ppo, _ = _ppo("model.alpha.kind=constant", "model.alpha.start=0.5", f"precision={precision}")
    ppo.run_update(lambda *a: None)  # fc2 learns once, so the GELU variant reaches the outputs
    same = P.AppliedUpdateProbe(ppo, other_gelu=ppo.numerics, fp32=ppo.numerics)
    _, steps, actual = _steps_with_actual(ppo, same)
    for k in range(2):
        st = steps[k]
        assert len(st["applied_norm"]) == 4 * 4  # update_epochs x num_minibatches
        assert st["gelu_diff_norm"] == [0.0] * 16 and st["dtype_diff_norm"] == [0.0] * 16
        assert all(n > 0 for n in st["noise_diff_norm"])
        assert st["applied_norm"] == actual[k]  # the recomputed step is bitwise the one applied
    real = P.AppliedUpdateProbe(ppo)  # tanh vs exact in the run's dtype; fp32 vs the run's dtype
    assert real.other_gelu.gelu == "tanh" and (real.fp32 is None) == (precision == "fp32")
    _, steps, actual = _steps_with_actual(ppo, real)
    for k in range(2):
        assert all(g > 0 for g in steps[k]["gelu_diff_norm"]) and steps[k]["applied_norm"] == actual[k]
        assert steps[k]["dtype_diff_norm"] == [None] * 16 if precision == "fp32" else \
            all(d > 0 for d in steps[k]["dtype_diff_norm"])
    ppo.close()


def test_probe_refuses_what_it_cannot_measure():
    ppo, _ = _ppo("ppo.num_minibatches=1")
    with pytest.raises(ValueError, match="num_minibatches >= 2"):
        P.AppliedUpdateProbe(ppo)
    ppo.close()
    from esper_exp.config import ConfigError, validate
    with pytest.raises(ConfigError, match="num_minibatches >= 2"):
        validate(make_cfg("env=cartpole", "drift.probe_every=1", "ppo.num_minibatches=1"))


def test_persistent_perturbation_has_the_tanh_size_and_zero_mean():
    x = torch.randn(400_000, generator=torch.Generator().manual_seed(0)) * 3
    p = gelu_perturbation(x)
    size = (torch.nn.functional.gelu(x, approximate="tanh") - torch.nn.functional.gelu(x)).abs()
    assert torch.equal(p.abs(), size) and size.max() > 4e-4
    assert abs(float(hash_sign(x).mean())) < 5e-3 and abs(float(p.mean())) < 0.02 * float(size.mean())
    assert torch.equal(gelu_perturbation(x), p)  # stateless: the same input gives the same perturbation
    on, off = Numerics(perturb=True), Numerics()
    assert torch.equal(on.apply_gelu(x), off.apply_gelu(x) + p) and not on.reference().perturb
    for dtype in (torch.bfloat16, torch.float16):  # any autocast dtype: defined, same dtype out
        assert on.apply_gelu(x.to(dtype)).dtype == dtype
    x.requires_grad_(True)
    on.apply_gelu(x).sum().backward()  # differentiable through the size


def test_persistent_and_duplicate_runs(train_run):
    base = train_run(*TINY_CARTPOLE, *RAMP, name="base")
    dup = train_run(*TINY_CARTPOLE, *RAMP, "drift.perturb=duplicate", name="dup")
    pers = train_run(*TINY_CARTPOLE, *RAMP, "drift.perturb=persistent", name="pers")
    m = {n: without_wall_clock(read_jsonl(d / "metrics.jsonl")) for n, d in (("b", base), ("d", dup), ("p", pers))}
    assert m["d"] == m["b"]  # the determinism control: bitwise its base cell
    assert m["p"][0] == m["b"][0] and m["p"][-1] != m["b"][-1]  # alpha = 0 at update 1: the GELU is not used yet
    for d, kind in ((dup, "duplicate"), (pers, "persistent")):
        info = read_run_json(d)
        assert info["cell"] == f"cartpole/exact/fp32/perturb-{kind}" and info["perturbation"]["kind"] == kind


def test_ulp_perturbation_moves_one_weight_of_each_member_by_one_ulp():
    (base, _), (ulp, changes) = _ppo(), _ppo("drift.perturb=ulp")
    for k in range(2):  # each member: exactly one weight, moved by one ulp, chosen by its own seed
        mine, theirs = base.policy.member_params(k), ulp.policy.member_params(k)
        diffs = [(n, (a != b).nonzero()) for (n, a), (_, b) in zip(mine, theirs) if not torch.equal(a, b)]
        assert len(diffs) == 1 and len(diffs[0][1]) == 1
        name, idx = diffs[0][0], tuple(diffs[0][1][0].tolist())
        a, b = dict(mine)[name][idx], dict(theirs)[name][idx]
        assert b.item() == torch.nextafter(a, torch.tensor(math.inf)).item()
        assert changes[k]["param"] == name
    (alone, alone_changes) = _ppo("drift.perturb=ulp", seeds=(2,))
    assert alone_changes[0] == changes[1]  # member 1 (seed 2) is perturbed as it would be alone
    (large, _) = _ppo("drift.perturb=large")
    for k in range(2):  # every non-zero weight matrix of the member (critic and actor trunks, both heads)
        changed = [n for (n, a), (_, b) in zip(base.policy.member_params(k), large.policy.member_params(k))
                   if not torch.equal(a, b)]
        assert len(changed) == 8 and all("fc2" not in n and "bias" not in n for n in changed), changed
    for dup_or_pers in ("duplicate", "persistent"):  # no weight changes
        (other, _) = _ppo(f"drift.perturb={dup_or_pers}")
        assert all(torch.equal(a, b) for (_, a), (_, b) in zip(base.policy.member_params(0),
                                                               other.policy.member_params(0)))
        assert other.numerics.perturb == (dup_or_pers == "persistent")
        other.close()
    for p in (base, ulp, alone, large):
        p.close()


def test_perturbed_runs_are_their_own_cell(train_run):
    info = read_run_json(train_run(*TINY_CARTPOLE, "drift.perturb=ulp", name="ulp"))
    assert info["cell"] == "cartpole/exact/fp32/perturb-ulp" and info["perturb"] == "ulp"
    assert info["perturbation"]["kind"] == "ulp"


def test_recent_observations_are_the_rollouts_raw_observations():
    ppo, _ = _ppo()  # CartPole has no observation normalisation: the rollout buffer holds raw observations
    rec = P.RecentObservations(ppo.envs, ppo.num_steps)
    ppo.run_update(lambda *a: None)
    hist = np.stack(rec.history)  # [T, K*N, d]: observations after each step = buf.obs[1:], then next_obs
    K, N = ppo.members, ppo.num_envs
    want = torch.cat([ppo.buf.obs[1:], ppo.next_obs[None]]).reshape(ppo.num_steps, K * N, -1).double().numpy()
    assert np.array_equal(hist, want)
    s1, s2 = rec.sample(1, 2, 5, 64), rec.sample(1, 2, 5, 64)
    assert np.array_equal(s1, s2) and len({tuple(r) for r in s1}) == 64  # deterministic, distinct rows
    assert not np.array_equal(rec.sample(1, 2, 6, 64), s1)
    ppo.close()


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_applied_update_probe_on_the_cuda_graph_path_code_uncaptured(precision):
    """The CUDA-graph path's code run eagerly on CPU (as tests/test_cuda_graphs.py does): the probe runs before each
    minibatch replay, copies the device-side Adam, is exactly 0 against itself and equals the applied step."""
    ppo = graph_code_on_cpu(_ppo("model.alpha.kind=constant", f"precision={precision}")[0])
    ppo.run_update(lambda *a: None)
    actual = _record_adam_steps(ppo, "step_masked")
    _, steps = P.AppliedUpdateProbe(ppo, other_gelu=ppo.numerics, fp32=ppo.numerics).run_update(lambda *a: None)
    for k in range(2):
        st = steps[k]
        assert st["gelu_diff_norm"] == st["dtype_diff_norm"] == [0.0] * 16
        assert [a for a in st["applied_norm"] if a > 0] == actual[k]  # scaler-skipped steps: 0, no Adam step
    _, steps = P.AppliedUpdateProbe(ppo).run_update(lambda *a: None)
    assert all(g > 0 for k in range(2) for g, a in zip(steps[k]["gelu_diff_norm"], steps[k]["applied_norm"]) if a)
    assert "_call" not in ppo.__dict__ and "update" not in ppo.__dict__  # the hooks are gone afterwards
    ppo.close()


def test_an_interrupted_and_resumed_run_writes_the_same_drift_records(tmp_path, monkeypatch):
    from conftest import interrupt_after_update
    from esper_exp.train import run

    overrides = (*TINY_CARTPOLE, *RAMP, *PROBED, "tracking.checkpoint_every=2")
    whole = tmp_path / "whole"
    assert run(make_cfg(*overrides), whole) == "completed"
    cut = tmp_path / "cut"
    interrupt_after_update(monkeypatch, overrides, cut, 3)  # checkpoint at update 2; update 3 is redone
    assert run(make_cfg(*overrides), cut) == "completed"
    for name in ("snapshots.jsonl", "probe.jsonl"):
        assert read_jsonl(cut / name) == read_jsonl(whole / name), name
