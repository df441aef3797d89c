"""PPO (clipped surrogate, GAE) with CleanRL's semantics, for a group of K independent runs ("members").

The member axis is a leading dimension and nothing else changes: one call of :meth:`PPO.run_update` = set each
member's LR and alpha -> collect a rollout of all members -> GAE in fp32 -> epochs of minibatch updates (each member
its own minibatch order, grad-norm clip, Adam step, fp16 loss scale and target-KL stop) -> one metrics record per
member. A single run is a group of one. Members never mix: a member's numbers are the ones it would get alone
(CPU: bitwise, tests hold this; CUDA: up to the batched-GEMM layout, see DESIGN.md).

PPO receives its parts (envs, policy, numerics, alpha schedules, hyper-parameters, member seeds); it does not read
the run config. Where it differs from CleanRL's ppo.py it says so:

* Autoreset is SAME_STEP (see envs.py), and a truncated episode's reward is bootstrapped with
  ``gamma * V(final_obs)`` (CleanRL treats truncation as termination).
* Losses, KL and grad norm are logged as means over the update's minibatches (CleanRL logs the last).
* Randomness comes from explicit per-member streams seeded with the member's seed (actions: a torch.Generator;
  minibatch order: a numpy Generator, permutations for all epochs drawn up front; initial weights: see policy.py),
  so seed k gives the same env seeds, initial weights, action noise and minibatch order in every cell and group.

A member that goes non-finite (loss, or gradient outside fp16's scaler-skipped steps) stops stepping at once; the
update reports it in ``failures`` with the reason, and the other members go on. Flags are read back once per
update (the step mask, which picks Adam's fused calls, is read per minibatch: free on CPU).

CUDA graphs (``cuda_graphs=True``, CUDA only; build_ppo turns it on for CUDA unless ESPER_CUDA_GRAPHS=0): the
rollout step of each env part (observations in from pinned host memory, policy forward + sampling, the rollout buffer
written at a device-held step index, actions out to pinned memory: :meth:`PPO._graph_step`), GAE, and one minibatch
update (loss, backward, unscale, clip, finite checks, failure bookkeeping, Adam, loss-scale update) are each captured
once as a CUDA graph and replayed. Nothing in the
minibatch loop reads the device: the step mask, per-member target-KL stop, fp16 loss scale and Adam step counts stay
device tensors (:meth:`MemberAdam.step_masked`), the minibatch indices come from a static [E, K, B] copy of the
permutations drawn up front as before, and the flags and failure reasons are read once per update as on CPU. Every
path draws a rollout's action noise per member before the rollout (:meth:`ActorCritic.draw_noise`), so the graphed
step replays the eager one. The CPU path (and eager CUDA) runs none of this: ``cuda_graphs=False``.
"""

from __future__ import annotations

import functools
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from types import SimpleNamespace

import numpy as np
import torch

from esper_exp.blend import AlphaSchedule
from esper_exp.envs import GroupEnvs
from esper_exp.numerics import MemberNumerics, Numerics, grad_scaled
from esper_exp.policy import ActorCritic
from esper_exp.stacked import (
    FlatParams,
    MemberAdam,
    MemberGradScaler,
    clip_grad_norm_per_member,
)

STAT_KEYS = ("policy_loss", "value_loss", "entropy", "old_approx_kl", "approx_kl", "clipfrac", "grad_norm")
_KL_ROW = STAT_KEYS.index("approx_kl")


def _stat_rows(parts: dict[str, torch.Tensor], grad_norm: torch.Tensor) -> torch.Tensor:
    """One minibatch's per-member statistics as [len(STAT_KEYS), K] fp32 (accumulated with one op, not one per key)."""
    return torch.stack([(grad_norm if k == "grad_norm" else parts[k]).float() for k in STAT_KEYS])


def bootstrap_truncated(rewards, final_values, gamma: float):
    """Reward of a step whose episode was truncated (time limit), not terminated: r + gamma * V(final_obs).

    The episode did not end in the MDP, only in the rollout, so the value of the state it was cut at
    is folded into the reward; GAE then treats the step as an episode end (no bootstrap across it).
    """
    return rewards + gamma * final_values


