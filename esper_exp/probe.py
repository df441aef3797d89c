"""Drift instrumentation, trainer side (issue 10). Three mechanisms, all off by default; none changes training (a run
with them is bitwise the run without them on CPU: tests/test_probe.py). Record schema (version 2): the docstring of
esper_exp/analysis/drift_metrics.py.

* **Applied-update probe** (``drift.probe_every=K``, :class:`AppliedUpdateProbe`): in every K-th update, before each
  optimizer step (all epochs x minibatches), the parameter step is recomputed from a *copy* of the optimizer state
  (per-member grad clipping, fp16 loss scale, Adam moments and step count) four times: under the run's numerics (the
  step actually applied), under the other GELU variant in the same dtype, in fp32 with the same GELU (not in fp32
  runs), and under the run's numerics on a second, disjoint minibatch of the same rollout (the sampling noise
  floor: the next minibatch of the same epoch's permutation). Gradients come from ``torch.autograd.grad`` (never
  ``.grad``), the copies are discarded, and the minibatch order is read from copies of the minibatch RNGs.
* **On-policy snapshots** (``drift.snapshot_every=M``, :class:`OnPolicySnapshots`): every M updates (and for the
  initial policy), N = ``drift.probe_set_size`` raw observations are drawn from the observations the envs returned
  during the member's most recent rollout (for the initial policy: its first rollout, which it collected), with a
  generator seeded by (seed, update) only, so the run's RNGs are untouched. The member's weights and observation
  statistics and these states go to ``<run dir>/drift/snapshot-<update>.pt``; the policy is evaluated on them in
  fp32 with exact GELU (:data:`EVAL_NUMERICS`, no autocast, no perturbation, on CPU) and the record (states source
  "self") goes to snapshots.jsonl. ``python -m esper_exp.drift_eval SWEEP`` later evaluates every run's saved
  weights on its seed's reference-cell states (source "<reference cell>/seed=<k>"), which pairs the cells.
* **Perturbation controls** (``drift.perturb``), each a cell of its own (``<cell>/perturb-<kind>``): ``ulp`` moves
  one initial weight, chosen by the seed, by one float32 ulp; ``large`` adds noise of 1% of each tensor's std to
  every initial weight (a positive control); ``persistent`` adds a zero-mean perturbation of the tanh-vs-exact size
  to every GELU output (esper_exp/numerics.py, ``Numerics.perturb``); ``duplicate`` changes nothing (the
  determinism control: bitwise its base cell).

Why snapshots are evaluated with exact GELU in fp32 for every cell: the drift question is whether the numerics'
differences *compound*, i.e. move the parameters apart. Evaluating every run's parameters under one numerics makes
the distance zero for equal parameters (update 0 of every unperturbed cell) and leaves out the direct,
per-forward effect of GELU variant and dtype, which the applied-update probe measures.

Raw observations: GroupEnvs returns normalised observations, so the recorder wraps the group envs' ``_observe``
(the one place every raw observation passes through, reset and autoreset included) on that instance and copies
what it sees; it raises at once if GroupEnvs no longer has it.
"""

from __future__ import annotations

import copy
import hashlib
import math
import os
from collections import deque
from pathlib import Path

import numpy as np
import torch

from esper_exp.numerics import Numerics

PROBE_SEED_OFFSET = 1_000_003  # the perturbation controls' own stream
SNAPSHOT_SEED = 20261124  # the snapshot states' sampler: default_rng([SNAPSHOT_SEED, seed, update])
SKETCH_DIM = 1024
SKETCH_SEED = 20261122
SCHEMA = 2
PERTURBATIONS = ("none", "ulp", "large", "persistent", "duplicate")
EVAL_NUMERICS = Numerics("exact", "fp32", "cpu")  # every snapshot's evaluation
SNAPSHOT_DIR = "drift"  # <run dir>/drift/snapshot-<update>.pt


