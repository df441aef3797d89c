"""PPO internals: GAE against a hand-computed case, truncation bootstrapping under SAME_STEP autoreset,
the policy's distributions against torch.distributions, and the update's invariants."""

import numpy as np
import pytest
import torch

from conftest import make_cfg
from esper_exp.envs import VectorEnv
from esper_exp.policy import ActorCritic
from esper_exp.ppo import PPO, bootstrap_truncated, compute_gae
from esper_exp.runtime import prepare


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


def test_same_step_autoreset_reports_final_obs_and_episode_stats():
    envs = VectorEnv("CartPole-v1", 2, 0.99, max_episode_steps=5)
    envs.reset(seed=3)
    for t in range(5):
        step = envs.step(np.array([0, 1]))
    assert step.truncated.all() or step.terminated.all() or step.final_obs
    assert set(step.final_obs) == {0, 1}
    assert [e[2] for e in step.episodes] == [5, 5]
    # the returned obs is the new episode's first obs, not the final one
    assert not np.allclose(step.obs[0], step.final_obs[0])
    envs.close()


def test_rollout_bootstraps_truncated_episodes_from_the_final_observation():
    cfg = make_cfg("env=cartpole", "env.max_episode_steps=7", "ppo.num_steps=16", "env.num_envs=2",
                   "ppo.total_timesteps=64")
    prepare(cfg.seed, torch.device("cpu"), True, 1)
    ppo = PPO(cfg, torch.device("cpu"))
    finals = {}
    step_fn = ppo.envs.step

    def spy(actions):
        res = step_fn(actions)
        finals[len(finals)] = res
        return res

    ppo.envs.step = spy
    ppo.collect_rollout(lambda *a: None, {"env": 0.0, "inference": 0.0})
    truncations = 0
    for t, res in finals.items():
        for i in range(2):
            if res.truncated[i] and not res.terminated[i]:
                truncations += 1
                with torch.no_grad():
                    v = ppo.policy.value(torch.as_tensor(res.final_obs[i][None], dtype=torch.float32))
                expected = np.float32(res.reward[i]) + np.float32(cfg.ppo.gamma) * v.numpy()[0]
                assert ppo.buf.rewards[t, i].item() == pytest.approx(float(expected), rel=1e-6)
                assert ppo.buf.episode_ends[t, i]
                # the next stored observation is the reset observation of the new episode
                if t + 1 < 16:
                    assert not np.allclose(ppo.buf.obs[t + 1, i].numpy(), res.final_obs[i])
            elif res.terminated[i]:
                assert ppo.buf.rewards[t, i].item() == res.reward[i]  # no bootstrap on termination
                assert ppo.buf.episode_ends[t, i]
    assert truncations >= 2  # 7-step limit in a 16-step rollout: every episode that survives 7 steps
    ppo.close()


@pytest.mark.parametrize("space", ["discrete", "continuous"])
def test_policy_log_probs_and_entropy_match_torch_distributions(space):
    import gymnasium as gym

    torch.manual_seed(0)
    action_space = gym.spaces.Discrete(3) if space == "discrete" else gym.spaces.Box(-1, 1, (2,))
    policy = ActorCritic(5, action_space, width=16)
    policy.set_alpha(0.5)
    if not policy.discrete:
        policy.actor_logstd.data.fill_(-0.3)
    obs = torch.randn(64, 5)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        action, logp, value = policy.act(obs, gen)
        logp2, ent, value2 = policy.evaluate(obs, action)
        out = policy.actor(obs, policy.alpha)
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

    torch.manual_seed(0)
    policy = ActorCritic(2, gym.spaces.Discrete(3), width=8)
    torch.nn.init.zeros_(policy.actor.head.weight)
    policy.actor.head.bias.data = torch.log(torch.tensor([0.2, 0.5, 0.3]))
    with torch.no_grad():
        action, _, _ = policy.act(torch.zeros(20000, 2), torch.Generator().manual_seed(1))
    freq = torch.bincount(action, minlength=3).float() / 20000
    torch.testing.assert_close(freq, torch.tensor([0.2, 0.5, 0.3]), atol=0.015, rtol=0)


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_master_weights_stay_fp32_and_scaler_only_for_fp16(precision):
    cfg = make_cfg("env=cartpole", f"precision={precision}", "ppo.num_steps=32", "ppo.total_timesteps=128")
    prepare(cfg.seed, torch.device("cpu"), True, 1)
    ppo = PPO(cfg, torch.device("cpu"))
    record = ppo.run_update(lambda *a: None)
    assert all(p.dtype == torch.float32 for p in ppo.policy.parameters())
    assert all(s["exp_avg"].dtype == torch.float32 for s in ppo.optimizer.state.values())
    assert ppo.scaler.is_enabled() == (precision == "fp16")
    assert ("loss_scale" in record) == (precision == "fp16")
    assert ppo.buf.values.dtype == torch.float32
    ppo.close()
