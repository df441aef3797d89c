"""Synthetic run directories in the trainer's exact on-disk format, for the analysis tests.

A run's episodic return follows a saturating learning curve plus a per-seed offset and
per-episode noise; ``shift`` is added to every return of a cell, so a planted effect is known
exactly (in return units; the normalised endpoint moves by shift / (reference - random), 478 for
CartPole's anchors). ``seed_effect`` is a constant added to every return of a run and shared by all
cells of a seed (what makes paired seeds correlated); ``run_effect_sd`` draws a constant per run,
independent across cells. Files written (the contract esper-report relies on):

- run.json        status, reason, seed, env, env_id, gelu, precision, compile, cell, config_hash,
                  config, git_sha, versions, device, started_at, ended_at, total_timesteps,
                  global_step, update, nonfinite_events
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

from esper_exp.analysis.rule import DEFAULT_RULE

ENV_IDS = {"cartpole": "CartPole-v1", "halfcheetah": "HalfCheetah-v5"}
STEPS_PER_UPDATE = 512


def write_run(run_dir, *, env="cartpole", gelu="exact", precision="fp32", seed=0, compile_=False,
              status="completed", reason=None, shift=0.0, total_timesteps=30_000, cap=200.0,
              seed_sd=8.0, noise_sd=10.0, gen_seed=None, nonfinite_at=(), stop_at=None,
              ended_at="2026-11-22T01:00:00+00:00", data_seed_offset=0, perturb="none", seed_effect=0.0,
              run_effect_sd=0.0, rule=DEFAULT_RULE) -> Path:
    """Write one run directory. ``nonfinite_at``: update indices whose grads went non-finite
    (step skipped, NaN grad_norm logged). ``stop_at``: steps after which the run stops writing
    (a failed or interrupted run). ``rule``: the decision rule stored in the config (None: none)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    cell = f"{env}/{gelu}/{precision}" + ("/compiled" if compile_ else "") \
        + ("" if perturb == "none" else f"/perturb-{perturb}")
    # the noise depends on seed and cell but not on the shift: a planted shift is exact
    rng = np.random.default_rng(
        gen_seed if gen_seed is not None
        else [seed, sum(map(ord, cell)), data_seed_offset])
    offset = rng.normal(0.0, seed_sd)
    const = seed_effect + (rng.normal(0.0, run_effect_sd) if run_effect_sd else 0.0)
    end = total_timesteps if stop_at is None else min(stop_at, total_timesteps)

    episodes, step = [], 0
    while True:
        frac = step / total_timesteps
        mean = 10.0 + (cap - 10.0) * (1.0 - math.exp(-4.0 * frac)) + offset * frac
        base = float(mean + rng.normal(0.0, noise_sd))
        ret = base + shift + const
        length = int(np.clip(round(abs(base)), 8, 500))  # timing independent of planted effects: exact shifts
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
        "config": {"env": {"name": env, "id": ENV_IDS.get(env, env), "num_envs": 4}, "model": {"gelu": gelu},
                   "drift": {"perturb": perturb}, "precision": {"name": precision}, "seed": seed,
                   "ppo": {"total_timesteps": total_timesteps, "num_steps": STEPS_PER_UPDATE // 4},
                   **({} if rule is None else {"analysis": rule})},
        "git_sha": "0" * 40, "versions": {"python": "3.11", "torch": "2.13.0"}, "device": "cpu",
        "started_at": "2026-11-22T00:00:00+00:00",
        "ended_at": None if status == "running" else ended_at,
        "total_timesteps": total_timesteps, "global_step": end if metrics else 0, "update": len(metrics),
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
               shifts=None, env="cartpole", skip=(), seed_effect_sd=0.0, **kw) -> Path:
    """A full sweep. shifts: {"tanh/bf16": -40.0, ...} planted per cell. skip: {(cell, seed)}.
    seed_effect_sd: sd of a per-seed constant shared by every cell of that seed (pairing)."""
    shifts = shifts or {}
    for g in gelus:
        for p in precisions:
            for s in seeds:
                if (f"{g}/{p}", s) in skip:
                    continue
                se = float(np.random.default_rng([s, 99, kw.get("data_seed_offset", 0)]).normal(0, seed_effect_sd)) \
                    if seed_effect_sd else 0.0
                write_run(run_path(root, env, g, p, s), env=env, gelu=g, precision=p, seed=s,
                          shift=shifts.get(f"{g}/{p}", 0.0), seed_effect=se, **kw)
    return Path(root)


