"""Environments of a group: K members x N gymnasium envs, CleanRL's wrappers, gymnasium's SAME_STEP autoreset.

SAME_STEP on purpose (DESIGN.md section 5): the step that ends an episode also resets that
sub-env, returns the new episode's first observation, and puts the old episode's last observation
in ``info["final_obs"]``. Every transition is then a real one (no NEXT_STEP "reset step" to mask),
and a truncated episode can be bootstrapped from the value of its final observation.

Wrappers act per sub-env (as in CleanRL, where they sit inside each sub-env), so ``final_obs`` is normalised like
every other observation, and the episode statistics see raw rewards. The reference this module is held to, bitwise
per member, is gymnasium's own stack: SyncVectorEnv(SAME_STEP) over ``gym.make`` + CleanRL's wrappers per sub-env
(tests/test_group_envs.py builds it).
"""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch

# Per-layer state a sub-env carries between steps (wrappers' counters and accumulators, classic-control
# physics). With the running mean/std objects, the RNG and MuJoCo's integration state this is everything a
# run needs to continue bitwise from a checkpoint. Captured only from an object's own __dict__.
_STATE_ATTRS = ("_elapsed_steps", "_has_reset", "episode_returns", "episode_lengths", "episode_count",
                "discounted_reward", "state", "steps_beyond_terminated")
_RMS_ATTRS = ("obs_rms", "return_rms")


def _safe(value):
    """numpy -> tensors and plain numbers, so torch.load(weights_only=True) can read it back."""
    if isinstance(value, np.ndarray):
        return {"ndarray": torch.from_numpy(np.array(value, copy=True))}
    if isinstance(value, np.generic):
        return {"npscalar": value.item(), "dtype": value.dtype.str}
    return value


def _unsafe(value):
    if isinstance(value, dict) and "ndarray" in value:
        return value["ndarray"].numpy().copy()
    if isinstance(value, dict) and "npscalar" in value:
        return np.dtype(value["dtype"]).type(value["npscalar"])
    return value


def _layers(env: gym.Env):
    while True:
        yield env
        if not isinstance(env, gym.Wrapper):
            return
        env = env.env


def sub_env_state(env: gym.Env) -> list[dict]:
    states = []
    for layer in _layers(env):
        own = vars(layer)
        state = {k: _safe(own[k]) for k in _STATE_ATTRS if k in own}
        for k in _RMS_ATTRS:
            if k in own:
                rms = own[k]
                state[k] = {"mean": _safe(rms.mean), "var": _safe(rms.var), "count": _safe(rms.count)}
        states.append(state)
    base = env.unwrapped
    states[-1]["np_random"] = base.np_random.bit_generator.state
    if hasattr(base, "model") and hasattr(base, "data"):  # MuJoCo: positions, velocities, warm-start, time...
        import mujoco

        spec = mujoco.mjtState.mjSTATE_INTEGRATION
        full = np.empty(mujoco.mj_stateSize(base.model, spec))
        mujoco.mj_getState(base.model, base.data, full, spec)
        states[-1]["mujoco"] = _safe(full)
    return states


def load_sub_env_state(env: gym.Env, states: list[dict]) -> None:
    layers = list(_layers(env))
    if len(layers) != len(states):
        raise ValueError(f"checkpoint has {len(states)} env layers, this env has {len(layers)}: different wrappers")
    for layer, state in zip(layers, states):
        for k in _STATE_ATTRS:
            if k in state:
                setattr(layer, k, _unsafe(state[k]))
        for k in _RMS_ATTRS:
            if k in state:
                rms = getattr(layer, k)
                rms.mean, rms.var, rms.count = (_unsafe(state[k][f]) for f in ("mean", "var", "count"))
    base = env.unwrapped
    base.np_random.bit_generator.state = states[-1]["np_random"]
    if "mujoco" in states[-1]:
        import mujoco

        # no mj_forward here: it would rewrite the solver warm-start that the next mj_step reads
        mujoco.mj_setState(base.model, base.data, _unsafe(states[-1]["mujoco"]), mujoco.mjtState.mjSTATE_INTEGRATION)


