"""GroupEnvs (K members x N sub-envs, wrappers vectorised) against gymnasium's own wrapper stack, bitwise.

The reference is what esper-exp ran before groups: per member a SyncVectorEnv in SAME_STEP autoreset mode with
CleanRL's wrappers inside each sub-env (``make_env`` below is a copy of esper_exp.envs.make_env), reset with
seed + i per sub-env and its action space seeded the same.
"""

from __future__ import annotations

import io

import gymnasium as gym
import mujoco
import numpy as np
import pytest
import torch
from gymnasium.vector import AutoresetMode, SyncVectorEnv

from esper_exp.envs import GroupEnvs, GroupStep


# ------------------------------------------------------------------------------------------------ reference
def make_env(env_id: str, *, clip_action: bool, normalize_obs: bool, normalize_reward: bool, clip_obs: float,
             clip_reward: float, gamma: float, max_episode_steps: int | None, kwargs: dict):
    def thunk() -> gym.Env:
        env = gym.make(env_id, max_episode_steps=max_episode_steps, **kwargs)
        env = gym.wrappers.RecordEpisodeStatistics(env)
        if clip_action:
            env = gym.wrappers.ClipAction(env)
        if normalize_obs:
            env = gym.wrappers.NormalizeObservation(env)
            env = gym.wrappers.TransformObservation(env, lambda o: np.clip(o, -clip_obs, clip_obs), env.observation_space)
        if normalize_reward:
            env = gym.wrappers.NormalizeReward(env, gamma=gamma)
            env = gym.wrappers.TransformReward(env, lambda r: np.clip(r, -clip_reward, clip_reward))
        return env

    return thunk


class Reference:
    """One member as the pre-group trainer ran it."""

    def __init__(self, env_id, seed, num_envs, gamma, *, clip_action=False, normalize_obs=False,
                 normalize_reward=False, clip_obs=10.0, clip_reward=10.0, max_episode_steps=None, kwargs=None):
        thunk = make_env(env_id, clip_action=clip_action, normalize_obs=normalize_obs,
                         normalize_reward=normalize_reward, clip_obs=clip_obs, clip_reward=clip_reward, gamma=gamma,
                         max_episode_steps=max_episode_steps, kwargs=dict(kwargs or {}))
        self.env = SyncVectorEnv([thunk for _ in range(num_envs)], autoreset_mode=AutoresetMode.SAME_STEP, copy=False)
        self.seed, self.num_envs = seed, num_envs

    def reset(self):
        obs, _ = self.env.reset(seed=[self.seed + i for i in range(self.num_envs)])
        for i, sub in enumerate(self.env.envs):
            sub.action_space.seed(self.seed + i)
        return obs

    def step(self, actions):
        obs, reward, terminated, truncated, info = self.env.step(actions)
        final_obs = np.array(obs, dtype=np.float64)
        episodes = []
        if "final_obs" in info:
            for i in np.flatnonzero(info["_final_obs"]):
                final_obs[i] = info["final_obs"][i]
            fin = info["final_info"]
            if "episode" in fin:
                for i in np.flatnonzero(fin["_episode"]):
                    episodes.append((int(i), float(fin["episode"]["r"][i]), int(fin["episode"]["l"][i])))
        return obs, reward, terminated, truncated, final_obs, episodes

    def close(self):
        self.env.close()


def bits(a) -> np.ndarray:
    """float64 bit patterns (float32 -> float64 is exact), so -0.0 != 0.0 and NaNs compare by payload."""
    return np.ascontiguousarray(np.asarray(a, dtype=np.float64)).view(np.uint64)


def assert_bitwise(a, b, what):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape, (what, a.shape, b.shape)
    if a.dtype == bool or b.dtype == bool:
        assert a.dtype == b.dtype == bool and np.array_equal(a, b), what
    else:
        mismatch = np.flatnonzero(bits(a) != bits(b))
        assert mismatch.size == 0, f"{what}: {mismatch.size} elements differ, first at {mismatch[0]}"


