"""One gym.make MuJoCo env stepped N times with uniform random actions (resets included), as an env worker steps
its sub-envs: the per-env physics cost, timed as a whole process (gpu_throughput README, "Why Hopper is env-bound").

    python experiments/gpu_throughput/envstep.py Hopper-v5 40000
"""

import sys

import gymnasium as gym
import numpy as np

from esper_exp.envs import _quiet_settotalmass

env_id, n = sys.argv[1], int(sys.argv[2])
with _quiet_settotalmass():
    env = gym.make(env_id, disable_env_checker=True)
env.reset(seed=0)
actions = np.random.default_rng(0).uniform(-1, 1, (n, *env.action_space.shape)).astype(np.float32)
for a in actions:
    _, _, terminated, truncated, _ = env.step(a)
    if terminated or truncated:
        env.reset()
