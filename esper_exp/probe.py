"""Drift instrumentation, trainer side (issue 6). Three mechanisms, all off by default:

* **Shadow probe** (``drift.probe_every=K``): every K updates, on the update's first minibatch and the current
  parameters, the loss, gradients and outputs are computed twice, under the run's numerics and under the
  reference numerics (exact GELU, fp32, no autocast), and compared. It uses ``torch.autograd.grad`` (never
  ``.grad``), draws no random numbers and changes no state, so a probed run is bitwise the run without probe.
* **Snapshots** (``drift.snapshot_every=M``): every M updates, the policy's outputs on a fixed probe set of
  observations and a count-sketch fingerprint of its parameters, for ``esper-drift`` to pair runs.
* **Perturbation controls** (``drift.perturb``): ``ulp`` moves one initial weight, chosen by the seed, by one
  float32 ulp (the butterfly control); ``large`` adds noise of 1% of each tensor's std to every initial weight.

Probe set procedure (documented, deterministic): a fresh ``gym.make(env.id)`` with the run's time limit,
reset with seed ``PROBE_SEED_OFFSET + seed``, stepped ``drift.probe_set_size`` times with actions sampled
from its action space seeded the same way, resetting whenever an episode ends; the raw observations are the
probe set, identical in every cell of a seed. Before each snapshot they pass through the run's current
observation normalisation (as the policy's inputs do). Its SHA-256 goes into every snapshot.
"""

from __future__ import annotations

import contextlib
import hashlib
import math

import gymnasium as gym
import numpy as np
import torch

from esper_exp.seeds import gelu_variant

PROBE_SEED_OFFSET = 1_000_003
SKETCH_DIM = 1024
SKETCH_SEED = 20261122
PERTURBATIONS = ("none", "ulp", "large")


# ------------------------------------------------------------------------------------------ perturbations
def perturb(policy: torch.nn.Module, kind: str, seed: int) -> dict | None:
    """Apply a noise-floor control to freshly initialised parameters; returns what was changed."""
    if kind == "none":
        return None
    gen = torch.Generator().manual_seed(PROBE_SEED_OFFSET + seed)  # own stream: the run's RNGs are untouched
    weights = [(n, p) for n, p in policy.named_parameters() if p.dim() == 2 and p.abs().sum() > 0]
    with torch.no_grad():
        if kind == "ulp":
            name, p = weights[int(torch.randint(len(weights), (1,), generator=gen))]
            flat = p.view(-1)
            i = int(torch.randint(flat.numel(), (1,), generator=gen))
            old = flat[i].clone()
            flat[i] = torch.nextafter(old, torch.tensor(math.inf, dtype=old.dtype))
            return {"kind": "ulp", "param": name, "index": i, "from": old.item(), "to": flat[i].item()}
        if kind == "large":
            for _, p in weights:
                p.add_(torch.randn(p.shape, generator=gen) * 0.01 * p.std())
            return {"kind": "large", "params": [n for n, _ in weights], "relative_std": 0.01}
    raise ValueError(f"unknown drift.perturb {kind!r}; allowed: {', '.join(PERTURBATIONS)}")


# ------------------------------------------------------------------------------------------ shadow probe
def _flat(tensors) -> torch.Tensor:
    return torch.cat([t.reshape(-1).double() for t in tensors])