def random_actions(rng, space, shape, scale=1.5):
    """Actions as the policy would hand them over (float32); Box actions overshoot the bounds (5% of them by 10x)
    so that ClipAction matters."""
    if isinstance(space, gym.spaces.Discrete):
        return rng.integers(space.n, size=shape)
    a = scale * rng.standard_normal((*shape, *space.shape))
    a[rng.random(a.shape) < 0.05] *= 10.0
    return a.astype(np.float32)


def run_against_reference(env_id, seeds, num_envs, steps, *, action_seed=0, action_scale=1.5, **kw):
    """Steps a group and one reference per member with the same actions; asserts bitwise equality every step.
    Returns (number of terminations, number of truncations) seen."""
    group = GroupEnvs(env_id, seeds, num_envs, 0.99, **kw)
    refs = [Reference(env_id, s, num_envs, 0.99, **kw) for s in seeds]
    rng = np.random.default_rng(action_seed)
    try:
        obs = group.reset()
        assert obs.dtype == np.float64 and obs.shape == (len(seeds), num_envs, group.obs_dim)
        for k, ref in enumerate(refs):
            assert_bitwise(obs[k], ref.reset(), f"reset obs member {k}")
        n_term = n_trunc = 0
        for t in range(steps):
            actions = random_actions(rng, group.env_action_space, (len(seeds), num_envs), action_scale)
            out = group.step(actions)
            assert isinstance(out, GroupStep)
            assert out.obs.dtype == out.final_obs.dtype == out.reward.dtype == np.float64
            for k, ref in enumerate(refs):
                r_obs, r_rew, r_term, r_trunc, r_final, r_eps = ref.step(actions[k])
                where = f"{env_id} step {t} member {k}"
                assert_bitwise(out.obs[k], r_obs, f"obs, {where}")
                assert_bitwise(out.reward[k], r_rew, f"reward, {where}")
                assert_bitwise(out.terminated[k], r_term, f"terminated, {where}")
                assert_bitwise(out.truncated[k], r_trunc, f"truncated, {where}")
                ended = r_term | r_trunc
                assert_bitwise(out.final_obs[k][ended], r_final[ended], f"final_obs, {where}")
                assert_bitwise(out.final_obs[k][~ended], out.obs[k][~ended], f"final_obs elsewhere, {where}")
                mine = [(i, r, length) for (m, i, r, length) in out.episodes if m == k]
                assert [(i, float(r).hex(), n) for i, r, n in mine] == [(i, r.hex(), n) for i, r, n in r_eps], where
            n_term += int(out.terminated.sum())
            n_trunc += int((out.truncated & ~out.terminated).sum())
        return n_term, n_trunc
    finally:
        group.close()
        for ref in refs:
            ref.close()


# ------------------------------------------------------------------------------------------------ equality
def test_cartpole_matches_reference_per_member():
    # max_episode_steps=30 so that random play gives both terminations (pole falls) and truncations
    n_term, n_trunc = run_against_reference("CartPole-v1", [1, 7, 100], 4, 250, max_episode_steps=30)
    assert n_term >= 10 and n_trunc >= 10, (n_term, n_trunc)


def test_cartpole_float32_normalisation_matches_reference():
    # CartPole's observations are float32: gymnasium's running statistics then stay float32 and its Python-float
    # counts act as float32 (NEP 50); a float64 shortcut would differ in the last bits
    n_term, n_trunc = run_against_reference("CartPole-v1", [3, 4], 2, 200, max_episode_steps=30,
                                            normalize_obs=True, normalize_reward=True, clip_obs=2.5, clip_reward=0.7)
    assert n_term >= 5 and n_trunc >= 1, (n_term, n_trunc)


@pytest.mark.parametrize(("env_id", "num_envs", "steps"), [("HalfCheetah-v5", 1, 230), ("Hopper-v5", 1, 400),
                                                           ("Hopper-v5", 2, 300)])