# ================================================================================================ groups
# One process trains K runs ("members") at once. GroupEnvs steps K members x N sub-envs each with CleanRL's
# wrappers vectorised over all E = K * N sub-envs: the raw gymnasium envs (``gym.make``: TimeLimit around the v5
# physics, the reference) are stepped in a Python loop, and everything CleanRL's wrapper stack does on
# top (episode statistics, action clip, observation and reward normalisation and clip) is a handful of numpy ops
# per step over [E, ...] arrays. Per member it is bitwise gymnasium's wrapper stack: every sub-env keeps its OWN running
# statistics and accumulators (one row each), all ops are elementwise (IEEE add/mul/div/sqrt/clip give the same
# bits whatever the array size), so a member never sees another member's numbers.


@dataclass
class GroupStep:
    obs: np.ndarray  # [K, N, obs_dim] float64, next observations (normalised + clipped when configured)
    reward: np.ndarray  # [K, N] float64, as wrapped (normalised + clipped when configured)
    terminated: np.ndarray  # [K, N] bool
    truncated: np.ndarray  # [K, N] bool
    final_obs: np.ndarray  # [K, N, obs_dim] float64: where terminated | truncated, the ended episode's last obs
    #                        (normalised like obs); elsewhere equal to obs
    episodes: list[tuple[int, int, float, int]]  # (member, env index in member, raw return, length), ended this step


_SETTOTALMASS = "compiler attribute 'settotalmass' is deprecated"


class _quiet_settotalmass:
    """Drop MuJoCo's 'settotalmass is deprecated' compiler warning (HalfCheetah's and Hopper's XML set it) while
    envs are built; every other MuJoCo warning goes where it went before (MuJoCo's default prints it to stderr)."""

    def __enter__(self):
        try:
            import mujoco
        except ImportError:
            self._mujoco = None
            return self
        self._mujoco, self._previous = mujoco, mujoco.get_mju_user_warning()

        def forward(msg: str) -> None:
            if msg.startswith(_SETTOTALMASS):
                return
            if self._previous is not None:
                self._previous(msg)
            else:
                import sys

                print(f"WARNING: {msg}\n", file=sys.stderr)

        mujoco.set_mju_user_warning(forward)
        return self

    def __exit__(self, *exc):
        if self._mujoco is not None:
            self._mujoco.set_mju_user_warning(self._previous)


# np.clip(a, lo, hi) with float bounds is this ufunc (numpy/_core/_methods.py::_clip) behind ~2 us of Python
_clip = getattr(getattr(getattr(np, "_core", None), "umath", None), "clip", None) or np.clip


def _as(count: np.ndarray, like: np.ndarray) -> np.ndarray:
    """A float64 count as gymnasium's Python-float count acts on ``like`` (NEP 50: a Python float takes the array's
    dtype). A no-op for float64 arrays; matters for float32 observations and the float32 initial statistics."""
    return count.astype(like.dtype, copy=False)


def _rms_update(mean: np.ndarray, var: np.ndarray, count: np.ndarray, x: np.ndarray):
    """gymnasium's RunningMeanStd.update(np.array([x_e])) for every row e at once: a batch of ONE sample per
    sub-env, in gymnasium's float operation order (update_mean_var_count_from_moments):

        delta = batch_mean - mean;  tot_count = count + batch_count
        new_mean = mean + delta * batch_count / tot_count
        M2 = var * count + batch_var * batch_count + np.square(delta) * count * batch_count / tot_count
        new_var = M2 / tot_count

    with batch_count = 1, batch_mean = x (np.mean of one sample) and batch_var = (x - x)**2 (np.var of one sample:
    0, or nan where x is not finite). ``count`` is [E] float64 (a Python float per wrapper in gymnasium).
    Returns new (mean, var, count)."""
    c = count.reshape(count.shape + (1,) * (x.ndim - 1))
    tot = c + 1.0
    if mean.dtype == var.dtype == x.dtype == np.float64:  # the MuJoCo case after the first update: no casts
        batch_var = x - x
        batch_var *= batch_var
        delta = x - mean
        new_mean = delta / tot
        new_mean += mean  # mean + delta / tot (IEEE addition commutes)
        m2 = var * c
        m2 += batch_var
        sq = delta * delta  # np.square
        sq *= c
        sq /= tot
        m2 += sq
        m2 /= tot
        return new_mean, m2, tot.reshape(count.shape)
    # any dtypes, with numpy's promotion: the float32 initial statistics (first update), float32 observations
    d0 = x - x
    batch_var = d0 * d0
    delta = x - mean
    new_mean = mean + delta / _as(tot, delta)
    m_a = var * _as(c, var)
    m2 = m_a + batch_var + np.square(delta) * _as(c, delta) / _as(tot, delta)
    new_var = m2 / _as(tot, m2)
    return new_mean, new_var, tot.reshape(count.shape)


