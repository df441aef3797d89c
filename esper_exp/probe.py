"""Drift instrumentation, trainer side (issue 6). Three mechanisms, all off by default:

* **Shadow probe** (``drift.probe_every=K``): every K updates, on the update's first minibatch and the current
  parameters, the loss, gradients and outputs are computed twice, under the run's numerics and under the
  reference numerics (exact GELU, fp32, no autocast), and compared. It uses ``torch.autograd.grad`` (never
  ``.grad``), draws no random numbers and changes no state, so a probed run is bitwise the run without probe.
* **Snapshots** (``drift.snapshot_every=M``): every M updates, the policy's outputs on a fixed probe set of
  observations and a count-sketch fingerprint of its parameters, for ``esper-drift`` to pair runs.
* **Perturbation controls** (``drift.perturb``): ``ulp`` moves one initial weight, chosen by the seed, by one
  float32 ulp (the butterfly control); ``large`` adds noise of 1% of each tensor's std to every initial weight.

In a group every record is per member: member k's perturbation is drawn from its own seed, its probe gradients
are its own slice of the stacked parameters, and its probe set comes from its own seed.

Probe set procedure (documented, deterministic): a fresh ``gym.make(env.id)`` with the run's time limit,
reset with seed ``PROBE_SEED_OFFSET + seed``, stepped ``drift.probe_set_size`` times with actions sampled
from its action space seeded the same way, resetting whenever an episode ends; the raw observations are the
probe set, identical in every cell of a seed. Before each snapshot they pass through the run's current
observation normalisation (as the policy's inputs do). Its SHA-256 goes into every snapshot.
"""

from __future__ import annotations

import hashlib
import math

import gymnasium as gym
import numpy as np
import torch

from esper_exp.numerics import Numerics

PROBE_SEED_OFFSET = 1_000_003
SKETCH_DIM = 1024
SKETCH_SEED = 20261122
PERTURBATIONS = ("none", "ulp", "large")


# ------------------------------------------------------------------------------------------ perturbations
def perturb(policy: torch.nn.Module, kind: str, seeds: list[int]) -> list[dict | None]:
    """Apply a noise-floor control to freshly initialised parameters, member by member (member k's choice and noise
    come from its own seed); returns what was changed per member."""
    if kind not in PERTURBATIONS:
        raise ValueError(f"unknown drift.perturb {kind!r}; allowed: {', '.join(PERTURBATIONS)}")
    if kind == "none":
        return [None] * len(seeds)
    out = []
    for k, seed in enumerate(seeds):
        gen = torch.Generator().manual_seed(PROBE_SEED_OFFSET + seed)  # own stream: the run's RNGs are untouched
        weights = [(n, w) for n, w in policy.member_params(k) if w.dim() == 2 and w.abs().sum() > 0]
        with torch.no_grad():
            if kind == "ulp":
                name, w = weights[int(torch.randint(len(weights), (1,), generator=gen))]
                flat = w.view(-1)
                i = int(torch.randint(flat.numel(), (1,), generator=gen))
                old = flat[i].clone()
                flat[i] = torch.nextafter(old, torch.tensor(math.inf, dtype=old.dtype, device=old.device))
                out.append({"kind": "ulp", "param": name, "index": i, "from": old.item(), "to": flat[i].item()})
            else:  # large
                for _, w in weights:
                    w.add_((torch.randn(w.shape, generator=gen) * 0.01 * w.std().cpu()).to(w.device))
                out.append({"kind": "large", "params": [n for n, _ in weights], "relative_std": 0.01})
    return out


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


def _forward_and_grads(policy, loss_fn, mb, numerics: Numerics, scale: torch.Tensor):
    """Per-member losses [K], parameter gradients and captured outputs under one numerics. Gradients and outputs are
    lists over members: grads[k] = {name: tensor}, outputs[k] = {what: tensor}."""
    captured: dict[str, torch.Tensor] = {}
    modules = {"actor_out": policy.actor_head, "value": policy.critic_head, "seed": policy.trunk.seed}
    hooks = [m.register_forward_hook(lambda mod, inp, out, k=k: captured.__setitem__(k, out.detach().float()))
             for k, m in modules.items()]
    try:
        loss, _ = loss_fn(policy.evaluate, mb, numerics)
    finally:
        for h in hooks:
            h.remove()
    names, params = zip(*[(n, p) for n, p in policy.named_parameters() if p.requires_grad])
    grads = torch.autograd.grad((loss * scale).sum(), params, allow_unused=True)
    # a view of each gradient per member, named as member_params names it, unscaled
    by_name = {n: torch.zeros_like(p) if g is None else g for n, g, p in zip(names, grads, params)}
    K = loss.shape[0]
    grads_k, outs_k = [], []
    for k in range(K):
        grads_k.append({n: by_name[name][row].float() / scale[k] for name in names
                        for n, row in policy._rows(name, k)})
        outs_k.append({"actor_out": captured["actor_out"][k], "value": captured["value"][k],
                       "critic_seed": captured["seed"][k], "actor_seed": captured["seed"][K + k]})
    return loss.detach().float(), grads_k, outs_k