def test_mujoco_normalised_matches_reference_per_member(env_id, num_envs, steps):
    # Hopper falls within ~17 steps under large random actions: small ones give terminations and truncations
    scale = 0.1 if env_id == "Hopper-v5" else 1.5
    n_term, n_trunc = run_against_reference(env_id, [1, 2, 3], num_envs, steps, max_episode_steps=50,
                                            action_scale=scale, clip_action=True, normalize_obs=True,
                                            normalize_reward=True)
    print(env_id, num_envs, "terminations", n_term, "truncations", n_trunc)
    assert n_trunc >= 3, n_trunc
    if env_id == "Hopper-v5":
        assert n_term >= 3, n_term


def test_member_does_not_depend_on_other_members():
    kw = dict(max_episode_steps=50, clip_action=True, normalize_obs=True, normalize_reward=True)
    big, alone = GroupEnvs("Hopper-v5", [5, 6, 7], 2, 0.99, **kw), GroupEnvs("Hopper-v5", [6], 2, 0.99, **kw)
    rng = np.random.default_rng(1)
    try:
        assert_bitwise(big.reset()[1], alone.reset()[0], "reset")
        for t in range(150):
            actions = random_actions(rng, big.env_action_space, (3, 2), 0.1)
            a, b = big.step(actions), alone.step(actions[1:2])
            for f in ("obs", "reward", "terminated", "truncated"):
                assert_bitwise(getattr(a, f)[1], getattr(b, f)[0], f"{f} step {t}")
            ended = a.terminated[1] | a.truncated[1]
            assert_bitwise(a.final_obs[1][ended], b.final_obs[0][ended], f"final_obs step {t}")
            assert [e[1:] for e in a.episodes if e[0] == 1] == [e[1:] for e in b.episodes]
    finally:
        big.close()
        alone.close()


# ------------------------------------------------------------------------------------------------ checkpoints
@pytest.mark.parametrize(("env_id", "kw"), [
    ("Hopper-v5", dict(max_episode_steps=50, clip_action=True, normalize_obs=True, normalize_reward=True)),
    ("CartPole-v1", dict(max_episode_steps=30)),
])
def test_state_dict_round_trip_continues_bitwise(env_id, kw):
    seeds, n = [11, 12, 13], 2
    a = GroupEnvs(env_id, seeds, n, 0.99, **kw)
    rng = np.random.default_rng(2)
    try:
        a.reset()
        for _ in range(70):  # mid-episode for some sub-envs, after autoresets for others
            a.step(random_actions(rng, a.env_action_space, (3, n), 0.1))
        buf = io.BytesIO()
        torch.save([a.state_dict(k) for k in range(3)], buf)
        buf.seek(0)
        states = torch.load(buf, weights_only=True)
        # a fresh group with other seeds (and a K=1 group holding member 2) takes the members over
        b, c = GroupEnvs(env_id, [0, 0, 0], n, 0.99, **kw), GroupEnvs(env_id, [99], n, 0.99, **kw)
        b.reset()
        for k in range(3):
            b.load_state_dict(k, states[k])
        c.load_state_dict(0, states[2])  # never reset: load resets it first
        for t in range(120):
            actions = random_actions(rng, a.env_action_space, (3, n), 0.1)
            x, y, z = a.step(actions), b.step(actions), c.step(actions[2:])
            for f in ("obs", "reward", "terminated", "truncated"):
                assert_bitwise(getattr(x, f), getattr(y, f), f"{f} step {t}")
                assert_bitwise(getattr(x, f)[2], getattr(z, f)[0], f"{f} step {t} (K=1)")
            ended = x.terminated | x.truncated
            assert_bitwise(x.final_obs[ended], y.final_obs[ended], f"final_obs step {t}")
            assert x.episodes == y.episodes
            assert [e[1:] for e in x.episodes if e[0] == 2] == [e[1:] for e in z.episodes]
        # the action-space RNGs travel too
        for k in range(3):
            for i in range(n):
                e = k * n + i
                assert np.array_equal(a.envs[e].action_space.sample(), b.envs[e].action_space.sample())
        b.close()
        c.close()
    finally:
        a.close()


def test_load_state_dict_rejects_other_env():
    a = GroupEnvs("CartPole-v1", [1], 2, 0.99)
    b = GroupEnvs("CartPole-v1", [1], 3, 0.99)
    try:
        a.reset()
        with pytest.raises(ValueError, match="2 envs"):
            b.load_state_dict(0, a.state_dict(0))
    finally:
        a.close()
        b.close()