class GroupEnvs:
    """K members x N sub-envs each; sub-env e = member k, index i with e = k*N + i (member-major).

    Per member, bitwise what gymnasium's SyncVectorEnv of N such wrapped envs reset with ``seeds[k] + i`` returns: SAME_STEP
    autoreset (the step that ends an episode resets that sub-env; ``final_obs`` holds the ended episode's last
    observation, normalised like ``obs``), CleanRL's wrappers inside each sub-env (RecordEpisodeStatistics innermost
    on raw rewards, ClipAction, NormalizeObservation + clip, NormalizeReward + clip), each sub-env with its own
    running statistics. Observations are returned as float64 (the wrapper stack gives float32 when normalising and
    for float32 envs such as CartPole: the float64 values are those float32 values exactly).
    """

    def __init__(self, env_id: str, seeds: list[int], num_envs: int, gamma: float, *, clip_action: bool = False,
                 normalize_obs: bool = False, normalize_reward: bool = False, clip_obs: float = 10.0,
                 clip_reward: float = 10.0, max_episode_steps: int | None = None, kwargs: dict | None = None):
        if env_id not in gym.registry:
            raise ValueError(f"unknown gymnasium env id {env_id!r}; see gymnasium.registry for the allowed ids")
        if len(seeds) < 1 or num_envs < 1:
            raise ValueError(f"need at least one member and one env per member (got {len(seeds)} seeds, "
                             f"num_envs={num_envs})")
        self.env_id, self.seeds = env_id, [int(s) for s in seeds]
        self.num_members, self.num_envs = len(self.seeds), int(num_envs)
        self.gamma, self.clip_obs, self.clip_reward = gamma, clip_obs, clip_reward
        self.clip_action, self.normalize_obs_on, self.normalize_reward_on = clip_action, normalize_obs, normalize_reward
        self.epsilon = 1e-8  # NormalizeObservation's and NormalizeReward's default
        E = self.num_members * self.num_envs
        kwargs = dict(kwargs or {})
        kwargs.pop("disable_env_checker", None)

        def make() -> gym.Env:
            return gym.make(env_id, max_episode_steps=max_episode_steps, disable_env_checker=True, **kwargs)

        with _quiet_settotalmass():
            self.envs = [make()]
            act, obs_space = self.envs[0].action_space, self.envs[0].observation_space
            problem = None
            if not (isinstance(act, gym.spaces.Discrete) or (isinstance(act, gym.spaces.Box) and len(act.shape) == 1)):
                problem = f"unsupported action space {act}; allowed: Discrete, 1-D Box"
            elif clip_action and not isinstance(act, gym.spaces.Box):
                problem = f"clip_action needs a Box action space, got {act}"
            elif not isinstance(obs_space, gym.spaces.Box):
                problem = f"unsupported observation space {obs_space}; allowed: Box"
            if problem is not None:
                self.close()
                raise ValueError(f"{env_id}: {problem}")
            self.envs += [make() for _ in range(E - 1)]

        self.env_action_space = act  # the env's own space (bounded); single_action_space is the wrapper stack's
        self.single_action_space = (gym.spaces.Box(-np.inf, np.inf, shape=act.shape, dtype=act.dtype) if clip_action
                                    else act)  # as the wrapped env exposes it (ClipAction's unbounded Box)
        self.single_observation_space = (gym.spaces.Box(-np.inf, np.inf, shape=obs_space.shape, dtype=np.float32)
                                         if normalize_obs else obs_space)
        self.obs_shape = tuple(obs_space.shape)
        self.obs_dim = int(np.prod(self.obs_shape))
        self.action_shape = tuple(act.shape)
        self._low, self._high = (act.low, act.high) if clip_action else (None, None)
        self._step_fns = [e.step for e in self.envs]
        self._raw_dtype = obs_space.dtype

        # RecordEpisodeStatistics
        self.episode_returns = np.zeros(E, dtype=np.float64)
        self.episode_lengths = np.zeros(E, dtype=np.int64)
        # NormalizeObservation: RunningMeanStd(shape, dtype=float32) per sub-env (float64 after the first update
        # when the env's observations are float64, as in gymnasium)
        self.obs_mean = np.zeros((E, *self.obs_shape), dtype=np.float32)
        self.obs_var = np.ones((E, *self.obs_shape), dtype=np.float32)
        self.obs_count = np.full(E, 1e-4, dtype=np.float64)
        # NormalizeReward: discounted return and RunningMeanStd(shape=()) per sub-env
        self.discounted_reward = np.zeros(E, dtype=np.float64)
        self.return_mean = np.zeros(E, dtype=np.float64)
        self.return_var = np.ones(E, dtype=np.float64)
        self.return_count = np.full(E, 1e-4, dtype=np.float64)
        self._has_reset = False

    # ------------------------------------------------------------------------------------------------ wrappers
    def _observe(self, raw: np.ndarray, rows=None) -> np.ndarray:
        """NormalizeObservation (update with a batch of one per sub-env, then normalise, float32) + clip, for all
        sub-envs or the sub-envs ``rows``; identity without normalisation."""
        if not self.normalize_obs_on:
            return raw
        if rows is None:
            self.obs_mean, self.obs_var, self.obs_count = _rms_update(self.obs_mean, self.obs_var, self.obs_count, raw)
            mean, var = self.obs_mean, self.obs_var
        else:
            mean, var, count = _rms_update(self.obs_mean[rows], self.obs_var[rows], self.obs_count[rows], raw)
            if mean.dtype != self.obs_mean.dtype or var.dtype != self.obs_var.dtype:
                raise RuntimeError("observation statistics changed dtype after the first update")
            self.obs_mean[rows], self.obs_var[rows], self.obs_count[rows] = mean, var, count
        return self._normalise(raw, mean, var)

    def _normalise(self, raw: np.ndarray, mean: np.ndarray, var: np.ndarray) -> np.ndarray:
        """np.float32((obs - mean) / np.sqrt(var + epsilon)), then clipped to +-clip_obs (in float32)."""
        den = var + self.epsilon
        np.sqrt(den, out=den)
        out = raw - mean
        out /= den
        out = out.astype(np.float32)
        return _clip(out, -self.clip_obs, self.clip_obs, out=out)

    def _reward(self, raw: np.ndarray, terminated: np.ndarray) -> np.ndarray:
        """NormalizeReward (discounted return reset by termination only, never by truncation or reset) + clip."""
        if not self.normalize_reward_on:
            return raw
        discounted = self.discounted_reward * self.gamma
        discounted *= ~terminated  # * (1 - terminated): x * 1 = x, x * 0 = +-0
        discounted += raw
        self.discounted_reward = discounted
        self.return_mean, self.return_var, self.return_count = _rms_update(
            self.return_mean, self.return_var, self.return_count, discounted)
        den = self.return_var + self.epsilon
        np.sqrt(den, out=den)
        reward = raw / den
        return _clip(reward, -self.clip_reward, self.clip_reward, out=reward)

    def _out(self, obs: np.ndarray) -> np.ndarray:
        return obs.astype(np.float64, copy=False).reshape(self.num_members, self.num_envs, self.obs_dim)

    # ------------------------------------------------------------------------------------------------ API
    def reset(self) -> np.ndarray:
        """Reset member k's sub-env i with seed seeds[k] + i (and seed its action space the same)."""
        E, N = len(self.envs), self.num_envs
        raw = np.empty((E, *self.obs_shape), dtype=self._raw_dtype)
        for e, env in enumerate(self.envs):
            seed = self.seeds[e // N] + e % N
            raw[e], _ = env.reset(seed=seed)
            env.action_space.seed(seed)
        self.episode_returns[:] = 0.0
        self.episode_lengths[:] = 0
        self._has_reset = True
        return self._out(self._observe(raw))

    def step(self, actions: np.ndarray) -> GroupStep:
        K, N = self.num_members, self.num_envs
        E = K * N
        actions = np.asarray(actions).reshape(E, *self.action_shape)
        if self.clip_action:
            actions = _clip(actions, self._low, self._high)
        raw_obs = np.empty((E, *self.obs_shape), dtype=self._raw_dtype)
        raw_reward = np.empty(E, dtype=np.float64)
        terminated = np.empty(E, dtype=bool)
        truncated = np.empty(E, dtype=bool)
        for e, step in enumerate(self._step_fns):
            raw_obs[e], raw_reward[e], terminated[e], truncated[e], _ = step(actions[e])

        self.episode_returns += raw_reward  # RecordEpisodeStatistics sees raw rewards
        self.episode_lengths += 1
        obs = self._observe(raw_obs)
        reward = self._reward(raw_reward, terminated)

        obs = self._out(obs)
        final_obs = obs.copy()
        episodes: list[tuple[int, int, float, int]] = []
        done = np.flatnonzero(terminated | truncated)
        if done.size:  # SAME_STEP autoreset: record the episode, keep its last obs, reset the sub-env
            reset_raw = np.empty((done.size, *self.obs_shape), dtype=self._raw_dtype)
            for j, e in enumerate(done.tolist()):
                episodes.append((e // N, e % N, float(self.episode_returns[e]), int(self.episode_lengths[e])))
                reset_raw[j], _ = self.envs[e].reset()
            self.episode_returns[done] = 0.0
            self.episode_lengths[done] = 0
            obs.reshape(E, self.obs_dim)[done] = self._observe(reset_raw, done).reshape(done.size, self.obs_dim)
        return GroupStep(obs, reward.reshape(K, N), terminated.reshape(K, N), truncated.reshape(K, N), final_obs,
                         episodes)

    def normalize_obs(self, raw: np.ndarray, member: int) -> np.ndarray:
        """Raw observations [P, obs_dim] as member's policy sees them now: its sub-env 0's running normalisation,
        float32 rounding and clip (what that sub-env's wrappers would return, without updating the statistics);
        float64 out. Identity (as float64) without normalisation."""
        raw = np.asarray(raw)
        if not self.normalize_obs_on:
            return raw.astype(np.float64)
        e = self._rows(member).start
        return self._normalise(raw, self.obs_mean[e].reshape(-1), self.obs_var[e].reshape(-1)).astype(np.float64)

    def _rows(self, member: int) -> slice:
        if not 0 <= member < self.num_members:
            raise IndexError(f"member {member} out of range for a group of {self.num_members}")
        return slice(member * self.num_envs, (member + 1) * self.num_envs)

    def state_dict(self, member: int) -> dict:
        """Everything member's sub-envs need to continue bitwise: per sub-env the raw env's layers (time-limit
        counter, RNG, MuJoCo integration state or classic-control state) and its action space's RNG, plus the
        wrappers' rows (running statistics, discounted return, episode accumulators). Tensors and plain Python
        only: torch.load(weights_only=True) reads it back."""
        if not self._has_reset:
            raise RuntimeError("GroupEnvs.state_dict before reset()")
        rows = self._rows(member)

        def t(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.array(a[rows], copy=True))

        return {
            "env_id": self.env_id, "num_envs": self.num_envs, "seed": self.seeds[member],
            "sub_envs": [sub_env_state(env) for env in self.envs[rows]],
            "action_space_rng": [env.action_space.np_random.bit_generator.state for env in self.envs[rows]],
            "episode_returns": t(self.episode_returns), "episode_lengths": t(self.episode_lengths),
            "obs_rms": {"mean": t(self.obs_mean), "var": t(self.obs_var), "count": t(self.obs_count)},
            "discounted_reward": t(self.discounted_reward),
            "return_rms": {"mean": t(self.return_mean), "var": t(self.return_var), "count": t(self.return_count)},
        }

    def load_state_dict(self, member: int, state: dict) -> None:
        rows = self._rows(member)
        if state["env_id"] != self.env_id or state["num_envs"] != self.num_envs:
            raise ValueError(f"env state is for {state['env_id']} x {state['num_envs']} envs, this group runs "
                             f"{self.env_id} x {self.num_envs}")
        if not self._has_reset:  # the statistics take their float64 dtype at the first update (reset)
            self.reset()
        for env, s, rng in zip(self.envs[rows], state["sub_envs"], state["action_space_rng"], strict=True):
            load_sub_env_state(env, s)
            env.action_space.np_random.bit_generator.state = rng
        for name, key in (("episode_returns", None), ("episode_lengths", None), ("discounted_reward", None),
                          ("obs_mean", ("obs_rms", "mean")), ("obs_var", ("obs_rms", "var")),
                          ("obs_count", ("obs_rms", "count")), ("return_mean", ("return_rms", "mean")),
                          ("return_var", ("return_rms", "var")), ("return_count", ("return_rms", "count"))):
            value = state[name] if key is None else state[key[0]][key[1]]
            value = value.numpy()
            target = getattr(self, name)
            if value.dtype != target.dtype or value.shape != target[rows].shape:
                raise ValueError(f"env state {name}: {value.dtype}{list(value.shape)} does not fit "
                                 f"{target.dtype}{list(target[rows].shape)}")
            target[rows] = value

    def close(self) -> None:
        for env in self.envs:
            env.close()