PROBE_SET = 64
SNAPSHOT_UPDATES = range(0, 61, 3)  # total updates 60 (total_timesteps 30_720): thirds (0,20], (20,40], (40,60]


def write_drift_files(run_dir, *, seed, level=None, noise_key=0, legacy=False, updates=SNAPSHOT_UPDATES,
                      probe=None, level_sd=0.3, continuous=False) -> Path:
    """snapshots.jsonl (+ probe.jsonl when ``probe`` is given) with a planted distance from the reference run
    of the same seed. The reference (``level=None``) writes the seed's base logits; another run writes
    base + k(u) * Z, Z fixed noise per (seed, noise_key), with k(u) = level(u) * lognormal(level_sd) per run, so
    its distance to the reference grows with ``level(u)`` (a function of the update). Schema 2 (fp32 eval on the
    reference's on-policy states) unless ``legacy``. ``probe``: {"gelu": f(update) -> ratio, "dtype": ...} writes
    schema-2 applied-update records whose ratios to the noise floor are f(update) x lognormal(0.2)."""
    run_dir = Path(run_dir)
    base = np.random.default_rng([seed, 7])
    adim = 2
    logits0, value0 = base.normal(0, 1, (PROBE_SET, adim)), base.normal(0, 1, PROBE_SET)
    sketch0 = base.normal(0, 1, 1024)
    own = np.random.default_rng([seed, 11, noise_key])
    scale = float(np.exp(own.normal(0, level_sd)))
    z_out, z_val, z_sk = own.normal(0, 1, (PROBE_SET, adim)), own.normal(0, 1, PROBE_SET), own.normal(0, 1, 1024)
    sha = f"{zlib.crc32(f'states|{seed}'.encode()):016x}"
    with open(run_dir / "snapshots.jsonl", "w") as f:
        for u in updates:
            k = 0.0 if level is None else level(u) * scale
            rec = {"update": u, "global_step": u * STEPS_PER_UPDATE, "discrete": not continuous,
                   "actor_out": (logits0 + k * z_out).tolist(), "value": (value0 + k * z_val).tolist(),
                   "params": {"sketch": (sketch0 + k * z_sk).tolist(), "norm": 20.0, "numel": 5000}}
            if continuous:
                rec["logstd"] = [-0.5] * adim
            if legacy:
                rec["probe_sha"] = sha
            else:
                rec.update({"schema": 2, "states": {"kind": "on_policy", "source": f"exact/fp32/seed={seed}",
                                                    "sha": sha, "n": PROBE_SET},
                            "eval": {"gelu": "exact", "precision": "fp32"}})
            f.write(json.dumps(rec) + "\n")
    if probe is not None:
        with open(run_dir / "probe.jsonl", "w") as f:
            for u in range(2, max(updates) + 1, 2):
                n = 8  # 2 epochs x 4 minibatches
                noise = np.abs(own.normal(1e-3, 1e-4, n))
                steps = {"epoch": [i // 4 for i in range(n)], "minibatch": [i % 4 for i in range(n)],
                         "applied_norm": (noise * 3).tolist(), "noise_diff_norm": noise.tolist()}
                for kind in ("gelu", "dtype"):
                    fn = probe.get(kind)
                    steps[f"{kind}_diff_norm"] = ([None] * n if fn is None else
                                                  (noise * fn(u) * np.exp(own.normal(0, 0.2, n))).tolist())
                f.write(json.dumps({"schema": 2, "update": u, "global_step": u * STEPS_PER_UPDATE,
                                    "steps": steps}) + "\n")
    return run_dir
