"""The CUDA-graph path of the grouped engine (esper_exp/ppo.py, issue 12 item 2).

On CPU: its parts run eagerly (``graph_capture`` off) and are checked against the host path they replace: the
device-side masked Adam against MemberAdam's fused step, the static-buffer minibatch update against ``update()`` on
the same rollout (stats, failures, target-KL stop, fp16 loss scale), and the pre-drawn noise / noise-taking act against
``act``. On CUDA (skipped without one): the captured graphs against the same code run eagerly, and a small group run.
"""

import importlib.util
import math

import numpy as np
import pytest
import torch
from conftest import graph_code_on_cpu, make_cfg

from esper_exp.ppo import compute_gae
from esper_exp.runtime import prepare
from esper_exp.stacked import FlatParams, MemberAdam
from esper_exp.train import build_ppo

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _flat(members=3, shapes=((16, 5), (7,))):
    module = torch.nn.ParameterList([torch.nn.Parameter(torch.randn(members, *s)) for s in shapes])
    return module, FlatParams(module, members)


def test_step_masked_equals_member_adam_and_a_masked_member_keeps_its_bits():
    torch.manual_seed(0)
    m1, f1 = _flat()
    m2, f2 = _flat()
    with torch.no_grad():
        for a, b in zip(m1.parameters(), m2.parameters()):
            b.copy_(a)
    f1.pull(), f2.pull()
    host, dev = MemberAdam(f1, lr=3e-4, eps=1e-5), MemberAdam(f2, lr=3e-4, eps=1e-5, on_device=True)
    masks = [[True, True, True], [True, False, True], [False, False, True], [True, True, True], [True, True, False]]
    for i, mask in enumerate(masks):
        lr = [3e-4 * (1 - i / 10), 2.5e-4, 1e-3]
        host.set_lr(lr), dev.set_lr(lr)
        grad = torch.randn_like(f1.grad) * 10 ** (i % 3)
        f1.grad.copy_(grad), f2.grad.copy_(grad)
        before = f2.data.clone(), dev.exp_avg.clone(), dev.exp_avg_sq.clone()
        host.step(mask)
        dev.step_masked(torch.tensor(mask))
        for k, on in enumerate(mask):
            if not on:  # not touched at all
                for b, now in zip(before, (f2.data, dev.exp_avg, dev.exp_avg_sq)):
                    assert torch.equal(b[k], now[k])
        torch.testing.assert_close(f2.data, f1.data, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(dev.exp_avg, host.exp_avg, rtol=1e-5, atol=1e-9)
        torch.testing.assert_close(dev.exp_avg_sq, host.exp_avg_sq, rtol=1e-5, atol=1e-12)
        assert dev.step_t.tolist() == host.steps
        for a, b in zip(m1.parameters(), m2.parameters()):  # scattered back into the module
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7)
    assert dev.state_dict(2)["step"] == host.state_dict(2)["step"] == 4


def _pair(*overrides, seeds=(1, 2, 3)):
    """Two PPOs of the same group: the host path, and the CUDA-graph path's code run eagerly on CPU."""
    cfg = make_cfg("env=cartpole", "ppo.num_steps=32", "env.num_envs=2", "ppo.num_minibatches=4",
                   "ppo.update_epochs=3", *overrides)
    prepare(cfg.seed, torch.device("cpu"), True, 1)
    host = build_ppo(cfg, list(seeds), torch.device("cpu"))[0]
    dev = graph_code_on_cpu(build_ppo(cfg, list(seeds), torch.device("cpu"))[0])
    return host, dev


def _rollout(host, dev):
    host.collect_rollout(lambda *a: None, {"env": 0.0, "inference": 0.0})
    for f in ("obs", "actions", "logprobs", "rewards", "episode_ends", "values"):
        getattr(dev.buf, f).copy_(getattr(host.buf, f))
    with torch.no_grad():
        last = host.policy.value(host.next_obs, host.numerics)
    p = host.hp
    return compute_gae(host.buf.rewards, host.buf.values, host.buf.episode_ends, last, p.gamma, p.gae_lambda)


def _close_stats(a, b):
    for key in a:
        torch.testing.assert_close(b[key].float(), a[key].float(), rtol=2e-4, atol=1e-6, equal_nan=True,
                                   msg=lambda m, key=key: f"{key}: {m}")