# ------------------------------------------------------------------------------------------ perturbations
def perturb(policy: torch.nn.Module, kind: str, seeds: list[int]) -> list[dict | None]:
    """Apply a noise-floor control to freshly initialised parameters, member by member (member k's choice and noise
    come from its own seed); returns what was changed per member. ``persistent`` changes no weight (build_ppo puts
    it into the run's Numerics), ``duplicate`` nothing."""
    if kind not in PERTURBATIONS:
        raise ValueError(f"unknown drift.perturb {kind!r}; allowed: {', '.join(PERTURBATIONS)}")
    if kind == "none":
        return [None] * len(seeds)
    if kind == "persistent":
        return [{"kind": "persistent", "gelu_output": "+ sign(hash(x)) * |gelu_tanh(x) - gelu_exact(x)| at every "
                 "forward (esper_exp/numerics.py gelu_perturbation)"} for _ in seeds]
    if kind == "duplicate":
        return [{"kind": "duplicate", "change": "none (determinism control)"} for _ in seeds]
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


# ------------------------------------------------------------------------------------------ applied-update probe
class AppliedUpdateProbe:
    """The parameter steps of one PPO update under the run's and other numerics, per optimizer step and member.

    ``run_update(on_episode)`` runs ``ppo.run_update`` with the probe hooked in (instance attributes wrapping
    ``PPO.update`` and ``PPO._clipped_grads`` for this call only) and returns (UpdateResult, {member: steps}), steps
    in the schema-2 ``probe.jsonl`` form. ``other_gelu`` / ``fp32`` may be given to override the alternatives (tests:
    the run's own numerics give a difference of exactly 0)."""

    def __init__(self, ppo, other_gelu: Numerics | None = None, fp32: Numerics | None = None):
        if ppo.batch_size // ppo.minibatch_size < 2:
            raise ValueError("drift.probe_every needs ppo.num_minibatches >= 2 (the noise floor is the step on a "
                             "second, disjoint minibatch)")
        self.ppo = ppo
        n = ppo.numerics
        if not isinstance(n, Numerics):
            raise ValueError(f"drift.probe_every needs a group of one GELU x precision cell, this group is {n.label} "
                             "(a sweep mixes cells in a group with hydra.launcher.mix_cells=true: set it false)")
        self.run_numerics = n
        self.other_gelu = other_gelu or n.replace(gelu="tanh" if n.gelu == "exact" else "exact")
        self.fp32 = fp32 or (None if n.precision == "fp32" else n.replace(precision="fp32"))

    # -- hooks
    def run_update(self, on_episode):
        ppo, cls = self.ppo, type(self.ppo)
        self.steps = {k: {"epoch": [], "minibatch": [], "applied_norm": [], "gelu_diff_norm": [],
                          "dtype_diff_norm": [], "noise_diff_norm": []} for k in range(ppo.members)}

        def update(advantages, returns):
            self._begin(advantages, returns)
            return cls.update(ppo, advantages, returns)

        def clipped_grads(mb, stepping):
            self._probe_step(mb, stepping)
            return cls._clipped_grads(ppo, mb, stepping)

        def call(name, fn):  # CUDA-graph path: probe eagerly before each minibatch replay, outside the graph
            if name == "minibatch":
                S = ppo._st
                self._probe_step(S.batch.index(S.idx), S.stepping)
            return cls._call(ppo, name, fn)

        hooks = {"update": update, **({"_call": call} if ppo.cuda_graphs else {"_clipped_grads": clipped_grads})}
        for name, fn in hooks.items():
            setattr(ppo, name, fn)
        try:
            result = ppo.run_update(on_episode)
        finally:
            for name in hooks:
                delattr(ppo, name)
        return result, self.steps

    def _begin(self, advantages: torch.Tensor, returns: torch.Tensor) -> None:
        """The update's batch and minibatch order, as PPO.update forms them (its permutations drawn from copies of
        the minibatch RNGs, so the real draw is untouched)."""
        from esper_exp.ppo import Minibatch

        ppo = self.ppo
        K, B, E = ppo.members, ppo.batch_size, ppo.hp.update_epochs
        b = ppo.buf
        flat = lambda x: x.transpose(0, 1).reshape(K, B, *x.shape[3:])
        self.batch = Minibatch(flat(b.obs), flat(b.actions), flat(b.logprobs), flat(b.values), flat(advantages),
                               flat(returns))
        rngs = [copy.deepcopy(r) for r in ppo.minibatch_rngs]
        self.perms = torch.as_tensor(np.stack([np.stack([rng.permutation(B) for _ in range(E)]) for rng in rngs],
                                              axis=1), device=ppo.device)  # [E, K, B]
        self.calls = 0

    def _minibatch(self, epoch: int, j: int):
        m = self.ppo.minibatch_size
        return self.batch.index(self.perms[epoch][:, j * m:(j + 1) * m])

    def _probe_step(self, mb, stepping: torch.Tensor) -> None:
        ppo = self.ppo
        n_mb = ppo.batch_size // ppo.minibatch_size
        epoch, j = divmod(self.calls, n_mb)
        self.calls += 1
        if epoch >= ppo.hp.update_epochs or not (torch.equal(mb.obs, self._minibatch(epoch, j).obs)
                                                 and torch.equal(mb.advantages, self._minibatch(epoch, j).advantages)):
            raise RuntimeError("applied-update probe: the minibatch does not match PPO.update's order "
                               "(esper_exp/ppo.py changed?)")
        on = stepping.tolist()
        if not any(on):
            return
        run = self.delta(mb, self.run_numerics, on)
        gelu = self.delta(mb, self.other_gelu, on)
        dtype = self.delta(mb, self.fp32, on) if self.fp32 is not None else None
        noise = self.delta(self._minibatch(epoch, (j + 1) % n_mb), self.run_numerics, on)
        norm = lambda t: float(t.double().norm())
        for k in range(ppo.members):
            if not on[k]:
                continue
            s = self.steps[k]
            s["epoch"].append(epoch)
            s["minibatch"].append(j)
            s["applied_norm"].append(norm(run[k]))
            s["gelu_diff_norm"].append(norm(run[k] - gelu[k]))
            s["dtype_diff_norm"].append(None if dtype is None else norm(run[k] - dtype[k]))
            s["noise_diff_norm"].append(norm(run[k] - noise[k]))

    # -- one step from copies
    def delta(self, mb, numerics: Numerics, stepping) -> torch.Tensor:
        """Per member [K, P], the parameter step that PPO would take on ``mb`` at the current parameters and
        optimizer state under ``numerics``: loss (x fp16 loss scale when both the run and ``numerics`` are fp16),
        gradient, unscale, per-member clip, Adam on copies of the moments with the next step count; 0 where the
        gradient is not finite (a scaler-skipped step) or the member does not step. Changes nothing."""
        from esper_exp.ppo import ppo_loss
        from esper_exp.stacked import clip_grad_norm_per_member

        ppo = self.ppo
        flat, opt, scaler = ppo.flat, ppo.optimizer, ppo.scaler
        loss, _ = ppo_loss(ppo.policy.evaluate, mb, ppo.hp, numerics)
        scaled = scaler.enabled and numerics.needs_grad_scaler
        total = (loss * scaler.scale).sum() if scaled else loss.sum()
        g = flat.grads_of(total)
        with torch.no_grad():
            if scaled:
                scaler.unscale_(g)
            gnorm = clip_grad_norm_per_member(g, ppo.hp.max_grad_norm)
            finite = torch.isfinite(loss) & torch.isfinite(gnorm)
            if opt.on_device:
                return _masked_adam_delta(opt, g, finite & torch.as_tensor(stepping, device=g.device))
            ok = finite.tolist()
            out = torch.zeros_like(flat.data)
            for k in range(ppo.members):
                if not (ok[k] and stepping[k]):
                    continue
                rows = slice(k, k + 1)
                data, m, v = flat.data[rows].clone(), opt.exp_avg[rows].clone(), opt.exp_avg_sq[rows].clone()
                step = torch.tensor(float(opt.steps[k] + 1), dtype=torch.float32, device=data.device)
                torch._fused_adam_([data], [g[rows]], [m], [v], [], [step], amsgrad=False, lr=opt.lr[k],
                                   beta1=opt.beta1, beta2=opt.beta2, weight_decay=0.0, eps=opt.eps, maximize=False,
                                   grad_scale=None, found_inf=None)
                out[k] = data[0] - flat.data[k]
        return out


