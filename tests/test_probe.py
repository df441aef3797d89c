"""Drift instrumentation (trainer side): the probe changes nothing, the reference against itself is exact,
and the perturbation controls change what they say."""

import math

import pytest
import torch

from conftest import TINY_CARTPOLE, make_cfg, read_jsonl, without_wall_clock
from esper_exp.train import build_ppo
from esper_exp.runtime import prepare
from esper_exp.tracking import read_run_json

PROBED = ("drift.probe_every=1", "drift.snapshot_every=2")


@pytest.mark.parametrize("cell", [("model.gelu=tanh", "precision=bf16"), ("model.gelu=exact", "precision=fp16")])
def test_probe_and_snapshots_leave_the_run_bitwise_unchanged(train_run, cell):
    plain = train_run(*TINY_CARTPOLE, *cell, name="plain")
    probed = train_run(*TINY_CARTPOLE, *cell, *PROBED, name="probed")
    assert without_wall_clock(read_jsonl(plain / "metrics.jsonl")) == without_wall_clock(read_jsonl(probed / "metrics.jsonl"))
    assert read_jsonl(plain / "episodes.jsonl") == read_jsonl(probed / "episodes.jsonl")
    probes = read_jsonl(probed / "probe.jsonl")
    assert [p["update"] for p in probes] == list(range(1, 9))
    # a real deviation is measured: tanh/bf16 and fp16 numerics differ from exact/fp32
    assert all(p["grad_cos"] < 1.0 and p["grad_rel_l2"] > 0 for p in probes[1:])
    assert len(read_jsonl(probed / "snapshots.jsonl")) == 1 + 8 // 2  # update 0, then every 2


def test_shadow_probe_of_the_reference_against_itself_is_exact(train_run):
    run_dir = train_run(*TINY_CARTPOLE, "model.gelu=exact", "precision=fp32", "drift.probe_every=1", name="ref")
    for p in read_jsonl(run_dir / "probe.jsonl"):
        assert p["grad_cos"] == 1.0 and p["grad_rel_l2"] == 0.0 and p["grad_max_abs"] == 0.0
        assert p["loss_run"] == p["loss_ref"] and p["action_kl"] == 0.0
        assert all(p[f"{k}_max_abs"] == 0.0 for k in ("actor_out", "value", "actor_seed", "critic_seed"))
        assert all(v["rel_l2"] == 0.0 for v in p["layers"].values())


def test_tanh_gelu_is_invisible_until_alpha_opens_the_seed(train_run):
    run_dir = train_run(*TINY_CARTPOLE, "model.gelu=tanh", "drift.probe_every=1", name="a0")
    probes = read_jsonl(run_dir / "probe.jsonl")
    # update 1: alpha = 0 and fc2 = 0 (identity at birth): the GELU variant cannot change anything
    assert probes[0]["actor_seed_max_abs"] == 0.0 and probes[0]["grad_rel_l2"] == 0.0
    # once alpha > 0, fc2 learns and the GELU variant shows in the seed's output and in the gradients
    assert probes[-1]["actor_seed_max_abs"] > 0 and probes[-1]["grad_rel_l2"] > 0


def _ppo(*overrides, seeds=(1, 2)):
    cfg = make_cfg("env=cartpole", "ppo.num_steps=32", "ppo.total_timesteps=128", *overrides)
    prepare(cfg.seed, torch.device("cpu"), True, 1)
    return build_ppo(cfg, list(seeds), torch.device("cpu"))


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
    for p in (base, ulp, alone, large):
        p.close()


def test_perturbed_runs_are_their_own_cell(train_run):
    info = read_run_json(train_run(*TINY_CARTPOLE, "drift.perturb=ulp", name="ulp"))
    assert info["cell"] == "cartpole/exact/fp32/perturb-ulp" and info["perturb"] == "ulp"
    assert info["perturbation"]["kind"] == "ulp"