@pytest.mark.parametrize("overrides", [(), ("precision=fp16",), ("precision=bf16", "ppo.target_kl=0.000001")])
def test_static_buffer_update_equals_the_host_update(overrides):
    host, dev = _pair(*overrides)
    adv, ret = _rollout(host, dev)
    for _ in range(2):  # second update: moments and step counts carried over
        stats_h, fail_h = host.update(adv, ret)
        stats_d, fail_d = dev.update(adv, ret)
        _close_stats(stats_h, stats_d)
        assert torch.equal(stats_h["epochs"], stats_d["epochs"])
        assert torch.equal(fail_h["at"], fail_d["at"]) and (fail_d["at"] < 0).all()
        torch.testing.assert_close(dev.flat.data, host.flat.data, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(dev.scaler.scale, host.scaler.scale)
        assert dev.optimizer.step_t.tolist() == host.optimizer.steps
    if "ppo.target_kl=0.000001" in overrides:
        assert (stats_d["epochs"] < 3).any()  # the stop did happen, per member


def test_static_buffer_update_fails_a_non_finite_member_alone_with_its_reason():
    host, dev = _pair()
    adv, ret = _rollout(host, dev)
    for ppo in (host, dev):
        with torch.no_grad():
            ppo.policy.critic_head.bias[1] = float("nan")
        ppo.flat.pull()
    _, fail_h = host.update(adv, ret)
    _, fail_d = dev.update(adv, ret)
    assert fail_d["at"].tolist() == fail_h["at"].tolist() == [-1, 0, -1]
    assert math.isnan(fail_d["loss"][1]) and math.isnan(fail_h["loss"][1])
    for key in ("policy_loss", "entropy"):
        torch.testing.assert_close(fail_d[key][1], fail_h[key][1])
    keep = [0, 2]
    torch.testing.assert_close(dev.flat.data[keep], host.flat.data[keep], rtol=1e-4, atol=1e-6)
    assert dev.optimizer.step_t[1] == 0 and host.optimizer.steps[1] == 0
    assert torch.isfinite(dev.optimizer.exp_avg[1]).all()


MIXED4 = [("exact", "fp32"), ("tanh", "fp32"), ("tanh", "bf16"), ("exact", "fp16")]
MIXED3 = [("exact", "fp32"), ("tanh", "bf16"), ("exact", "bf16")]


@pytest.mark.parametrize("env,cells,parts", [
    ("cartpole", None, "segments"),
    ("cartpole", MIXED4, "segments"),
    ("cartpole", MIXED4, "one"),
    ("halfcheetah", MIXED3, "segments"),
    ("halfcheetah", MIXED3, "one"),
])
def test_graph_path_rollout_equals_the_host_rollout(env, cells, parts, monkeypatch):
    """The rollout step graph's code (obs in from host memory, act at a device step index, buffers written with
    index_copy_, actions out), run uncaptured on CPU over whole rollouts, one part or a mixed group's parts (with the
    truncation bootstrap: HalfCheetah's 1000-step limit falls inside the second rollout): buffers, next observations
    and the episodes seen are bitwise the host loop's (one part per precision segment). ESPER_ENV_PARTS=one (a mixed
    group stepped as one part) changes no number."""
    if env == "halfcheetah":
        pytest.importorskip("mujoco")
    steps = 600 if env == "halfcheetah" else 64
    cfg = make_cfg(f"env={env}", f"ppo.num_steps={steps}", "ppo.update_epochs=1")
    prepare(cfg.seed, torch.device("cpu"), True, 1)
    seeds = [1, 2, 3, 4][:len(cells) if cells else 3]
    host = build_ppo(cfg, seeds, torch.device("cpu"), cells)[0]
    monkeypatch.setenv("ESPER_ENV_PARTS", parts)
    dev = graph_code_on_cpu(build_ppo(cfg, seeds, torch.device("cpu"), cells)[0])
    assert len(host.envs.parts) == (1 if cells is None else len({p for _, p in cells}))
    assert len(dev.envs.parts) == (1 if parts == "one" else len(host.envs.parts))
    for _ in range(2):
        seen = []
        for ppo in (host, dev):
            episodes = []
            ppo.collect_rollout(lambda *e, out=episodes: out.append(e), {"env": 0.0, "inference": 0.0})
            seen.append(episodes)
            for k in range(len(seeds)):  # what run_update does between rollouts: the envs go on from here
                ppo.global_step[k] = 0
        for f in ("obs", "actions", "logprobs", "rewards", "episode_ends", "values"):
            assert torch.equal(getattr(dev.buf, f), getattr(host.buf, f)), f
        assert torch.equal(dev.next_obs, host.next_obs)
        assert seen[0] == seen[1]
    assert seen[0]  # episodes did end
    host.close()
    dev.close()


def test_pre_drawn_noise_is_per_member():
    """A member's rollout noise depends on its seed only, not on its group."""
    cfg = make_cfg("env=halfcheetah" if importlib.util.find_spec("mujoco") else "env=cartpole")
    pol = build_ppo(cfg, [1, 2, 3], torch.device("cpu"))[0].policy
    full = pol.draw_noise([torch.Generator().manual_seed(s) for s in (1, 2, 3)], 5, 2, torch.device("cpu"))
    alone = pol.draw_noise([torch.Generator().manual_seed(2)], 5, 2, torch.device("cpu"))
    assert full.shape[:3] == (5, 3, 2) and torch.equal(full[:, 1:2], alone)


def test_cuda_graphs_are_off_on_cpu_and_refused_there():
    cfg = make_cfg("env=cartpole")
    ppo = build_ppo(cfg, [1], torch.device("cpu"))[0]
    assert ppo.cuda_graphs is False and ppo.optimizer.on_device is False
    with pytest.raises(ValueError, match="needs a CUDA device"):
        type(ppo)(ppo.envs, ppo.policy, ppo.numerics, ppo.alphas, ppo.hp, ppo.seeds, torch.device("cpu"),
                  cuda_graphs=True)


# ------------------------------------------------------------------ GPU only
def _cuda_ppo(env, precision, seeds, capture):
    cfg = make_cfg(f"env={env}", f"precision={precision}", "device=cuda", "ppo.num_steps=64",
                   "ppo.update_epochs=2")
    device = torch.device("cuda:0")
    prepare(cfg.seed, device, True, 1)
    ppo = build_ppo(cfg, list(seeds), device)[0]
    assert ppo.cuda_graphs
    ppo.graph_capture = capture
    return ppo


@cuda
@pytest.mark.parametrize("env,precision", [("cartpole", "fp32"), ("cartpole", "fp16"), ("halfcheetah", "bf16")])
def test_captured_graphs_equal_the_same_code_run_eagerly(env, precision):
    if env == "halfcheetah":
        pytest.importorskip("mujoco")
    runs = []
    for capture in (False, True):
        ppo = _cuda_ppo(env, precision, (1, 2, 3), capture)
        runs.append([ppo.run_update(lambda *a: None) for _ in range(2)])
        if capture:
            assert set(ppo._graphs) == {"step0", "gae", "minibatch"}
        ppo.close()
    for eager, graphed in zip(*runs):
        assert not eager.failures and not graphed.failures
        for k in eager.records:
            for key, value in eager.records[k].items():
                if not key.startswith("time_") and isinstance(value, float) and np.isfinite(value):
                    assert graphed.records[k][key] == pytest.approx(value, rel=1e-5, abs=1e-7), key


def test_graph_path_run_update_uncaptured_on_cpu_fails_a_member_alone():
    """The whole graph-path iteration (pre-drawn noise, act, static GAE, static update) through run_update,
    uncaptured on CPU: it runs, and a member made non-finite fails alone with its reason while the others go on."""
    _, dev = _pair(seeds=(1, 2, 3))
    r1 = dev.run_update(lambda *a: None)
    assert sorted(r1.records) == [0, 1, 2] and not r1.failures
    with torch.no_grad():
        dev.policy.critic_head.bias[2] = float("nan")
    dev.flat.pull()
    r2 = dev.run_update(lambda *a: None)
    assert sorted(r2.failures) == [2] and "non-finite loss" in r2.failures[2] and "update 2, epoch 1" in r2.failures[2]
    r3 = dev.run_update(lambda *a: None)
    assert sorted(r3.records) == [0, 1]
    for r in (r2, r3):
        for rec in r.records.values():
            assert all(np.isfinite(rec[k]) for k in ("policy_loss", "value_loss", "grad_norm"))


def test_graph_path_member_state_round_trips_the_device_side_adam():
    """A checkpoint of the graph path (device-side Adam step counts and learning rates) loaded into a fresh PPO
    continues exactly as the uninterrupted one (uncaptured, CPU)."""
    _, a = _pair(seeds=(1, 2))
    _, b = _pair(seeds=(1, 2))
    a.run_update(lambda *x: None)
    states = [a.member_state(k) for k in range(2)]
    assert [s["optimizer"]["step"] for s in states] == [int(x) for x in a.optimizer.step_t.tolist()] != [0, 0]
    for k, state in enumerate(states):
        b.load_member_state(k, state)
    assert torch.equal(b.optimizer.step_t, a.optimizer.step_t) and torch.equal(b.flat.data, a.flat.data)
    ra, rb = a.run_update(lambda *x: None), b.run_update(lambda *x: None)
    for k in (0, 1):
        assert {n: v for n, v in ra.records[k].items() if not n.startswith("time_")} == \
               {n: v for n, v in rb.records[k].items() if not n.startswith("time_")}
    assert torch.equal(b.flat.data, a.flat.data)
