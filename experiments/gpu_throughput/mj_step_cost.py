# HalfCheetah-v5 step cost in one process under different action regimes: does the physics get dearer as a policy
# learns? (gpu_throughput README, round 4.)   python experiments/gpu_throughput/mj_step_cost.py
import time, numpy as np, gymnasium as gym
env = gym.make("HalfCheetah-v5")
rng = np.random.default_rng(0)
def run(kind, n=20000):
    env.reset(seed=1); ncon = []; t = time.perf_counter()
    for i in range(n):
        if kind == "zero": a = np.zeros(6)
        elif kind == "uniform": a = rng.uniform(-1, 1, 6)
        elif kind == "bangbang": a = rng.choice([-1.0, 1.0], 6)
        elif kind == "bangbang_slow": a = np.sign(np.sin(i / 7.0 + np.arange(6)))  # coordinated, gait-like
        _, _, term, trunc, _ = env.step(a)
        if i % 50 == 0: ncon.append(env.unwrapped.data.ncon)
        if term or trunc: env.reset()
    return 1e6 * (time.perf_counter() - t) / n, np.mean(ncon), np.max(ncon)
for rep in range(2):
    for k in ("zero", "uniform", "bangbang", "bangbang_slow"):
        us, m, mx = run(k)
        print(f"{k:14s} {us:6.1f} us/step  contacts mean {m:.1f} max {mx}")
