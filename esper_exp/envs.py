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
from gymnasium.vector import AutoresetMode, SyncVectorEnv


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

    def close(self) -> None:
        self.env.close()