def _action_kl(policy, k: int, ref_out: torch.Tensor, run_out: torch.Tensor) -> float:
    """Mean KL(reference || run) between member k's action distributions on the minibatch."""
    if policy.discrete:
        lr, lq = torch.log_softmax(ref_out.double(), -1), torch.log_softmax(run_out.double(), -1)
        return (lr.exp() * (lr - lq)).sum(-1).mean().item()
    var = (2 * policy.actor_logstd[k].detach().double()).exp()  # same state-independent std in both
    return ((ref_out.double() - run_out.double()).square() / (2 * var)).sum(-1).mean().item()


def shadow_probe(policy, loss_fn, mb, numerics: Numerics, scale: torch.Tensor) -> list[dict]:
    """Run numerics vs reference numerics (exact GELU, fp32) on one minibatch at the current parameters, per member.

    ``loss_fn(evaluate, minibatch, numerics) -> (loss [K], parts)``; ``scale`` [K] is the fp16 loss scale (ones
    otherwise). Changes nothing and draws no random numbers. Returns one record per member."""
    loss_run, g_run, out_run = _forward_and_grads(policy, loss_fn, mb, numerics, scale)
    loss_ref, g_ref, out_ref = _forward_and_grads(policy, loss_fn, mb, numerics.reference(), torch.ones_like(scale))
    records = []
    for k in range(loss_run.shape[0]):
        gr, gf = g_run[k], g_ref[k]
        record: dict = {"loss_run": loss_run[k].item(), "loss_ref": loss_ref[k].item(),
                        "grads_finite": bool(all(torch.isfinite(g).all() for g in gr.values()))}
        record.update({f"grad_{key}": v for key, v in _compare(_flat(gr.values()), _flat(gf.values())).items()})
        record["grad_norm_ref"] = _flat(gf.values()).norm().item()
        record["layers"] = {n: _compare(gr[n], gf[n]) for n in gf}
        for key in out_ref[k]:
            d = (out_run[k][key].double() - out_ref[k][key].double()).abs()
            record[f"{key}_max_abs"], record[f"{key}_mean_abs"] = d.max().item(), d.mean().item()
        record["action_kl"] = _action_kl(policy, k, out_ref[k]["actor_out"], out_run[k]["actor_out"])
        records.append(record)
    return records


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


def param_sketch(tensors: list[torch.Tensor]) -> dict:
    """Count-sketch of the flattened parameters (fixed hash): ||sketch_a - sketch_b|| estimates ||theta_a - theta_b||."""
    flat = _flat([t.detach().cpu() for t in tensors])
    gen = torch.Generator().manual_seed(SKETCH_SEED)
    bucket = torch.randint(SKETCH_DIM, (flat.numel(),), generator=gen)
    sign = torch.randint(2, (flat.numel(),), generator=gen).double() * 2 - 1
    sketch = torch.zeros(SKETCH_DIM, dtype=torch.float64).index_add_(0, bucket, flat * sign)
    return {"sketch": sketch.tolist(), "norm": flat.norm().item(), "numel": flat.numel()}


class Snapshotter:
    """Every member's policy outputs on its own fixed probe set (seed-determined), plus a parameter sketch."""

    def __init__(self, env_id: str, seeds: list[int], size: int, max_episode_steps: int | None, kwargs: dict):
        self.raw = [make_probe_set(env_id, s, size, max_episode_steps, kwargs) for s in seeds]
        self.sha = [hashlib.sha256(r.tobytes()).hexdigest()[:16] for r in self.raw]

    def __call__(self, policy, envs, numerics: Numerics, device) -> list[dict]:
        obs = torch.as_tensor(np.stack([envs.normalize_obs(r, k) for k, r in enumerate(self.raw)]),
                              dtype=torch.float32, device=device)
        with torch.no_grad():
            out = policy.actor_out(obs, numerics).float().cpu()
            value = policy.value(obs, numerics).float().cpu()
        records = []
        for k in range(len(self.raw)):
            record = {"probe_sha": self.sha[k], "discrete": policy.discrete, "actor_out": out[k].tolist(),
                      "value": value[k].tolist(), "params": param_sketch([w for _, w in policy.member_params(k)])}
            if not policy.discrete:
                record["logstd"] = policy.actor_logstd[k].detach().float().cpu().reshape(-1).tolist()
            records.append(record)
        return records
