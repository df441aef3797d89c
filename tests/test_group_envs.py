"""GroupEnvs (K members x N sub-envs, wrappers vectorised) against gymnasium's own wrapper stack, bitwise.

The reference is what esper-exp ran before groups: per member a SyncVectorEnv in SAME_STEP autoreset mode with
CleanRL's wrappers inside each sub-env (``make_env`` below is a copy of esper_exp.envs.make_env), reset with
seed + i per sub-env and its action space seeded the same.
"""

from __future__ import annotations

import io
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import gymnasium as gym
import mujoco
import numpy as np
import pytest
import torch
from gymnasium.vector import AutoresetMode, SyncVectorEnv

from esper_exp.envs import EnvWorkerError, GroupEnvs, GroupStep


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


# ------------------------------------------------------------------------------------------------ env workers
# GroupEnvs(workers=W): the raw envs stepped in W worker processes, bitwise the in-process loop (workers=0).
HALFCHEETAH_KW = {"max_episode_steps": 50, "clip_action": True, "normalize_obs": True, "normalize_reward": True}
CARTPOLE_KW = {"max_episode_steps": 30}


def assert_same_state(a, b, where="state"):
    """Two state_dicts equal in structure, types and bits (tensors: dtype, shape and bit patterns)."""
    assert type(a) is type(b), (where, type(a), type(b))
    if isinstance(a, dict):
        assert list(a) == list(b), (where, list(a), list(b))
        for k in a:
            assert_same_state(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_state(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape, (where, a.dtype, b.dtype, a.shape, b.shape)
        assert_bitwise(a.numpy(), b.numpy(), where)
    else:
        assert a == b, (where, a, b)


def assert_same_step(x: GroupStep, y: GroupStep, where: str) -> None:
    for f in ("obs", "reward", "terminated", "truncated", "final_obs"):
        assert_bitwise(getattr(x, f), getattr(y, f), f"{f}, {where}")
    assert [(m, i, float(r).hex(), n) for m, i, r, n in x.episodes] == \
           [(m, i, float(r).hex(), n) for m, i, r, n in y.episodes], where


def live_children(pids) -> list[int]:
    """The pids still running (zombies count as gone: nobody may be left to reap an orphan in a container)."""
    alive = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] != "Z":
                    alive.append(pid)
        except FileNotFoundError:
            pass
    return alive


@pytest.mark.parametrize(("env_id", "seeds", "num_envs", "kw", "steps"), [
    ("CartPole-v1", [1, 7, 100], 2, CARTPOLE_KW, 300),  # E=6 over 2 workers: 3 + 3, member 1 straddles them
    ("HalfCheetah-v5", [1, 2, 3], 1, HALFCHEETAH_KW, 230),  # E=3: 1 + 2
])
def test_workers_bitwise_equal_to_in_process(env_id, seeds, num_envs, kw, steps):
    K = len(seeds)
    inproc = GroupEnvs(env_id, seeds, num_envs, 0.99, **kw)
    pooled = GroupEnvs(env_id, seeds, num_envs, 0.99, workers=2, **kw)
    rng = np.random.default_rng(7)
    try:
        assert pooled.num_workers == 2 and pooled.envs == []
        assert_bitwise(pooled.reset(), inproc.reset(), "reset")
        ends = 0
        for t in range(steps):
            actions = random_actions(rng, inproc.env_action_space, (K, num_envs))
            if t % 3 == 0 and actions.dtype == np.float32:
                actions = actions.astype(np.float64)  # the action dtype travels to the workers (rewards use it)
            x, y = pooled.step(actions), inproc.step(actions)
            assert_same_step(x, y, f"{env_id} step {t}")
            ends += len(y.episodes)
        assert ends >= 6, ends  # episode ends (SAME_STEP resets in the workers) were exercised
        for k in range(K):
            assert_same_state(pooled.state_dict(k), inproc.state_dict(k), f"member {k}")
    finally:
        pooled.close()
        inproc.close()


@pytest.mark.parametrize(("env_id", "kw"), [("HalfCheetah-v5", HALFCHEETAH_KW), ("CartPole-v1", CARTPOLE_KW)])
def test_workers_state_dict_moves_between_modes(env_id, kw):
    """A checkpoint of a workers=2 group resumes bitwise in a workers=0 group, and the other way round."""
    seeds, n = [11, 12, 13], 1
    ref = GroupEnvs(env_id, seeds, n, 0.99, **kw)
    pooled = GroupEnvs(env_id, seeds, n, 0.99, workers=2, **kw)
    rng = np.random.default_rng(2)
    others = []
    try:
        ref.reset()
        pooled.reset()
        for _ in range(70):  # mid-episode, after autoresets
            actions = random_actions(rng, ref.env_action_space, (3, n))
            ref.step(actions)
            pooled.step(actions)
        buf = io.BytesIO()
        torch.save([pooled.state_dict(k) for k in range(3)], buf)
        buf.seek(0)
        from_pooled = torch.load(buf, weights_only=True)
        from_ref = [ref.state_dict(k) for k in range(3)]
        # workers=2 -> workers=0 (fresh, other seeds, never reset) and workers=0 -> workers=2 (members reversed
        # into a group of other seeds: member k of ref becomes member 2-k)
        inproc = GroupEnvs(env_id, [0, 0, 0], n, 0.99, **kw)
        pooled2 = GroupEnvs(env_id, [5, 6, 7], n, 0.99, workers=2, **kw)
        others += [inproc, pooled2]
        for k in range(3):
            inproc.load_state_dict(k, from_pooled[k])
            pooled2.load_state_dict(2 - k, from_ref[k])
        for t in range(120):
            actions = random_actions(rng, ref.env_action_space, (3, n))
            x, y, z = ref.step(actions), inproc.step(actions), pooled2.step(actions[::-1])
            assert_same_step(y, x, f"workers=2 -> 0, step {t}")
            for f in ("obs", "reward", "terminated", "truncated"):
                assert_bitwise(getattr(z, f)[::-1], getattr(x, f), f"{f} workers=0 -> 2, step {t}")
            assert sorted((2 - m, i, r, le) for m, i, r, le in z.episodes) == sorted(x.episodes)
        def loaded(state):  # "seed" is the group's own (informational), everything else was loaded
            return {**state, "seed": None}

        for k in range(3):  # action-space RNGs and everything else travelled too
            assert_same_state(loaded(pooled2.state_dict(2 - k)), loaded(ref.state_dict(k)), f"member {k}")
            assert_same_state(loaded(inproc.state_dict(k)), loaded(ref.state_dict(k)), f"member {k}")
        bad = GroupEnvs(env_id, [1], 2, 0.99, workers=2, **kw)
        others.append(bad)
        with pytest.raises(ValueError, match="x 1 envs, this group runs .* x 2"):  # the in-process checks hold
            bad.load_state_dict(0, from_pooled[0])
    finally:
        for g in (ref, pooled, *others):
            g.close()


def test_worker_killed_raises_instead_of_hanging():
    group = GroupEnvs("HalfCheetah-v5", [1, 2, 3, 4], 1, 0.99, workers=2, **HALFCHEETAH_KW)
    pids = [p.pid for p in group._workers.procs]
    try:
        group.reset()
        rng = np.random.default_rng(0)
        for _ in range(5):
            group.step(random_actions(rng, group.env_action_space, (4, 1)))
        os.kill(pids[1], signal.SIGKILL)
        start = time.monotonic()
        with pytest.raises(EnvWorkerError, match=r"env worker 1 .*sub-envs 2-3 of 4, members 2-3\) died while stepping "
                                                 r"\(killed by SIGKILL\)"):
            group.step(random_actions(rng, group.env_action_space, (4, 1)))
        assert time.monotonic() - start < 10
        assert live_children(pids) == []  # the failure shut the other worker down too
        with pytest.raises(EnvWorkerError, match="unusable after an earlier failure"):
            group.state_dict(0)
    finally:
        group.close()
    group.close()  # idempotent


def test_worker_error_and_hang_give_one_clear_exception():
    group = GroupEnvs("CartPole-v1", [1, 2], 1, 0.99, workers=2, worker_timeout=1.0)
    try:
        group.reset()
        with pytest.raises(EnvWorkerError, match=r"(?s)env worker 1 .* raised while stepping:\n"
                                                 r"Traceback.*AssertionError: .*invalid"):
            group.step(np.array([[0], [5]]))  # CartPole has actions 0 and 1: the env itself refuses 5
    finally:
        group.close()
    hung = GroupEnvs("CartPole-v1", [1, 2], 1, 0.99, workers=2, worker_timeout=1.0)
    pids = [p.pid for p in hung._workers.procs]
    try:
        hung.reset()
        os.kill(pids[0], signal.SIGSTOP)
        start = time.monotonic()
        with pytest.raises(EnvWorkerError, match=r"env worker 0 .* gave no reply within 1 s while stepping"):
            hung.step(np.zeros((2, 1), dtype=np.int64))
        assert time.monotonic() - start < 10
        assert live_children(pids) == []  # a stopped worker is killed too
    finally:
        hung.close()


def test_close_leaves_no_worker_processes():
    group = GroupEnvs("CartPole-v1", [1], 1, 0.99, workers=2)  # one sub-env: one worker
    assert group.num_workers == 1
    pids = [p.pid for p in group._workers.procs]
    group.reset()
    group.step(np.array([[1]]))
    assert live_children(pids) == pids
    group.close()
    assert live_children(pids) == []
    assert multiprocessing.active_children() == []
    with pytest.raises(RuntimeError, match="closed"):
        group.step(np.array([[1]]))


def test_construction_errors_unchanged_with_workers():
    for workers in (0, 2):
        with pytest.raises(ValueError, match="^unknown gymnasium env id 'NoSuchEnv-v9'"):
            GroupEnvs("NoSuchEnv-v9", [1], 1, 0.99, workers=workers)
        with pytest.raises(ValueError, match="^CartPole-v1: clip_action needs a Box action space"):
            GroupEnvs("CartPole-v1", [1], 1, 0.99, clip_action=True, workers=workers)
    with pytest.raises(ValueError, match="workers must be an int >= 0"):
        GroupEnvs("CartPole-v1", [1], 1, 0.99, workers=-1)
    with pytest.raises(ValueError, match="start_method must be one of spawn, forkserver"):
        GroupEnvs("CartPole-v1", [1], 1, 0.99, workers=1, start_method="fork")
    assert multiprocessing.active_children() == []


_CHILD = textwrap.dedent("""
    import os, sys, time
    import numpy as np
    from esper_exp.envs import EnvWorkerError, GroupEnvs

    if __name__ == "__main__":
        group = GroupEnvs("CartPole-v1", [1, 2], 1, 0.99, workers=2, max_episode_steps=30)
        group.reset()
        try:
            print(*[p.pid for p in group._workers.procs], flush=True)
            if sys.argv[1] == "die":
                os._exit(0)  # no close(), no atexit: the workers must notice on their own
            while True:
                group.step(np.ones((2, 1), dtype=np.int64))
        except KeyboardInterrupt:
            try:  # the workers ignored the Ctrl-C: still serving (the interrupted call is caught up)
                group.step(np.ones((2, 1), dtype=np.int64))
            except EnvWorkerError as e:  # unless it landed in the microseconds of handing out the commands
                assert "interrupted while it handed" in str(e), e
            print("interrupted", flush=True)
        group.close()
""")


@pytest.mark.parametrize("how", ["sigint", "die"])
def test_workers_ignore_ctrl_c_and_exit_with_their_parent(tmp_path, how):
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    repo = str(Path(__file__).resolve().parents[1])  # esper_exp importable without installing the package
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, str(script), how], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True, env=env)
    try:
        pids = [int(p) for p in proc.stdout.readline().split()]
        assert len(pids) == 2, proc.stderr.read()
        if how == "sigint":
            time.sleep(0.3)
            os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole process group
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        if how == "die":  # multiprocessing's resource tracker unlinks the dead parent's semaphores, with a warning
            err = "".join(line for line in err.splitlines(keepends=True)
                          if "resource_tracker" not in line and "warnings.warn(" not in line)
        assert err == "", err  # no worker traceback
        assert out.strip() == ("interrupted" if how == "sigint" else "")
        deadline = time.monotonic() + 10
        while live_children(pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert live_children(pids) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_group_semaphore_variant_bitwise(monkeypatch):
    """The measured-and-rejected wake-up variant (envs._ONE_WAKEUP) stays correct, with a worker's death noticed."""
    import esper_exp.envs as envs_mod

    monkeypatch.setattr(envs_mod, "_ONE_WAKEUP", True)
    inproc = GroupEnvs("CartPole-v1", [1, 2, 3], 1, 0.99, **CARTPOLE_KW)
    pooled = GroupEnvs("CartPole-v1", [1, 2, 3], 1, 0.99, workers=2, **CARTPOLE_KW)
    rng = np.random.default_rng(3)
    try:
        assert pooled._workers.lock is not None
        assert_bitwise(pooled.reset(), inproc.reset(), "reset")
        for t in range(100):
            actions = random_actions(rng, inproc.env_action_space, (3, 1))
            assert_same_step(pooled.step(actions), inproc.step(actions), f"step {t}")
        assert_same_state(pooled.state_dict(1), inproc.state_dict(1))
        os.kill(pooled._workers.procs[1].pid, signal.SIGKILL)
        with pytest.raises(EnvWorkerError, match=r"env worker 1 .* died while stepping \(killed by SIGKILL\)"):
            pooled.step(random_actions(rng, inproc.env_action_space, (3, 1)))
    finally:
        pooled.close()
        inproc.close()


def test_interrupted_calls():
    """A KeyboardInterrupt while waiting for the workers is caught up by the next call (bitwise as if not
    interrupted); one while handing out the commands leaves the group unusable, with a clear error."""
    inproc = GroupEnvs("CartPole-v1", [1, 2], 1, 0.99, **CARTPOLE_KW)
    pooled = GroupEnvs("CartPole-v1", [1, 2], 1, 0.99, workers=2, **CARTPOLE_KW)
    rng = np.random.default_rng(4)
    try:
        inproc.reset()
        pooled.reset()
        workers = pooled._workers

        def interrupted_wait(*args, **kwargs):  # at the wait's start: whether or not the workers are done already
            raise KeyboardInterrupt

        actions = random_actions(rng, inproc.env_action_space, (2, 1))
        workers.wait = interrupted_wait
        with pytest.raises(KeyboardInterrupt):
            pooled.step(actions)  # the workers stepped; nobody waited for them; the wrappers saw nothing
        del workers.wait
        for e, env in enumerate(inproc.envs):  # the same in-process: the raw envs step (SAME_STEP), not the wrappers
            _, _, terminated, truncated, _ = env.step(actions.reshape(2)[e])
            if terminated or truncated:
                env.reset()
        for t in range(50):  # the next calls catch up, and nothing is counted twice
            actions = random_actions(rng, inproc.env_action_space, (2, 1))
            assert_same_step(pooled.step(actions), inproc.step(actions), f"step {t}")
        assert_same_state(pooled.state_dict(1), inproc.state_dict(1))
        workers._posting = True  # as if interrupted between handing out two commands
        with pytest.raises(EnvWorkerError, match="interrupted while it handed the workers their commands"):
            pooled.step(actions)
        assert multiprocessing.active_children() == []
    finally:
        pooled.close()
        inproc.close()


@pytest.mark.parametrize("workers", [0, 3])
def test_parts_step_apart_bitwise_as_one_group(workers):
    """GroupEnvs(parts=...): member ranges stepped separately (step_async / step_wait, interleaved; or all at once by
    step()) give bitwise the whole group's steps; with workers each part has its own (3 workers: 1 + 2)."""
    seeds, kw = [21, 22, 23], HALFCHEETAH_KW
    whole = GroupEnvs("HalfCheetah-v5", seeds, 1, 0.99, **kw)
    parted = GroupEnvs("HalfCheetah-v5", seeds, 1, 0.99, workers=workers, parts=[(0, 1), (1, 3)], **kw)
    rng = np.random.default_rng(5)
    try:
        assert parted.parts == [(0, 1), (1, 3)]
        if workers:
            assert parted._workers.part_workers == [(0, 1), (1, 3)] and parted._workers.bounds == [0, 1, 2, 3]
        assert_bitwise(parted.reset(), whole.reset(), "reset")
        ends = 0
        for t in range(120):
            actions = random_actions(rng, whole.env_action_space, (3, 1))
            y = whole.step(actions)
            if t % 2:
                x = parted.step(actions)
            else:  # the second part is sent before the first is collected
                parted.step_async(actions[1:], 1)
                parted.step_async(actions[:1], 0)
                a, b = parted.step_wait(0), parted.step_wait(1)
                x = GroupStep(*(np.concatenate([getattr(a, f), getattr(b, f)]) for f in
                                ("obs", "reward", "terminated", "truncated", "final_obs")), a.episodes + b.episodes)
            assert_same_step(x, y, f"step {t}")
            ends += len(y.episodes)
        assert ends == 6  # every member's episode was truncated at 50 steps and reset, twice
        for k in range(3):
            assert_same_state(parted.state_dict(k), whole.state_dict(k), f"member {k}")
    finally:
        parted.close()
        whole.close()
