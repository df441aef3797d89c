"""Synthetic run directories in the trainer's exact on-disk format, for the analysis tests.

A run's episodic return follows a saturating learning curve plus a per-seed offset and
per-episode noise; ``shift`` is added to every return of a cell, so a planted effect is known
exactly. Files written (the contract esper-report relies on):

- run.json        status, reason, seed, env, env_id, gelu, precision, compile, cell, config_hash,
                  config, git_sha, versions, device, started_at, ended_at, total_timesteps,
                  global_step, nonfinite_events
- metrics.jsonl   one object per PPO update (global_step, update, alpha, lr, losses, approx_kl, ...,
                  loss_scale for fp16, nonfinite_grad_steps cumulative, sps, timings, return_mean)
- episodes.jsonl  one object per finished episode: global_step, return, length, env_index
NaN/Infinity are written the way Python's json writes them (allow_nan=True).
"""

from __future__ import annotations

import json
import math
import zlib
from pathlib import Path

import numpy as np

ENV_IDS = {"cartpole": "CartPole-v1", "halfcheetah": "HalfCheetah-v5"}
STEPS_PER_UPDATE = 512


def write_run(run_dir, *, env="cartpole", gelu="exact", precision="fp32", seed=0, compile_=False,
              status="completed", reason=None, shift=0.0, total_timesteps=30_000, cap=200.0,
              seed_sd=8.0, noise_sd=10.0, gen_seed=None, nonfinite_at=(), stop_at=None,
              ended_at="2026-11-22T01:00:00+00:00", data_seed_offset=0, perturb="none") -> Path:
    """Write one run directory. ``nonfinite_at``: update indices whose grads went non-finite
    (step skipped, NaN grad_norm logged). ``stop_at``: steps after which the run stops writing
    (a failed or interrupted run)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    cell = f"{env}/{gelu}/{precision}" + ("/compiled" if compile_ else "") \
        + ("" if perturb == "none" else f"/perturb-{perturb}")
    # the noise depends on seed and cell but not on the shift: a planted shift is exact
    rng = np.random.default_rng(
        gen_seed if gen_seed is not None
        else [seed, sum(map(ord, cell)), data_seed_offset])
    offset = rng.normal(0.0, seed_sd)
    end = total_timesteps if stop_at is None else min(stop_at, total_timesteps)

    episodes, step = [], 0
    while True:
        frac = step / total_timesteps
        mean = 10.0 + (cap - 10.0) * (1.0 - math.exp(-4.0 * frac)) + offset * frac
        ret = float(mean + rng.normal(0.0, noise_sd) + shift)
        length = int(np.clip(round(abs(ret)), 8, 500))
        if step + length > end:
            break
        step += length
        episodes.append({"global_step": step, "return": ret, "length": length,
                         "env_index": len(episodes) % 4})

    metrics, skipped = [], 0
    n_updates = end // STEPS_PER_UPDATE
    for u in range(1, n_updates + 1):
        gs = u * STEPS_PER_UPDATE
        bad = u in set(nonfinite_at)
        skipped += int(bad)
        recent = [e["return"] for e in episodes if e["global_step"] <= gs][-20:]
        row = {
            "global_step": gs, "update": u, "alpha": min(1.0, gs / (0.3 * total_timesteps)),
            "lr": 2.5e-4 * (1 - gs / total_timesteps), "policy_loss": float(rng.normal(-0.01, 0.005)),
            "value_loss": float(abs(rng.normal(50, 10))), "entropy": 0.69 - 0.3 * gs / total_timesteps,
            "approx_kl": float(abs(rng.normal(0.01, 0.003))), "old_approx_kl": float(abs(rng.normal(0.01, 0.003))),
            "clipfrac": float(np.clip(rng.normal(0.1, 0.02), 0, 1)),
            "explained_variance": float(np.clip(rng.normal(0.2 + 0.6 * gs / total_timesteps, 0.05), -1, 1)),
            "grad_norm": math.nan if bad else float(abs(rng.normal(0.5, 0.1))),
            "nonfinite_grad_steps": skipped, "sps": 5000.0, "time_env": 0.05,
            "time_inference": 0.02, "time_update": 0.03,
        }
        if precision == "fp16":
            row["loss_scale"] = 65536.0 / (2 ** skipped)
        if bad:
            row["policy_loss"] = math.inf
        if recent:
            row["return_mean"] = float(np.mean(recent))
        metrics.append(row)

    info = {
        "status": status, "reason": reason, "seed": seed, "env": env, "env_id": ENV_IDS.get(env, env),
        "gelu": gelu, "precision": precision, "compile": compile_, "cell": cell, "perturb": perturb,
        "config_hash": f"{zlib.crc32(f'{cell}|{seed}'.encode()):08x}",
        "config": {"env": {"id": ENV_IDS.get(env, env)}, "model": {"gelu": gelu}, "drift": {"perturb": perturb},
                   "precision": {"name": precision}, "seed": seed,
                   "ppo": {"total_timesteps": total_timesteps}},
        "git_sha": "0" * 40, "versions": {"python": "3.11", "torch": "2.13.0"}, "device": "cpu",
        "started_at": "2026-11-22T00:00:00+00:00",
        "ended_at": None if status == "running" else ended_at,
        "total_timesteps": total_timesteps, "global_step": end if metrics else 0,
        "nonfinite_events": skipped,
    }
    (run_dir / "run.json").write_text(json.dumps(info, indent=1))
    with open(run_dir / "metrics.jsonl", "w") as f:
        for row in metrics:
            f.write(json.dumps(row) + "\n")  # allow_nan=True: NaN / Infinity literals
    with open(run_dir / "episodes.jsonl", "w") as f:
        for e in episodes:
            f.write(json.dumps(e) + "\n")
    return run_dir


def run_path(root, env, gelu, precision, seed, compile_=False, perturb="none") -> Path:
    cell = f"{env}/{gelu}/{precision}" + ("/compiled" if compile_ else "") \
        + ("" if perturb == "none" else f"/perturb-{perturb}")
    return Path(root) / cell / f"seed={seed}"


def make_sweep(root, *, seeds=range(8), gelus=("exact", "tanh"), precisions=("fp32", "bf16", "fp16"),
               shifts=None, env="cartpole", skip=(), **kw) -> Path:
    """A full sweep. shifts: {"tanh/bf16": -40.0, ...} planted per cell. skip: {(cell, seed)}."""
    shifts = shifts or {}
    for g in gelus:
        for p in precisions:
            for s in seeds:
                if (f"{g}/{p}", s) in skip:
                    continue
                write_run(run_path(root, env, g, p, s), env=env, gelu=g, precision=p, seed=s,
                          shift=shifts.get(f"{g}/{p}", 0.0), **kw)
    return Path(root)


PROBE_SET = 64
SNAPSHOT_UPDATES = range(0, 44, 4)


def write_drift_files(run_dir, *, seed, rate=0.0, eps=0.0, noise_key=0, probe_level=0.0,
                      eps_sd=1.0, updates=SNAPSHOT_UPDATES) -> Path:
    """snapshots.jsonl + probe.jsonl in the trainer's format (esper_exp/probe.py), with a planted
    divergence from the reference run of the same seed: logits, values and the parameter sketch are
    the seed's base values plus eps_k * exp(rate * update) * Z, where eps_k = eps * lognormal(eps_sd)
    per (seed, noise_key) and Z is fixed noise per (seed, noise_key). rate=eps=0 writes the reference
    itself. probe_level: the planted median grad_rel_l2 of the shadow probe (0 for the reference)."""
    run_dir = Path(run_dir)
    base = np.random.default_rng([seed, 7])
    logits0, value0 = base.normal(0, 1, (PROBE_SET, 2)), base.normal(0, 1, PROBE_SET)
    sketch0, drift_dir = base.normal(0, 1, 1024), base.normal(0, 0.01, (PROBE_SET, 2))
    own = np.random.default_rng([seed, 11, noise_key])
    eps_k = eps * float(np.exp(own.normal(0, eps_sd)))
    z_out, z_val, z_sk = own.normal(0, 1, (PROBE_SET, 2)), own.normal(0, 1, PROBE_SET), own.normal(0, 1, 1024)
    sha = f"{zlib.crc32(f'probe|{seed}'.encode()):016x}"
    with open(run_dir / "snapshots.jsonl", "w") as f:
        for u in updates:
            k = eps_k * math.exp(rate * u)
            rec = {"update": u, "global_step": u * STEPS_PER_UPDATE, "probe_sha": sha, "discrete": True,
                   "actor_out": (logits0 + u * drift_dir + k * z_out).tolist(),
                   "value": (value0 + k * z_val).tolist(),
                   "params": {"sketch": (sketch0 + k * z_sk).tolist(), "norm": 20.0, "numel": 5000}}
            f.write(json.dumps(rec) + "\n")
    with open(run_dir / "probe.jsonl", "w") as f:
        for u in range(2, max(updates) + 1, 2):
            lvl = probe_level * float(np.exp(own.normal(0, 0.2)))
            rec = {"update": u, "global_step": u * STEPS_PER_UPDATE, "loss_run": 1.0, "loss_ref": 1.0,
                   "grads_finite": True, "grad_cos": 1.0 - lvl ** 2 / 2, "grad_rel_l2": lvl,
                   "grad_max_abs": lvl, "grad_norm_ref": 1.0, "layers": {},
                   "actor_out_max_abs": lvl / 10, "actor_out_mean_abs": lvl / 50,
                   "value_max_abs": lvl / 5, "value_mean_abs": lvl / 20,
                   "actor_seed_max_abs": lvl, "actor_seed_mean_abs": lvl / 5,
                   "critic_seed_max_abs": lvl, "critic_seed_mean_abs": lvl / 5, "action_kl": (lvl / 10) ** 2}
            f.write(json.dumps(rec) + "\n")
    return run_dir