def _compare(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    """a: run numerics, b: reference. cosine and |a-b|/|b| (0 and 1 when both are zero)."""
    a, b = a.double().reshape(-1), b.double().reshape(-1)
    nb, na = b.norm().item(), a.norm().item()
    diff = (a - b).norm().item()
    if diff == 0:
        cos = 1.0  # identical (also when both are zero); avoids 1 - 5e-15 from rounding in the dot product
    else:
        cos = float("nan") if na == 0 or nb == 0 else (a @ b).item() / (na * nb)
    return {"cos": cos, "rel_l2": 0.0 if diff == 0 else (diff / nb if nb else float("inf")),
            "max_abs": (a - b).abs().max().item() if a.numel() else 0.0}


def _forward_and_grads(ppo, mb, evaluate, numerics, scale: float):
    """Loss, parameter gradients (unscaled) and captured outputs under one numerics context."""
    from esper_exp.ppo import ppo_loss

    policy = ppo.policy
    captured: dict[str, torch.Tensor] = {}
    modules = {"actor_out": policy.actor, "value": policy.critic, "actor_seed": policy.actor.seed,
               "critic_seed": policy.critic.seed}
    hooks = [m.register_forward_hook(lambda mod, inp, out, k=k: captured.__setitem__(k, out.detach().float()))
             for k, m in modules.items()]
    try:
        with numerics:
            loss, _ = ppo_loss(evaluate, mb, ppo.cfg.ppo)
    finally:
        for h in hooks:
            h.remove()
    names, params = zip(*[(n, p) for n, p in policy.named_parameters() if p.requires_grad])
    grads = torch.autograd.grad(loss * scale, params, allow_unused=True)
    grads = [torch.zeros_like(p) if g is None else g.float() / scale for g, p in zip(grads, params)]
    return loss.detach().float(), dict(zip(names, grads)), captured


def _action_kl(policy, ref_out: torch.Tensor, run_out: torch.Tensor) -> float:
    """Mean KL(reference || run) between the action distributions on the minibatch."""
    if policy.discrete:
        lr, lq = torch.log_softmax(ref_out.double(), -1), torch.log_softmax(run_out.double(), -1)
        return (lr.exp() * (lr - lq)).sum(-1).mean().item()
    var = (2 * policy.actor_logstd.detach().double()).exp()  # same state-independent std in both
    return ((ref_out.double() - run_out.double()).square() / (2 * var)).sum(-1).mean().item()


def shadow_probe(ppo, mb) -> dict:
    """Run numerics vs reference numerics on one minibatch at the current parameters. Changes nothing."""
    scale = float(ppo.scaler.get_scale()) if ppo.scaler.is_enabled() else 1.0
    run_ctx = ppo.precision.autocast()
    loss_run, g_run, out_run = _forward_and_grads(ppo, mb, ppo.evaluate, run_ctx, scale)
    ref_ctx = contextlib.ExitStack()
    ref_ctx.enter_context(gelu_variant("exact"))
    loss_ref, g_ref, out_ref = _forward_and_grads(ppo, mb, ppo.policy.evaluate, ref_ctx, 1.0)
    record: dict = {"update": ppo.update_idx + 1, "global_step": ppo.global_step,
                    "loss_run": loss_run.item(), "loss_ref": loss_ref.item(),
                    "grads_finite": bool(all(torch.isfinite(g).all() for g in g_run.values()))}
    glob = _compare(_flat(g_run.values()), _flat(g_ref.values()))
    record.update({f"grad_{k}": v for k, v in glob.items()})
    record["grad_norm_ref"] = _flat(g_ref.values()).norm().item()
    record["layers"] = {n: _compare(g_run[n], g_ref[n]) for n in g_ref}
    for k in out_ref:
        d = (out_run[k].double() - out_ref[k].double()).abs()
        record[f"{k}_max_abs"], record[f"{k}_mean_abs"] = d.max().item(), d.mean().item()
    record["action_kl"] = _action_kl(ppo.policy, out_ref["actor_out"], out_run["actor_out"])
    return record


# ------------------------------------------------------------------------------------------ snapshots
def make_probe_set(env_id: str, seed: int, size: int, max_episode_steps: int | None, kwargs: dict) -> np.ndarray:
    env = gym.make(env_id, max_episode_steps=max_episode_steps, **kwargs)
    obs, _ = env.reset(seed=PROBE_SEED_OFFSET + seed)
    env.action_space.seed(PROBE_SEED_OFFSET + seed)
    out = []
    for _ in range(size):
        out.append(np.asarray(obs, dtype=np.float64).reshape(-1))
        obs, _, terminated, truncated, _ = env.step(env.action_space.sample())
        if terminated or truncated:
            obs, _ = env.reset()
    env.close()
    return np.stack(out)


def param_sketch(policy: torch.nn.Module) -> dict:
    """Count-sketch of the flattened parameters (fixed hash): ||sketch_a - sketch_b|| estimates ||theta_a - theta_b||."""
    flat = _flat([p.detach().cpu() for p in policy.parameters()])
    gen = torch.Generator().manual_seed(SKETCH_SEED)
    bucket = torch.randint(SKETCH_DIM, (flat.numel(),), generator=gen)
    sign = torch.randint(2, (flat.numel(),), generator=gen).double() * 2 - 1
    sketch = torch.zeros(SKETCH_DIM, dtype=torch.float64).index_add_(0, bucket, flat * sign)
    return {"sketch": sketch.tolist(), "norm": flat.norm().item(), "numel": flat.numel()}


class Snapshotter:
    def __init__(self, ppo, size: int):
        e = ppo.cfg.env
        self.raw = make_probe_set(e.id, ppo.cfg.seed, size, e.max_episode_steps, dict(e.kwargs))
        self.sha = hashlib.sha256(self.raw.tobytes()).hexdigest()[:16]

    def __call__(self, ppo) -> dict:
        obs = torch.as_tensor(ppo.envs.normalize_obs(self.raw), dtype=torch.float32, device=ppo.device)
        policy = ppo.policy
        with torch.no_grad(), ppo.precision.autocast():
            out = policy.actor(obs, policy.alpha).float().cpu()
            value = policy.value(obs).float().cpu()
        record = {"update": ppo.update_idx, "global_step": ppo.global_step, "probe_sha": self.sha,
                  "discrete": policy.discrete, "actor_out": out.tolist(), "value": value.tolist(),
                  "params": param_sketch(policy)}
        if not policy.discrete:
            record["logstd"] = policy.actor_logstd.detach().float().cpu().reshape(-1).tolist()
        return record