# ------------------------------------------------------------------------------------------------ normalize_obs
def test_normalize_obs_equals_sub_env_0_wrapper():
    kw = dict(max_episode_steps=50, clip_action=True, normalize_obs=True, normalize_reward=True, clip_obs=3.0)
    seeds = [4, 9]
    group = GroupEnvs("Hopper-v5", seeds, 2, 0.99, **kw)
    refs = [Reference("Hopper-v5", s, 2, 0.99, **kw) for s in seeds]
    rng = np.random.default_rng(3)
    probe = np.random.default_rng(4).standard_normal((64, group.obs_dim)) * 5.0  # some rows get clipped
    try:
        group.reset()
        for ref in refs:
            ref.reset()
        for _ in range(60):
            actions = random_actions(rng, group.env_action_space, (2, 2), 0.1)
            group.step(actions)
            for k, ref in enumerate(refs):
                ref.step(actions[k])
        for k, ref in enumerate(refs):
            wrapper = next(layer for layer in _layers(ref.env.envs[0])
                           if isinstance(layer, gym.wrappers.NormalizeObservation))
            wrapper.update_running_mean = False  # what it would return, without moving its statistics
            expected = np.stack([np.clip(wrapper.observation(row), -3.0, 3.0) for row in probe])
            got = group.normalize_obs(probe, k)
            assert got.dtype == np.float64
            assert_bitwise(got, expected, f"member {k}")
            assert np.abs(got).max() == 3.0
    finally:
        group.close()
        for ref in refs:
            ref.close()
    plain = GroupEnvs("CartPole-v1", [1], 1, 0.99)
    raw = np.random.default_rng(5).standard_normal((8, 4))
    assert_bitwise(plain.normalize_obs(raw, 0), raw, "identity without normalisation")
    plain.close()


def _layers(env):
    while True:
        yield env
        if not isinstance(env, gym.Wrapper):
            return
        env = env.env


# ------------------------------------------------------------------------------------------------ construction
class _MultiDiscreteEnv(gym.Env):
    observation_space = gym.spaces.Box(-1.0, 1.0, (3,))
    action_space = gym.spaces.MultiDiscrete([2, 3])

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(3, dtype=np.float32), {}

    def step(self, action):
        return np.zeros(3, dtype=np.float32), 0.0, False, False, {}


def test_clear_errors():
    with pytest.raises(ValueError, match="'NoSuchEnv-v9'"):
        GroupEnvs("NoSuchEnv-v9", [1], 1, 0.99)
    with pytest.raises(ValueError, match="clip_action needs a Box"):
        GroupEnvs("CartPole-v1", [1], 1, 0.99, clip_action=True)
    gym.register("EsperTestMultiDiscrete-v0", entry_point=_MultiDiscreteEnv)
    try:
        with pytest.raises(ValueError, match="unsupported action space.*Discrete, 1-D Box"):
            GroupEnvs("EsperTestMultiDiscrete-v0", [1], 1, 0.99)
    finally:
        del gym.registry["EsperTestMultiDiscrete-v0"]


def test_spaces_and_settotalmass_warning_silenced(capfd):
    before = mujoco.get_mju_user_warning()
    capfd.readouterr()
    group = GroupEnvs("HalfCheetah-v5", [1, 2], 3, 0.99, clip_action=True, normalize_obs=True)
    err = capfd.readouterr().err
    assert "settotalmass" not in err, err
    assert mujoco.get_mju_user_warning() == before  # the filter is removed again after construction
    ref = Reference("HalfCheetah-v5", 1, 3, 0.99, clip_action=True, normalize_obs=True)
    assert group.single_observation_space == ref.env.single_observation_space
    assert group.single_action_space == ref.env.single_action_space  # ClipAction's unbounded Box, as before
    assert group.env_action_space == gym.spaces.Box(-1.0, 1.0, (6,), np.float32)  # the env's own, bounded
    assert (group.num_members, group.num_envs, group.obs_dim) == (2, 3, 17)
    group.close()
    ref.close()
