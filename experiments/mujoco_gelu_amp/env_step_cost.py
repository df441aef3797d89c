# Per-step cost of the three MuJoCo envs (gymnasium.make, no wrappers), one process, uniform random actions, resets
# included: why Hopper and Walker2d sweeps run at about half HalfCheetah's rate (README, "Pilot").
#   python experiments/mujoco_gelu_amp/env_step_cost.py
import time, numpy as np, gymnasium as gym
for rep in range(2):
    for eid in ("HalfCheetah-v5", "Hopper-v5", "Walker2d-v5"):
        env = gym.make(eid); rng = np.random.default_rng(0); env.reset(seed=1); n = 20000; resets = 0
        t = time.perf_counter(); rt = 0.0
        for i in range(n):
            _, _, term, trunc, _ = env.step(rng.uniform(-1, 1, env.action_space.shape))
            if term or trunc:
                r0 = time.perf_counter(); env.reset(); rt += time.perf_counter() - r0; resets += 1
        dt = time.perf_counter() - t
        print(f"{eid:15s} {1e6*dt/n:6.1f} us/step incl. resets; {resets} resets, {1e6*rt/max(resets,1):6.1f} us each, ep len {n/max(resets,1):.0f}")
