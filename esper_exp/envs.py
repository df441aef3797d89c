"""Vector environments with CleanRL's wrappers, in gymnasium's SAME_STEP autoreset mode.

SAME_STEP on purpose (DESIGN.md section 5): the step that ends an episode also resets that
sub-env, returns the new episode's first observation, and puts the old episode's last observation
in ``info["final_obs"]``. Every transition is then a real one (no NEXT_STEP "reset step" to mask),
and a truncated episode can be bootstrapped from the value of its final observation.

Wrappers sit inside each sub-env (as in CleanRL), so ``final_obs`` is normalised like every other
observation, and RecordEpisodeStatistics (innermost) sees raw rewards.
"""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode, SyncVectorEnv

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


@dataclass
class StepResult:
    obs: np.ndarray
    reward: np.ndarray  # float64, as wrapped (normalised and clipped when configured)
    terminated: np.ndarray
    truncated: np.ndarray
    final_obs: dict[int, np.ndarray]  # env index -> last obs of an episode that ended this step
    episodes: list[tuple[int, float, int]]  # (env index, raw return, length) of episodes that ended


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


class VectorEnv:
    """Thin, explicit layer over SyncVectorEnv(SAME_STEP) that decodes its info dicts once."""

    def __init__(self, env_id: str, num_envs: int, gamma: float, *, clip_action: bool = False,
                 normalize_obs: bool = False, normalize_reward: bool = False, clip_obs: float = 10.0,
                 clip_reward: float = 10.0, max_episode_steps: int | None = None, kwargs: dict | None = None):
        if env_id not in gym.registry:
            raise ValueError(f"unknown gymnasium env id {env_id!r}; see gymnasium.registry for the allowed ids")
        thunk = make_env(env_id, clip_action=clip_action, normalize_obs=normalize_obs,
                         normalize_reward=normalize_reward, clip_obs=clip_obs, clip_reward=clip_reward, gamma=gamma,
                         max_episode_steps=max_episode_steps, kwargs=dict(kwargs or {}))
        self.env = SyncVectorEnv([thunk for _ in range(num_envs)], autoreset_mode=AutoresetMode.SAME_STEP, copy=False)
        self.num_envs = num_envs
        self.clip_obs = clip_obs
        self.single_observation_space = self.env.single_observation_space
        self.single_action_space = self.env.single_action_space

    def reset(self, seed: int) -> np.ndarray:
        """Seed every sub-env (seed + i) and its action space; returns the first observations."""
        obs, _ = self.env.reset(seed=[seed + i for i in range(self.num_envs)])
        for i, sub in enumerate(self.env.envs):
            sub.action_space.seed(seed + i)
        return obs

    def step(self, actions: np.ndarray) -> StepResult:
        obs, reward, terminated, truncated, info = self.env.step(actions)
        final_obs: dict[int, np.ndarray] = {}
        episodes: list[tuple[int, float, int]] = []
        if "final_obs" in info:
            for i in np.flatnonzero(info["_final_obs"]):
                final_obs[int(i)] = info["final_obs"][i]
            fin = info["final_info"]
            if "episode" in fin:
                ep, mask = fin["episode"], fin["_episode"]
                for i in np.flatnonzero(mask):
                    episodes.append((int(i), float(ep["r"][i]), int(ep["l"][i])))
        return StepResult(obs, reward, terminated, truncated, final_obs, episodes)

    def normalize_obs(self, raw: np.ndarray) -> np.ndarray:
        """Raw observations as the policy sees them now: sub-env 0's running normalisation and clip, if any."""
        for layer in _layers(self.env.envs[0]):
            if isinstance(layer, gym.wrappers.NormalizeObservation):
                rms = layer.obs_rms
                return np.clip((raw - rms.mean) / np.sqrt(rms.var + layer.epsilon), -self.clip_obs, self.clip_obs)
        return raw

    def state_dict(self) -> list[list[dict]]:
        return [sub_env_state(e) for e in self.env.envs]

    def load_state_dict(self, state: list[list[dict]]) -> None:
        if len(state) != self.num_envs:
            raise ValueError(f"checkpoint has {len(state)} envs, this run has {self.num_envs}")
        for e, s in zip(self.env.envs, state):
            load_sub_env_state(e, s)

    def close(self) -> None:
        self.env.close()