def _masked_adam_delta(opt, g: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """MemberAdam.step_masked's arithmetic (the CUDA-graph path's Adam), on copies: the [K, P] step it would take
    from gradients ``g`` for the members in ``mask`` (0 elsewhere). Same ops on the same shapes as step_masked."""
    f, b1, b2 = opt.flat, opt.beta1, opt.beta2
    step = (opt.step_t + mask.to(opt.step_t.dtype)).clamp(min=1.0)
    step_size = (opt.lr_t / (1.0 - torch.pow(b1, step))).to(f.data.dtype).unsqueeze(1)
    bc2_sqrt = (1.0 - torch.pow(b2, step)).sqrt().to(f.data.dtype).unsqueeze(1)
    exp_avg = opt.exp_avg * b1 + g * (1.0 - b1)
    exp_avg_sq = opt.exp_avg_sq * b2 + g * g * (1.0 - b2)
    new = f.data - step_size * exp_avg / (exp_avg_sq.sqrt() / bc2_sqrt + opt.eps)
    return torch.where(mask.unsqueeze(1), new, f.data) - f.data


def probe_records(ppo, steps: dict, members) -> dict[int, dict]:
    """The schema-2 probe.jsonl record of each member in ``members`` (after the probed update)."""
    return {k: {"schema": SCHEMA, "update": ppo.update_idx[k], "global_step": ppo.global_step[k],
                "steps": steps[k]} for k in members}


# ------------------------------------------------------------------------------------------ snapshots
def param_sketch(tensors: list[torch.Tensor]) -> dict:
    """Count-sketch of the flattened parameters (fixed hash): ||sketch_a - sketch_b|| estimates ||theta_a - theta_b||."""
    flat = torch.cat([t.detach().cpu().reshape(-1).double() for t in tensors])
    gen = torch.Generator().manual_seed(SKETCH_SEED)
    bucket = torch.randint(SKETCH_DIM, (flat.numel(),), generator=gen)
    sign = torch.randint(2, (flat.numel(),), generator=gen).double() * 2 - 1
    sketch = torch.zeros(SKETCH_DIM, dtype=torch.float64).index_add_(0, bucket, flat * sign)
    return {"sketch": sketch.tolist(), "norm": flat.norm().item(), "numel": flat.numel()}


def states_sha(raw: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(raw, dtype=np.float64).tobytes()).hexdigest()[:16]


class RecentObservations:
    """The raw observations a group's envs returned during the last ``num_steps`` env steps (= the most recent
    rollout once a rollout ended), [num_steps, E, obs_dim] float64, autoreset observations in place of the ended
    episodes' last ones (what the policy acts on next). Installed on the envs instance; copies only."""

    def __init__(self, envs, num_steps: int):
        original = getattr(envs, "_observe", None)
        if original is None:
            raise RuntimeError("drift snapshots need GroupEnvs._observe (esper_exp/envs.py) to see raw observations")
        self.envs, self.num_steps = envs, num_steps
        self.history: deque = deque(maxlen=num_steps)

        def observe(raw, rows=None):
            out = original(raw, rows)
            a = np.asarray(raw, dtype=np.float64)
            if rows is None:
                self.history.append(a.reshape(a.shape[0], -1).copy())
            elif self.history:
                self.history[-1][rows] = a.reshape(a.shape[0], -1)
            return out

        envs._observe = observe

    def sample(self, member: int, seed: int, update: int, size: int) -> np.ndarray:
        """``size`` distinct observations of member's last rollout (all of them if it has fewer), drawn by
        default_rng([SNAPSHOT_SEED, seed, update]), in rollout order."""
        if len(self.history) < self.num_steps:
            raise RuntimeError(f"drift snapshot: {len(self.history)} recorded env steps, a rollout has "
                               f"{self.num_steps} (esper_exp/envs.py no longer reports raw observations?)")
        N = self.envs.num_envs
        pool = np.stack(self.history)[:, member * N:(member + 1) * N].reshape(self.num_steps * N, -1)
        rng = np.random.default_rng([SNAPSHOT_SEED, int(seed), int(update)])
        idx = np.sort(rng.choice(pool.shape[0], size=min(size, pool.shape[0]), replace=False))
        return pool[idx]


def scratch_policy(model_cfg, obs_space, action_space):
    """A one-member ActorCritic of the run's architecture on CPU (weights loaded per snapshot), uncompiled."""
    from esper_exp.policy import ActorCritic, obs_dim_of

    with torch.random.fork_rng(devices=[]):
        return ActorCritic(obs_dim_of(obs_space), action_space, [torch.Generator().manual_seed(0)],
                           width=model_cfg["width"], depth=model_cfg["depth"], blueprint=model_cfg["blueprint"],
                           checkpointing=False, blend_cast=model_cfg["blend_cast"]).eval()


def obs_stats(envs, member: int) -> dict:
    """The observation statistics member's policy inputs are normalised with now (its sub-env 0's, as
    GroupEnvs.normalize_obs uses), None without normalisation."""
    if not envs.normalize_obs_on:
        return {"obs_mean": None, "obs_var": None}
    e = member * envs.num_envs
    return {"obs_mean": torch.from_numpy(envs.obs_mean[e].copy()), "obs_var": torch.from_numpy(envs.obs_var[e].copy())}


def normalise(envs, payload: dict, raw: np.ndarray) -> np.ndarray:
    """``raw`` as the payload's policy saw observations: GroupEnvs.normalize_obs with the payload's statistics, on a
    one-member, one-env ``envs`` of the same env config (its statistics are overwritten)."""
    if payload["obs_mean"] is not None:
        envs.obs_mean = payload["obs_mean"].numpy()[None].copy()
        envs.obs_var = payload["obs_var"].numpy()[None].copy()
    return envs.normalize_obs(raw, 0)


def evaluate(policy, payload: dict, obs: np.ndarray, source: str, sha: str) -> dict:
    """The schema-2 snapshots.jsonl record of the payload's weights on the (normalised) states ``obs``."""
    policy.load_member_state(0, payload["policy"])
    x = torch.as_tensor(obs, dtype=torch.float32).unsqueeze(0)
    with torch.no_grad():
        out, value = policy.heads(x, EVAL_NUMERICS)
    rec = {"schema": SCHEMA, "update": int(payload["update"]), "global_step": int(payload["global_step"]),
           "states": {"kind": "on_policy", "source": source, "sha": sha, "n": int(obs.shape[0])},
           "eval": {"gelu": EVAL_NUMERICS.gelu, "precision": EVAL_NUMERICS.precision},
           "discrete": policy.discrete, "actor_out": out[0].tolist(), "value": value[0].tolist(),
           "params": param_sketch([w for _, w in policy.member_params(0)])}
    if not policy.discrete:
        rec["logstd"] = policy.actor_logstd[0].detach().reshape(-1).tolist()
    return rec


def snapshot_path(run_dir: Path, update: int) -> Path:
    return Path(run_dir) / SNAPSHOT_DIR / f"snapshot-{int(update)}.pt"


def save_payload(run_dir: Path, payload: dict) -> Path:
    path = snapshot_path(run_dir, payload["update"])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def load_payload(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


class OnPolicySnapshots:
    """Training-time side of the snapshots: capture a member (weights + observation statistics), then, once a rollout
    of it has ended, draw its states, save ``drift/snapshot-<update>.pt`` and return its "self" record."""

    def __init__(self, ppo, seeds: list[int], size: int, config: dict):
        """``config``: the group's resolved run config (model and env sections are read)."""
        self.ppo, self.seeds, self.size = ppo, list(seeds), size
        self.recent = RecentObservations(ppo.envs, ppo.num_steps)
        self.norm_envs = one_env(config)
        self.policy = scratch_policy(config["model"], self.norm_envs.single_observation_space,
                                     self.norm_envs.single_action_space)

    def capture(self, k: int) -> dict:
        ppo = self.ppo
        return {"update": ppo.update_idx[k], "global_step": ppo.global_step[k], "policy": ppo.policy.member_state(k),
                **obs_stats(ppo.envs, k)}

    def record(self, k: int, run_dir: Path, captured: dict | None = None) -> dict:
        """Member k's snapshot of ``captured`` (default: now) on states of its most recent rollout."""
        payload = dict(captured or self.capture(k))
        raw = self.recent.sample(k, self.seeds[k], payload["update"], self.size)
        payload["states"] = torch.from_numpy(raw)
        payload["states_sha"] = sha = states_sha(raw)
        save_payload(run_dir, payload)
        return evaluate(self.policy, payload, normalise(self.norm_envs, payload, raw), "self", sha)

    def close(self) -> None:
        self.norm_envs.close()


def one_env(config: dict):
    """A one-member, one-env GroupEnvs of a run's env config: its spaces, and normalize_obs with given statistics."""
    from esper_exp.envs import GroupEnvs

    e = config["env"]
    return GroupEnvs(e["id"], [0], 1, config["ppo"]["gamma"], clip_action=e["clip_action"],
                     normalize_obs=e["normalize_obs"], normalize_reward=e["normalize_reward"], clip_obs=e["clip_obs"],
                     clip_reward=e["clip_reward"], max_episode_steps=e["max_episode_steps"],
                     kwargs=dict(e.get("kwargs") or {}))
