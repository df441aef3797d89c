"""PPO internals: GAE against a hand-computed case, truncation bootstrapping under SAME_STEP autoreset (the env
side of SAME_STEP is pinned in test_group_envs.py),
the policy's distributions against torch.distributions, and the update's invariants."""

import numpy as np
import pytest
import torch

from conftest import make_cfg
from esper_exp.numerics import Numerics
from esper_exp.policy import ActorCritic
from esper_exp.ppo import bootstrap_truncated, compute_gae
from esper_exp.runtime import prepare
from esper_exp.train import build_ppo


def test_gae_matches_a_hand_computed_case_with_a_truncation():
    # T=3, one env; the episode is truncated at t=1 with V(final_obs)=4, so r1 becomes 2 + 0.9*4 = 5.6
    gamma, lam = 0.9, 0.8
    rewards = torch.tensor([[1.0], [2.0], [3.0]])
    rewards[1] = bootstrap_truncated(rewards[1], torch.tensor([4.0]), gamma)
    values = torch.tensor([[0.5], [1.0], [1.5]])
    ends = torch.tensor([[False], [True], [False]])
    adv, ret = compute_gae(rewards, values, ends, torch.tensor([2.0]), gamma, lam)
    # t=2: 3 + .9*2 - 1.5 = 3.3 ; t=1: 5.6 - 1 = 4.6 (no bootstrap across the end) ; t=0: 1 + .9*1 - .5 + .72*4.6
    torch.testing.assert_close(adv.squeeze(1), torch.tensor([1.4 + 0.72 * 4.6, 4.6, 3.3]))
    torch.testing.assert_close(ret.squeeze(1), torch.tensor([0.5 + 1.4 + 0.72 * 4.6, 5.6, 4.8]))
    assert adv.dtype == torch.float32


def test_gae_with_lambda_one_is_the_discounted_return():
    r = torch.rand(6, 2)
    v = torch.rand(6, 2)
    adv, ret = compute_gae(r, v, torch.zeros(6, 2, dtype=torch.bool), torch.zeros(2), 0.5, 1.0)
    expected = torch.zeros(2)
    for t in reversed(range(6)):
        expected = r[t] + 0.5 * expected
        if t == 0:
            torch.testing.assert_close(ret[0], expected)


def _ppo(*overrides, seeds=(1, 2)):
    cfg = make_cfg("env=cartpole", *overrides)
    prepare(cfg.seed, torch.device("cpu"), True, 1)
    return build_ppo(cfg, list(seeds), torch.device("cpu"))[0], cfg


def test_rollout_bootstraps_truncated_episodes_from_the_final_observation():
    ppo, cfg = _ppo("env.max_episode_steps=7", "ppo.num_steps=16", "env.num_envs=2", "ppo.total_timesteps=64")
    steps = []
    step_fn = ppo.envs.step_wait
    assert ppo.envs.parts == [(0, 2)]  # one part: each step_wait is a whole group step

    def spy(part=0):
        res = step_fn(part)
        steps.append(res)
        return res

    ppo.envs.step_wait = spy
    ppo.collect_rollout(lambda *a: None, {"env": 0.0, "inference": 0.0})
    truncations = 0
    for t, res in enumerate(steps):
        for k in range(2):
            for i in range(2):
                if res.truncated[k, i] and not res.terminated[k, i]:
                    truncations += 1
                    with torch.no_grad():
                        final = torch.as_tensor(res.final_obs, dtype=torch.float32)
                        v = ppo.policy.value(final, ppo.numerics)[k, i]
                    expected = np.float32(res.reward[k, i]) + np.float32(cfg.ppo.gamma) * v.numpy()
                    assert ppo.buf.rewards[t, k, i].item() == pytest.approx(float(expected), rel=1e-6)
                    assert ppo.buf.episode_ends[t, k, i]
                    # the next stored observation is the reset observation of the new episode
                    if t + 1 < 16:
                        assert not np.allclose(ppo.buf.obs[t + 1, k, i].numpy(), res.final_obs[k, i])
                elif res.terminated[k, i]:
                    assert ppo.buf.rewards[t, k, i].item() == np.float32(res.reward[k, i])  # no bootstrap
                    assert ppo.buf.episode_ends[t, k, i]
    assert truncations >= 4  # 7-step limit in a 16-step rollout: every episode that survives 7 steps
    ppo.close()


def _policy(space, members=1, width=16):
    return ActorCritic(5, space, [torch.Generator().manual_seed(k) for k in range(members)], width=width)


@pytest.mark.parametrize("space", ["discrete", "continuous"])
def test_policy_log_probs_and_entropy_match_torch_distributions(space):
    import gymnasium as gym

    action_space = gym.spaces.Discrete(3) if space == "discrete" else gym.spaces.Box(-1, 1, (2,))
    policy = _policy(action_space, members=2)
    policy.set_alpha([0.5, 0.2])
    if not policy.discrete:
        policy.actor_logstd.data.fill_(-0.3)
    obs = torch.randn(2, 64, 5)
    noise = policy.draw_noise([torch.Generator().manual_seed(k) for k in range(2)], 1, 64, torch.device("cpu"))
    with torch.no_grad():
        action, logp, value = policy.act(obs, Numerics(), noise[0])
        logp2, ent, value2 = policy.evaluate(obs, action, Numerics())
        out = policy.actor_out(obs, Numerics())
        dist = (torch.distributions.Categorical(logits=out) if policy.discrete
                else torch.distributions.Normal(out, policy.actor_logstd.exp()))
        ref_logp = dist.log_prob(action) if policy.discrete else dist.log_prob(action).sum(-1)
        ref_ent = dist.entropy() if policy.discrete else dist.entropy().sum(-1)
    torch.testing.assert_close(logp, ref_logp)
    torch.testing.assert_close(logp2, ref_logp)
    torch.testing.assert_close(ent, ref_ent)
    torch.testing.assert_close(value, value2)


def test_categorical_sampling_follows_the_probabilities():
    import gymnasium as gym

    policy = _policy(gym.spaces.Discrete(3), width=8)
    torch.nn.init.zeros_(policy.actor_head.weight)
    policy.actor_head.bias.data[0] = torch.log(torch.tensor([0.2, 0.5, 0.3]))
    with torch.no_grad():
        noise = policy.draw_noise([torch.Generator().manual_seed(1)], 1, 20000, torch.device("cpu"))
        action, _, _ = policy.act(torch.zeros(1, 20000, 5), Numerics(), noise[0])
    freq = torch.bincount(action[0], minlength=3).float() / 20000
    torch.testing.assert_close(freq, torch.tensor([0.2, 0.5, 0.3]), atol=0.015, rtol=0)


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_master_weights_stay_fp32_and_scaler_only_for_fp16(precision):
    ppo, _ = _ppo(f"precision={precision}", "ppo.num_steps=32", "ppo.total_timesteps=128")
    result = ppo.run_update(lambda *a: None)
    assert all(p.dtype == torch.float32 for p in ppo.policy.parameters())
    assert all(m.dtype == torch.float32 for m in ppo.optimizer.exp_avg + ppo.optimizer.exp_avg_sq)
    assert ppo.scaler.enabled == (precision == "fp16")
    assert all(("loss_scale" in r) == (precision == "fp16") for r in result.records.values())
    assert ppo.buf.values.dtype == torch.float32
    ppo.close()