def compute_gae(rewards: torch.Tensor, values: torch.Tensor, episode_ends: torch.Tensor, last_value: torch.Tensor,
                gamma: float, gae_lambda: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over a [T, ...] rollout (any trailing shape, e.g. [T, K, N]), in float32.

    ``episode_ends[t]`` is true when the episode ended at step t (terminated or truncated; truncation
    has already been folded into ``rewards`` by :func:`bootstrap_truncated`), so nothing is bootstrapped
    across an episode boundary. ``last_value`` is V(obs after the last step). Returns (advantages, returns).
    """
    rewards, values, last_value = rewards.float(), values.float(), last_value.float()
    nonterminal = 1.0 - episode_ends.float()
    advantages = torch.zeros_like(rewards)
    last_gae = torch.zeros_like(last_value)
    next_value = last_value
    for t in reversed(range(rewards.shape[0])):
        delta = rewards[t] + gamma * next_value * nonterminal[t] - values[t]
        last_gae = delta + gamma * gae_lambda * nonterminal[t] * last_gae
        advantages[t] = last_gae
        next_value = values[t]
    return advantages, advantages + values


def explained_variance(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per member (last dim = samples): 1 - Var(target - pred) / Var(target); NaN where Var(target) = 0."""
    var_y = target.var(dim=-1)
    return torch.where(var_y == 0, torch.full_like(var_y, float("nan")), 1 - (target - pred).var(dim=-1) / var_y)


@dataclass
class Rollout:
    """One rollout of every member: [T, K, N, ...]."""
    obs: torch.Tensor
    actions: torch.Tensor
    logprobs: torch.Tensor
    rewards: torch.Tensor
    episode_ends: torch.Tensor
    values: torch.Tensor

    @classmethod
    def empty(cls, T: int, K: int, N: int, obs_dim: int, action_shape: tuple, device: torch.device) -> Rollout:
        z = lambda *s, dtype=torch.float32: torch.zeros(s, dtype=dtype, device=device)  # noqa: E731
        return cls(z(T, K, N, obs_dim), z(T, K, N, *action_shape), z(T, K, N), z(T, K, N),
                   z(T, K, N, dtype=torch.bool), z(T, K, N))


@dataclass
class Minibatch:
    """Per-member samples: every field is [K, B, ...]."""
    obs: torch.Tensor
    actions: torch.Tensor
    logprobs: torch.Tensor  # at rollout time
    values: torch.Tensor  # at rollout time
    advantages: torch.Tensor
    returns: torch.Tensor

    def index(self, idx: torch.Tensor) -> Minibatch:
        """idx [K, b]: member k takes its own samples idx[k]."""
        rows = _member_rows(idx.shape[0], idx.device)
        return Minibatch(*(getattr(self, f.name)[rows, idx] for f in fields(self)))


class _single_index_writes:
    """Deterministic algorithms off for a block of ``index_copy_`` calls with ONE index each: with no duplicate index
    the plain kernel is deterministic already, and the deterministic variant (index_put_ with a sort) cannot be
    captured in a CUDA graph."""

    def __enter__(self):
        self.was = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
        torch.use_deterministic_algorithms(False)

    def __exit__(self, *exc):
        torch.use_deterministic_algorithms(self.was[0], warn_only=self.was[1])


@functools.cache
def _member_rows(K: int, device: torch.device) -> torch.Tensor:
    return torch.arange(K, device=device).unsqueeze(1)  # [K, 1]: row k picks member k's samples


def ppo_loss(evaluate, mb: Minibatch, p,
             numerics: Numerics | MemberNumerics) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's loss on one minibatch, per member: clipped surrogate + c_v * (clipped) value loss - c_e * entropy.

    ``evaluate(obs, actions, numerics)`` runs the policy under ``numerics``; the loss maths is fp32.
    Returns (loss [K], detached parts [K] each)."""
    newlogprob, entropy, newvalue = evaluate(mb.obs, mb.actions, numerics)
    logratio = newlogprob - mb.logprobs
    ratio = logratio.exp()
    with torch.no_grad():
        parts = {"old_approx_kl": (-logratio).mean(-1), "approx_kl": ((ratio - 1) - logratio).mean(-1),
                 "clipfrac": ((ratio - 1.0).abs() > p.clip_coef).float().mean(-1)}

    adv = mb.advantages
    if p.norm_adv:
        adv = (adv - adv.mean(-1, keepdim=True)) / (adv.std(-1, keepdim=True) + 1e-8)
    pg_loss = torch.max(-adv * ratio, -adv * ratio.clamp(1 - p.clip_coef, 1 + p.clip_coef)).mean(-1)

    if p.clip_vloss:
        v_unclipped = (newvalue - mb.returns).square()
        v_clipped = mb.values + (newvalue - mb.values).clamp(-p.clip_coef, p.clip_coef)
        v_loss = 0.5 * torch.max(v_unclipped, (v_clipped - mb.returns).square()).mean(-1)
    else:
        v_loss = 0.5 * (newvalue - mb.returns).square().mean(-1)
    entropy_loss = entropy.mean(-1)
    loss = pg_loss - p.ent_coef * entropy_loss + p.vf_coef * v_loss
    parts.update(policy_loss=pg_loss.detach(), value_loss=v_loss.detach(), entropy=entropy_loss.detach())
    return loss, parts


def _first_failure(fail: dict, bad: torch.Tensor, epoch, loss, grad_norm, parts) -> dict[str, torch.Tensor]:
    """``fail`` (per-member first-failure record: epoch ``at``, loss, grad norm, loss parts) with the members that
    newly went bad this minibatch filled in; members that failed earlier keep their first record."""
    first = bad & (fail["at"] < 0)
    out = {"at": torch.where(first, epoch, fail["at"])}
    for key, v in (("loss", loss.detach()), ("grad_norm", grad_norm),
                   *((k, parts[k]) for k in ("policy_loss", "value_loss", "entropy"))):
        out[key] = torch.where(first, v.float(), fail[key])
    return out


@dataclass
class UpdateResult:
    records: dict[int, dict] = field(default_factory=dict)  # member -> metrics record of the update it completed
    failures: dict[int, str] = field(default_factory=dict)  # member -> why it stopped (non-finite), this update


class PPO:
    """Everything a group's PPO state consists of; :meth:`run_update` runs one iteration for every live member."""

    def __init__(self, envs: GroupEnvs, policy: ActorCritic, numerics: Numerics | MemberNumerics,
                 alphas: Sequence[AlphaSchedule], hp, seeds: Sequence[int], device: torch.device, cuda_graphs: bool = False):
        if cuda_graphs and torch.device(device).type != "cuda":
            raise ValueError(f"cuda_graphs needs a CUDA device, not {device}")
        self.envs, self.policy, self.numerics, self.hp, self.device = envs, policy, numerics, hp, device
        self.seeds = list(seeds)
        self.members = K = len(self.seeds)
        if not (envs.num_members == policy.members == len(alphas) == K):
            raise ValueError(f"group parts disagree: {envs.num_members} env members, {policy.members} policy members, "
                             f"{len(alphas)} alpha schedules, {K} seeds")
        self.alphas = list(alphas)
        self.num_envs, self.num_steps = envs.num_envs, hp.num_steps
        self.batch_size = self.num_envs * self.num_steps
        self.minibatch_size = self.batch_size // hp.num_minibatches
        self.num_updates = hp.total_timesteps // self.batch_size
        self.obs_dim = envs.obs_dim
        self.action_shape = envs.single_action_space.shape
        self.flat = FlatParams(policy, K)  # all members' parameters and gradients in one [K, P] buffer each
        self.cuda_graphs = cuda_graphs
        self.graph_capture = True  # False: the CUDA-graph path's code run eagerly, uncaptured (checks)
        self._graphs: dict[str, tuple] = {}
        self.optimizer = MemberAdam(self.flat, lr=hp.learning_rate, eps=hp.adam_eps, on_device=cuda_graphs)
        self.scaler = MemberGradScaler(K, device, enabled=grad_scaled(numerics, K))
        self.action_rngs = [torch.Generator(device=device).manual_seed(s) for s in self.seeds]
        self.minibatch_rngs = [np.random.default_rng(s) for s in self.seeds]
        self.update_idx = [0] * K
        self.global_step = [0] * K
        self.nonfinite_grad_steps = [0] * K
        self.live = [True] * K  # false once a member failed or finished: it no longer steps, logs or counts
        self.next_obs = torch.as_tensor(envs.reset(), dtype=torch.float32, device=device)
        self.buf = Rollout.empty(self.num_steps, K, self.num_envs, self.obs_dim, self.action_shape, device)
        if cuda_graphs:
            self._init_static()

    @property
    def live_mask(self) -> torch.Tensor:
        return torch.tensor(self.live, device=self.device)

    def finish(self, k: int) -> None:
        """Member k is done (completed or failed): it stops stepping and logging; its slot keeps computing."""
        self.live[k] = False

    # ---------------------------------------------------------------- rollout
    def collect_rollout(self, on_episode: Callable[[int, int, float, int, int], None], timers: dict) -> None:
        """``on_episode(member, global_step, return, length, env_index)`` for every episode a live member ends."""
        buf, N = self.buf, self.num_envs
        shape = (self.num_steps, self.members, N)
        rewards = np.zeros(shape, dtype=np.float32)
        episode_ends = np.zeros(shape, dtype=bool)
        dead = ~np.array(self.live)
        t0 = time.perf_counter()  # the whole rollout's action noise, per member, before it (ActorCritic.draw_noise)
        noise = self.policy.draw_noise(self.action_rngs, self.num_steps, N, self.device)
        timers["inference"] += time.perf_counter() - t0
        if self.cuda_graphs:
            self._start_graphed_rollout(noise)
            self._rollout_steps(buf, noise, rewards, episode_ends, dead, on_episode, timers)
            for (a, b), st in zip(self.envs.parts, self._st_parts):
                self.next_obs[a:b].copy_(st.obs_host)
        else:  # eager: no autograd bookkeeping at all, and the policy's stacked heads built once per rollout
            with torch.inference_mode(), self.policy.frozen():
                self._rollout_steps(buf, noise, rewards, episode_ends, dead, on_episode, timers)
        buf.rewards.copy_(torch.from_numpy(rewards))
        buf.episode_ends.copy_(torch.from_numpy(episode_ends))

    def _rollout_steps(self, buf, noise, rewards, episode_ends, dead, on_episode, timers) -> None:
        """The rollout's T steps: act, step the envs, bootstrap truncations, record episodes.

        Pipelined over the envs' parts (``envs.parts``: a mixed group's precision segments, where each has its own
        env workers): part i's actions for step t + 1 are computed and sent while the other parts' envs step, so
        env stepping overlaps with the policy; and step t's bookkeeping is done while step t + 1's actions are being
        computed (the graph path launches them first). One part (every other group) is the plain loop: act, step,
        record. A member's numbers do not depend on it (each part is a whole policy segment; the envs are per member;
        the bookkeeping reads no policy output)."""
        T, parts, K = self.num_steps, self.envs.parts, self.members
        # per part, views of everything a step reads or writes (the whole tensors when one part holds every member,
        # so the plain loop pays nothing for the parts)
        views = []
        for a, b in parts:
            sl = slice(None) if (a, b) == (0, K) else slice(a, b)
            views.append(SimpleNamespace(
                members=(a, b), next_obs=self.next_obs[sl], obs=buf.obs[:, sl], actions=buf.actions[:, sl],
                logprobs=buf.logprobs[:, sl], values=buf.values[:, sl], noise=noise[:, sl], rewards=rewards[:, sl],
                episode_ends=episode_ends[:, sl], dead=dead[sl] if dead[sl].any() else None))
        for i in range(len(parts)):
            self._send(i, views[i], self._act(i, 0, views[i], timers), timers)
        for t in range(T):
            for i in range(len(parts)):
                step = self._receive(i, views[i], timers)
                if t + 1 < T:
                    action = self._act(i, t + 1, views[i], timers)
                self._record(i, t, views[i], step, on_episode, timers)
                if t + 1 < T:
                    self._send(i, views[i], action, timers)

    def _act(self, i: int, t: int, v: SimpleNamespace, timers: dict):
        """Part i's actions at step t (from its next observations), into the rollout buffer. The graph path only
        launches its step graph (:meth:`_send` waits for it) and returns None; the eager one returns the actions."""
        t0 = time.perf_counter()
        if self.cuda_graphs:  # one graph: obs in from pinned memory, act, buffers written at step t, actions out
            self._call(f"step{i}", functools.partial(self._graph_step, i))
            action = None
        else:
            obs = v.next_obs
            v.obs[t] = obs
            action, logprob, value = self.policy.act(obs, self.numerics, v.noise[t], members=v.members)
            v.actions[t], v.logprobs[t], v.values[t] = action, logprob, value
        timers["inference"] += time.perf_counter() - t0
        return action

    def _send(self, i: int, v: SimpleNamespace, action: torch.Tensor | None, timers: dict) -> None:
        """Part i's actions (from :meth:`_act`) off to its envs."""
        t0 = time.perf_counter()
        if action is None:  # the step graph's: in pinned memory once the graph is done
            if self.device.type == "cuda":
                torch.cuda.current_stream(self.device).synchronize()
            action_np = self._st_parts[i].act_np
        else:
            action_np = action.cpu().numpy()
        if v.dead is not None:  # a failed member's actions may be NaN; its envs only idle along
            action_np[v.dead] = 0
        self.envs.step_async(action_np, i)
        timers["inference"] += time.perf_counter() - t0

    def _receive(self, i: int, v: SimpleNamespace, timers: dict):
        """Part i's env step: the envs' results, and its next observations where the next :meth:`_act` reads them."""
        t0 = time.perf_counter()
        step = self.envs.step_wait(i)
        t1 = time.perf_counter()
        if self.cuda_graphs:  # the next step's graph copies it in (next_obs is set after the rollout)
            np.copyto(self._st_parts[i].obs_np, step.obs, casting="same_kind")
        else:
            v.next_obs.copy_(torch.from_numpy(step.obs.astype(np.float32)))
        timers["env"] += t1 - t0
        timers["inference"] += time.perf_counter() - t1
        return step

    def _record(self, i: int, t: int, v: SimpleNamespace, step, on_episode, timers: dict) -> None:
        """Part i's env step t into the rollout: rewards (truncations bootstrapped), episode ends, step counts,
        episodes."""
        t0 = time.perf_counter()
        a, b = v.members
        N = self.num_envs
        v.rewards[t] = step.reward
        v.episode_ends[t] = step.terminated | step.truncated
        # time-limit truncation is not termination: bootstrap from the value of the final observation
        cut = step.truncated & ~step.terminated
        if cut.any():
            final = torch.as_tensor(step.final_obs, dtype=torch.float32, device=self.device)
            with torch.no_grad():
                final_values = self.policy.value(final, self.numerics, members=v.members).cpu().numpy()
            v.rewards[t][cut] = bootstrap_truncated(v.rewards[t][cut], final_values[cut], self.hp.gamma)
        for k in range(a, b):
            if self.live[k]:
                self.global_step[k] += N
        for k, env_index, ret, length in step.episodes:
            if self.live[k]:
                on_episode(k, self.global_step[k], ret, length, env_index)
        timers["inference"] += time.perf_counter() - t0

    # ---------------------------------------------------------------- update
    def _clipped_grads(self, mb: Minibatch, stepping: torch.Tensor):
        """One minibatch's loss and per-member clipped gradients (in ``flat.grad``), and which stepping members went
        non-finite (``bad``: they fail) or overflowed (fp16 only: that member skips the step and lowers its scale).
        Shared by the host loop and the CUDA-graph step: no host read."""
        loss, parts = ppo_loss(self.policy.evaluate, mb, self.hp, self.numerics)
        self.optimizer.zero_grad()
        self.scaler.scale_loss(loss).backward()
        self.flat.gather_grads()
        self.scaler.unscale_(self.flat.grad)
        grad_norm = clip_grad_norm_per_member(self.flat.grad, self.hp.max_grad_norm)
        finite_loss, finite_grad = torch.isfinite(loss), torch.isfinite(grad_norm)
        if self.scaler.enabled:  # a loss-scaled (fp16) member skips a step with non-finite gradients; others fail
            scaled = self.scaler.scaled
            bad = stepping & ~(finite_loss & (finite_grad | scaled))
            overflow = stepping & scaled & finite_loss & ~finite_grad
        else:
            bad, overflow = stepping & ~(finite_loss & finite_grad), torch.zeros_like(stepping)
        return loss, parts, grad_norm, bad, overflow

    def update(self, advantages: torch.Tensor, returns: torch.Tensor) -> tuple[dict, dict]:
        """Epochs of clipped-surrogate minibatch updates for every live member.

        Returns (per-member stats as [K] tensors, per-member failure info as [K] tensors)."""
        if self.cuda_graphs:
            return self._update_graphed(advantages, returns)
        p, b, K, B = self.hp, self.buf, self.members, self.batch_size
        flat = lambda x: x.transpose(0, 1).reshape(K, B, *x.shape[3:])  # noqa: E731  [T,K,N,...] -> [K,T*N,...]
        batch = Minibatch(flat(b.obs), flat(b.actions), flat(b.logprobs), flat(b.values), flat(advantages),
                          flat(returns))
        # every epoch's permutation is drawn up front: the stream is the same whether or not target_kl stops early
        perms = torch.as_tensor(np.stack([np.stack([rng.permutation(B) for _ in range(p.update_epochs)])
                                          for rng in self.minibatch_rngs], axis=1), device=self.device)  # [E, K, B]
        n_mb = B // self.minibatch_size
        z = lambda dtype=torch.float32: torch.zeros(K, dtype=dtype, device=self.device)  # noqa: E731
        sums = torch.zeros(len(STAT_KEYS), K, device=self.device)  # one row per STAT_KEYS entry
        counts, epochs_run, skipped = z(), z(), z(torch.long)
        stepping = self.live_mask  # members that still step in this update (target-KL stop and failures clear it)
        fail = {"at": torch.full((K,), -1, dtype=torch.long, device=self.device), "loss": z(), "grad_norm": z(),
                "policy_loss": z(), "value_loss": z(), "entropy": z()}
        for epoch in range(p.update_epochs):
            epochs_run += stepping
            kl_sum = z()
            for j in range(n_mb):
                mb = batch.index(perms[epoch][:, j * self.minibatch_size:(j + 1) * self.minibatch_size])
                loss, parts, grad_norm, bad, overflow = self._clipped_grads(mb, stepping)
                if bad.any():  # a host read, free on CPU (this loop reads the step mask anyway)
                    fail.update(_first_failure(fail, bad, epoch, loss, grad_norm, parts))
                    stepping = stepping & ~bad
                do_step = stepping & ~overflow
                self.optimizer.step(do_step.tolist())
                self.scaler.update(found_inf=overflow, stepped=do_step)
                skipped += overflow
                kept = torch.where(stepping, _stat_rows(parts, grad_norm), 0.0)
                sums += kept
                counts += stepping
                kl_sum += kept[_KL_ROW]
            if p.target_kl is not None:
                stepping = stepping & ~(kl_sum / n_mb > p.target_kl)
        stats = dict(zip(STAT_KEYS, sums / counts))
        stats["epochs"] = epochs_run
        stats["explained_variance"] = explained_variance(batch.values, batch.returns)
        stats["skipped_steps"] = skipped
        return stats, fail

    # ---------------------------------------------------------------- loop
    def run_update(self, on_episode) -> UpdateResult:
        """One PPO iteration for every live member: LR anneal, alpha, rollout, GAE, update.

        Returns each live member's metrics record, or its failure reason if it went non-finite. (The drift probe hooks
        into :meth:`update` and the minibatch step from outside: esper_exp/probe.py.)"""
        p = self.hp
        timers = {"env": 0.0, "inference": 0.0}
        live = [k for k in range(self.members) if self.live[k]]
        lr = [(1.0 - self.update_idx[k] / self.num_updates) * p.learning_rate if p.anneal_lr else p.learning_rate
              for k in range(self.members)]
        self.optimizer.set_lr(lr)
        alpha = [self.alphas[k](self.update_idx[k]) for k in range(self.members)]
        self.policy.set_alpha(alpha)

        self.collect_rollout(on_episode, timers)
        t0 = time.perf_counter()
        with torch.no_grad():
            last_value = self.policy.value(self.next_obs, self.numerics)
        if self.cuda_graphs:
            self._st.last_value.copy_(last_value)
            advantages, returns = self._call("gae", self._gae)
            self._sync()  # graphed work is asynchronous: keep the time split honest
        else:
            advantages, returns = compute_gae(self.buf.rewards, self.buf.values, self.buf.episode_ends, last_value,
                                              p.gamma, p.gae_lambda)
        timers["inference"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        stats, fail = self.update(advantages, returns)
        if self.cuda_graphs:
            self._sync()
        timers["update"] = time.perf_counter() - t0

        stats = {k: v.tolist() for k, v in stats.items()}  # the one read-back of the update
        fail = {k: v.tolist() for k, v in fail.items()}
        scale = self.scaler.scale.tolist() if self.scaler.enabled else None
        result = UpdateResult()
        for k in live:
            self.update_idx[k] += 1
            if fail["at"][k] >= 0:
                what = (f"non-finite loss ({fail['loss'][k]})" if not np.isfinite(fail["loss"][k])
                        else f"non-finite gradient norm ({fail['grad_norm'][k]})")
                result.failures[k] = (f"{what} at update {self.update_idx[k]}, epoch {fail['at'][k] + 1}: " +
                                      ", ".join(f"{n}={fail[n][k]}" for n in ("policy_loss", "value_loss", "entropy")))
                self.finish(k)
                continue
            self.nonfinite_grad_steps[k] += int(stats["skipped_steps"][k])
            record = {"global_step": self.global_step[k], "update": self.update_idx[k], "alpha": alpha[k],
                      "lr": lr[k], **{s: stats[s][k] for s in STAT_KEYS}, "epochs": int(stats["epochs"][k]),
                      "explained_variance": stats["explained_variance"][k],
                      "nonfinite_grad_steps": self.nonfinite_grad_steps[k],
                      "time_env": timers["env"], "time_inference": timers["inference"],
                      "time_update": timers["update"]}
            if scale is not None and self.scaler.scaled_members[k]:
                record["loss_scale"] = scale[k]
            result.records[k] = record
        return result

    # ---------------------------------------------------------------- CUDA graphs
    def _init_static(self) -> None:
        """The tensors the captured graphs read and write: their addresses must not change between replays."""
        K, N, B, E = self.members, self.num_envs, self.batch_size, self.hp.update_epochs
        mbs, dev = self.minibatch_size, self.device
        z = lambda *shape, dtype=torch.float32: torch.zeros(shape, dtype=dtype, device=dev)  # noqa: E731
        a = self.action_shape
        pin = dev.type == "cuda"
        host = lambda *shape, dtype=torch.float32: torch.zeros(shape, dtype=dtype, pin_memory=pin)  # noqa: E731
        self._st_parts = []  # per part: the rollout step's graph's host-side input and output, its device step index
        for lo, hi in self.envs.parts:
            obs_host = host(hi - lo, N, self.obs_dim)
            act_host = host(hi - lo, N, *a, dtype=torch.long if self.policy.discrete else torch.float32)
            self._st_parts.append(SimpleNamespace(obs=z(hi - lo, N, self.obs_dim), obs_host=obs_host,
                                                  obs_np=obs_host.numpy(), act_host=act_host, act_np=act_host.numpy(),
                                                  t=z(1, dtype=torch.long)))
        self._st = SimpleNamespace(
            noise=z(self.num_steps, K, N, *(a if a else (1,))), last_value=z(K, N),
            batch=Minibatch(z(K, B, self.obs_dim), z(K, B, *a), z(K, B), z(K, B), z(K, B), z(K, B)),
            perms=z(E, K, B, dtype=torch.long), idx=z(K, mbs, dtype=torch.long), epoch=z(dtype=torch.long),
            stepping=z(K, dtype=torch.bool), sums=z(len(STAT_KEYS), K), counts=z(K), kl_sum=z(K),
            epochs_run=z(K), skipped=z(K, dtype=torch.long),
            fail={"at": z(K, dtype=torch.long), **{k: z(K) for k in ("loss", "grad_norm", "policy_loss",
                                                                     "value_loss", "entropy")}})

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _call(self, name: str, fn: Callable):
        """``fn()`` as a CUDA graph: captured on the first call (after two warm-up runs on a side stream, whose effects
        the caller makes harmless), replayed afterwards; returns the graph's static outputs. ``graph_capture`` off:
        ``fn()`` eagerly."""
        if not self.graph_capture:
            return fn()
        if name not in self._graphs:
            self._capture(name, fn)
        graph, out = self._graphs[name]
        graph.replay()
        return out

    def _capture(self, name: str, fn: Callable) -> None:
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(2):
                fn()
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = fn()
        self._graphs[name] = (graph, out)

    def _start_graphed_rollout(self, noise: torch.Tensor) -> None:
        """Before a graphed rollout: its noise and first observations into the static inputs, the step graphs
        captured (first rollout), every part's step index at 0."""
        self._st.noise.copy_(noise)
        for (a, b), st in zip(self.envs.parts, self._st_parts):
            st.obs_host.copy_(self.next_obs[a:b])
        if self.graph_capture:
            for i in range(len(self._st_parts)):
                if f"step{i}" not in self._graphs:  # the warm-up runs write steps 0-1 and move t: both undone below
                    self._capture(f"step{i}", functools.partial(self._graph_step, i))
        for st in self._st_parts:
            st.t.zero_()

    def _graph_step(self, i: int) -> None:
        """Part i's rollout step t (t: a device index, advanced here), all on the device: observations copied in from
        pinned host memory, the policy's act, obs / action / log-prob / value written into the rollout buffer at t,
        the actions copied out to pinned host memory. The eager loop's step, with no host work but one replay."""
        st, (a, b), buf = self._st_parts[i], self.envs.parts[i], self.buf
        st.obs.copy_(st.obs_host, non_blocking=True)
        noise = self._st.noise[:, a:b].index_select(0, st.t).squeeze(0)
        with torch.no_grad():
            action, logprob, value = self.policy.act(st.obs, self.numerics, noise, members=(a, b))
        if action.dtype != st.act_host.dtype:
            raise TypeError(f"the policy's actions are {action.dtype}, the step graph's output {st.act_host.dtype}")
        with _single_index_writes():
            for dst, src in ((buf.obs, st.obs), (buf.actions, action), (buf.logprobs, logprob), (buf.values, value)):
                dst[:, a:b].index_copy_(0, st.t, src.unsqueeze(0).to(dst.dtype))
        st.act_host.copy_(action, non_blocking=True)
        st.t.add_(1)

    def _gae(self):
        b, p = self.buf, self.hp
        return compute_gae(b.rewards, b.values, b.episode_ends, self._st.last_value, p.gamma, p.gae_lambda)

    def _minibatch_step(self) -> None:
        """One minibatch update of every stepping member on the static tensors: what :meth:`update`'s loop body does
        on CPU, with every flag kept on the device and written in place."""
        S = self._st
        mb = S.batch.index(S.idx)
        stepping = S.stepping
        loss, parts, grad_norm, bad, overflow = self._clipped_grads(mb, stepping)
        for key, v in _first_failure(S.fail, bad, S.epoch, loss, grad_norm, parts).items():
            S.fail[key].copy_(v)
        stepping = stepping & ~bad
        S.stepping.copy_(stepping)
        do_step = stepping & ~overflow
        self.optimizer.step_masked(do_step)
        self.scaler.update(found_inf=overflow, stepped=do_step)
        S.skipped.add_(overflow)
        kept = torch.where(stepping, _stat_rows(parts, grad_norm), 0.0)
        S.sums.add_(kept)
        S.counts.add_(stepping)
        S.kl_sum.add_(kept[_KL_ROW])

    def _update_graphed(self, advantages: torch.Tensor, returns: torch.Tensor) -> tuple[dict, dict]:
        """:meth:`update` on CUDA with the minibatch step as one graph and no host read inside the loop."""
        p, b, K, B, S = self.hp, self.buf, self.members, self.batch_size, self._st
        mbs, n_mb = self.minibatch_size, self.batch_size // self.minibatch_size
        flat = lambda x: x.transpose(0, 1).reshape(K, B, *x.shape[3:])  # noqa: E731  [T,K,N,...] -> [K,T*N,...]
        for f, src in zip(fields(Minibatch), (b.obs, b.actions, b.logprobs, b.values, advantages, returns)):
            getattr(S.batch, f.name).copy_(flat(src))
        S.perms.copy_(torch.as_tensor(np.stack([np.stack([rng.permutation(B) for _ in range(p.update_epochs)])
                                                for rng in self.minibatch_rngs], axis=1)))  # [E, K, B], as update()
        if self.graph_capture and "minibatch" not in self._graphs:
            # warm-up runs and capture with no member stepping: parameters, moments, steps, scales are left as
            # they are (every write is masked); the sums and flags are reset below
            S.stepping.zero_()
            S.idx.copy_(S.perms[0][:, :mbs])
            self._capture("minibatch", self._minibatch_step)
        for t in (S.sums, S.counts, S.epochs_run, S.skipped, *S.fail.values()):
            t.zero_()
        S.fail["at"].fill_(-1)
        S.stepping.copy_(self.live_mask)
        for epoch in range(p.update_epochs):
            S.epochs_run.add_(S.stepping)
            S.kl_sum.zero_()
            S.epoch.fill_(epoch)
            for j in range(n_mb):
                S.idx.copy_(S.perms[epoch][:, j * mbs:(j + 1) * mbs])
                self._call("minibatch", self._minibatch_step)
            if p.target_kl is not None:
                S.stepping &= ~(S.kl_sum / n_mb > p.target_kl)
        stats = dict(zip(STAT_KEYS, S.sums / S.counts))
        stats["epochs"] = S.epochs_run.clone()
        stats["explained_variance"] = explained_variance(S.batch.values, S.batch.returns)
        stats["skipped_steps"] = S.skipped.clone()
        return stats, {k: v.clone() for k, v in S.fail.items()}

    def done(self, k: int) -> bool:
        return self.update_idx[k] >= self.num_updates

    # ---------------------------------------------------------------- checkpoint
    def member_state(self, k: int) -> dict:
        """Everything member k's next update depends on, taken at an update boundary."""
        return {
            "update_idx": self.update_idx[k], "global_step": self.global_step[k],
            "nonfinite_grad_steps": self.nonfinite_grad_steps[k],
            "alpha": self.alphas[k](self.update_idx[k]),  # informational: the schedule is a function of update_idx
            "policy": self.policy.member_state(k), "optimizer": self.optimizer.state_dict(k),
            "scaler": self.scaler.state_dict(k), "next_obs": self.next_obs[k].cpu().clone(),
            "action_rng": self.action_rngs[k].get_state(), "minibatch_rng": self.minibatch_rngs[k].bit_generator.state,
            "envs": self.envs.state_dict(k),
        }

    def load_member_state(self, k: int, state: dict) -> None:
        self.update_idx[k], self.global_step[k] = state["update_idx"], state["global_step"]
        self.nonfinite_grad_steps[k] = state["nonfinite_grad_steps"]
        self.policy.load_member_state(k, state["policy"])
        self.flat.pull()
        self.optimizer.load_state_dict(k, state["optimizer"])
        self.scaler.load_state_dict(k, state["scaler"])
        self.next_obs[k] = state["next_obs"].to(self.device)
        self.action_rngs[k].set_state(state["action_rng"])
        self.minibatch_rngs[k].bit_generator.state = state["minibatch_rng"]
        self.envs.load_state_dict(k, state["envs"])

    def close(self) -> None:
        self.envs.close()


class EpisodeWindow:
    """The last ``n`` episode returns (for progress and per-update summaries)."""

    def __init__(self, n: int = 100):
        self.returns: deque[float] = deque(maxlen=n)

    def add(self, ret: float) -> None:
        self.returns.append(ret)

    def mean(self) -> float:
        return float(np.mean(self.returns)) if self.returns else float("nan")
