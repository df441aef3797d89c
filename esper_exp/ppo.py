"""PPO (clipped surrogate, GAE) with CleanRL's semantics, written so the loop reads like the algorithm.

One call of :meth:`PPO.train` = for each update: set LR and alpha -> collect a rollout under autocast
-> GAE in fp32 -> K epochs of minibatch updates (autocast forward, GradScaler for fp16, fp32 master
weights) -> one metrics record. Where this differs from CleanRL's ppo.py it says so:

* Autoreset is SAME_STEP (see envs.py), and a truncated episode's reward is bootstrapped with
  ``gamma * V(final_obs)`` (CleanRL treats truncation as termination).
* Losses, KL and grad norm are logged as means over the update's minibatches (CleanRL logs the last).
* Randomness comes from explicit streams (init: torch global RNG; actions: a torch.Generator;
  minibatch order: a numpy Generator, permutations for all epochs drawn up front), so seed k gives
  the same env seeds, initial weights, action noise and minibatch order in every GELU x precision cell.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from esper_exp.blend import AlphaSchedule
from esper_exp.envs import VectorEnv
from esper_exp.policy import ActorCritic, obs_dim_of
from esper_exp.precision import Precision
from esper_exp.probe import perturb, shadow_probe


class NonFiniteError(RuntimeError):
    """A loss or gradient became NaN/inf: the run stops with status 'failed'."""


def bootstrap_truncated(rewards, final_values, gamma: float):
    """Reward of a step whose episode was truncated (time limit), not terminated: r + gamma * V(final_obs).

    The episode did not end in the MDP, only in the rollout, so the value of the state it was cut at
    is folded into the reward; GAE then treats the step as an episode end (no bootstrap across it).
    """
    return rewards + gamma * final_values


def compute_gae(rewards: torch.Tensor, values: torch.Tensor, episode_ends: torch.Tensor, last_value: torch.Tensor,
                gamma: float, gae_lambda: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over a [T, N] rollout, in float32.

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


def explained_variance(pred: torch.Tensor, target: torch.Tensor) -> float:
    var_y = target.var()
    return float("nan") if var_y == 0 else float(1 - (target - pred).var() / var_y)


@dataclass
class Rollout:
    obs: torch.Tensor
    actions: torch.Tensor
    logprobs: torch.Tensor
    rewards: torch.Tensor
    episode_ends: torch.Tensor
    values: torch.Tensor

    @classmethod
    def empty(cls, T: int, N: int, obs_dim: int, action_shape: tuple, device: torch.device) -> Rollout:
        z = lambda *s, dtype=torch.float32: torch.zeros(s, dtype=dtype, device=device)  # noqa: E731
        return cls(z(T, N, obs_dim), z(T, N, *action_shape), z(T, N), z(T, N), z(T, N, dtype=torch.bool), z(T, N))


@dataclass
class Minibatch:
    obs: torch.Tensor
    actions: torch.Tensor
    logprobs: torch.Tensor  # at rollout time
    values: torch.Tensor  # at rollout time
    advantages: torch.Tensor
    returns: torch.Tensor

    def index(self, idx: torch.Tensor) -> Minibatch:
        return Minibatch(*(getattr(self, f)[idx] for f in self.__dataclass_fields__))


def ppo_loss(evaluate, mb: Minibatch, p) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's loss on one minibatch: clipped surrogate + c_v * (clipped) value loss - c_e * entropy.

    Runs under whatever numerics the caller sets (autocast, GELU variant). Returns (loss, detached parts)."""
    newlogprob, entropy, newvalue = evaluate(mb.obs, mb.actions)
    logratio = newlogprob - mb.logprobs
    ratio = logratio.exp()
    with torch.no_grad():
        parts = {"old_approx_kl": (-logratio).mean(), "approx_kl": ((ratio - 1) - logratio).mean(),
                 "clipfrac": ((ratio - 1.0).abs() > p.clip_coef).float().mean()}

    adv = mb.advantages
    if p.norm_adv:
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    pg_loss = torch.max(-adv * ratio, -adv * ratio.clamp(1 - p.clip_coef, 1 + p.clip_coef)).mean()

    if p.clip_vloss:
        v_unclipped = (newvalue - mb.returns).square()
        v_clipped = mb.values + (newvalue - mb.values).clamp(-p.clip_coef, p.clip_coef)
        v_loss = 0.5 * torch.max(v_unclipped, (v_clipped - mb.returns).square()).mean()
    else:
        v_loss = 0.5 * (newvalue - mb.returns).square().mean()
    entropy_loss = entropy.mean()
    loss = pg_loss - p.ent_coef * entropy_loss + p.vf_coef * v_loss
    parts.update(policy_loss=pg_loss.detach(), value_loss=v_loss.detach(), entropy=entropy_loss.detach())
    return loss, parts


class PPO:
    """Holds everything a run's PPO state consists of; ``train`` runs the loop."""

    def __init__(self, cfg, device: torch.device):
        self.cfg, self.device = cfg, device
        p, m = cfg.ppo, cfg.model
        self.num_envs, self.num_steps = cfg.env.num_envs, p.num_steps
        self.batch_size = self.num_envs * self.num_steps
        self.minibatch_size = self.batch_size // p.num_minibatches
        self.num_updates = p.total_timesteps // self.batch_size
        self.precision = Precision(cfg.precision.name, device.type)

        e = cfg.env
        self.envs = VectorEnv(e.id, e.num_envs, p.gamma, clip_action=e.clip_action, normalize_obs=e.normalize_obs,
                              normalize_reward=e.normalize_reward, clip_obs=e.clip_obs, clip_reward=e.clip_reward,
                              max_episode_steps=e.max_episode_steps, kwargs=dict(e.kwargs))
        self.obs_dim = obs_dim_of(self.envs.single_observation_space)
        self.action_shape = self.envs.single_action_space.shape
        self.policy = ActorCritic(self.obs_dim, self.envs.single_action_space, width=m.width, depth=m.depth,
                                  blueprint=m.blueprint, gelu=m.gelu, checkpointing=m.checkpointing,
                                  blend_cast=m.blend_cast).to(device)
        self.perturbation = perturb(self.policy, cfg.drift.perturb, cfg.seed)
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=p.learning_rate, eps=p.adam_eps, fused=True)
        self.scaler = self.precision.grad_scaler()
        self.alpha = AlphaSchedule(**m.alpha)
        self.action_rng = torch.Generator(device=device).manual_seed(cfg.seed)
        self.minibatch_rng = np.random.default_rng(cfg.seed)
        self.act, self.evaluate, self.value = self.policy.act, self.policy.evaluate, self.policy.value
        if m.compile:
            self.act, self.evaluate, self.value = (torch.compile(f) for f in (self.act, self.evaluate, self.value))
        self.update_idx = 0
        self.global_step = 0
        self.nonfinite_grad_steps = 0
        self.next_obs = torch.as_tensor(self.envs.reset(cfg.seed), dtype=torch.float32, device=device)
        self.buf = Rollout.empty(self.num_steps, self.num_envs, self.obs_dim, self.action_shape, device)

    # ---------------------------------------------------------------- rollout
    def collect_rollout(self, on_episode: Callable[[int, float, int, int], None], timers: dict) -> None:
        buf, gamma = self.buf, self.cfg.ppo.gamma
        rewards = np.zeros((self.num_steps, self.num_envs), dtype=np.float32)
        episode_ends = np.zeros((self.num_steps, self.num_envs), dtype=bool)
        for t in range(self.num_steps):
            t0 = time.perf_counter()
            buf.obs[t] = self.next_obs
            with torch.no_grad(), self.precision.autocast():
                action, logprob, value = self.act(self.next_obs, self.action_rng)
            buf.actions[t], buf.logprobs[t], buf.values[t] = action, logprob, value
            action_np = action.cpu().numpy()
            t1 = time.perf_counter()
            step = self.envs.step(action_np)
            t2 = time.perf_counter()
            self.global_step += self.num_envs
            rewards[t] = step.reward
            episode_ends[t] = step.terminated | step.truncated
            # time-limit truncation is not termination: bootstrap from the value of the final observation
            cut = [i for i in step.final_obs if step.truncated[i] and not step.terminated[i]]
            if cut:
                final = torch.as_tensor(np.stack([step.final_obs[i] for i in cut]), dtype=torch.float32,
                                        device=self.device)
                with torch.no_grad(), self.precision.autocast():
                    final_values = self.value(final).cpu().numpy()
                rewards[t, cut] = bootstrap_truncated(rewards[t, cut], final_values, gamma)
            self.next_obs = torch.as_tensor(step.obs, dtype=torch.float32, device=self.device)
            for env_index, ret, length in step.episodes:
                on_episode(self.global_step, ret, length, env_index)
            timers["inference"] += (t1 - t0) + (time.perf_counter() - t2)
            timers["env"] += t2 - t1
        buf.rewards.copy_(torch.from_numpy(rewards))
        buf.episode_ends.copy_(torch.from_numpy(episode_ends))

    # ---------------------------------------------------------------- update
    def update(self, advantages: torch.Tensor, returns: torch.Tensor, probe=None) -> dict[str, float]:
        """K epochs of clipped-surrogate minibatch updates. ``probe(minibatch)``, when given, runs once on the
        first minibatch before any parameter changes (the drift shadow probe)."""
        p = self.cfg.ppo
        b = self.buf
        batch = Minibatch(b.obs.reshape(-1, self.obs_dim), b.actions.reshape((-1, *self.action_shape)),
                          b.logprobs.reshape(-1), b.values.reshape(-1), advantages.reshape(-1), returns.reshape(-1))
        # every epoch's permutation is drawn up front: the stream is the same whether or not target_kl stops early
        perms = [torch.as_tensor(self.minibatch_rng.permutation(self.batch_size), device=self.device)
                 for _ in range(p.update_epochs)]
        params = [q for q in self.policy.parameters()]
        stats: dict[str, list[torch.Tensor]] = {k: [] for k in (
            "policy_loss", "value_loss", "entropy", "old_approx_kl", "approx_kl", "clipfrac", "grad_norm")}
        epochs_run = 0
        for epoch in range(p.update_epochs):
            epochs_run += 1
            for start in range(0, self.batch_size, self.minibatch_size):
                mb = batch.index(perms[epoch][start:start + self.minibatch_size])
                if probe is not None and epoch == 0 and start == 0:
                    probe(mb)
                with self.precision.autocast():
                    loss, parts = ppo_loss(self.evaluate, mb, p)
                if not torch.isfinite(loss):
                    raise NonFiniteError(
                        f"non-finite loss ({loss.item()}) at update {self.update_idx + 1}, epoch {epoch + 1}: " +
                        ", ".join(f"{k}={parts[k].item()}" for k in ("policy_loss", "value_loss", "entropy")))

                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(loss).backward()
                self.scaler.unscale_(self.optimizer)
                grad_norm = torch.nn.utils.clip_grad_norm_(params, p.max_grad_norm, foreach=True)
                if not torch.isfinite(grad_norm):
                    if not self.scaler.is_enabled():
                        raise NonFiniteError(f"non-finite gradient norm ({grad_norm.item()}) at update "
                                             f"{self.update_idx + 1}, epoch {epoch + 1}")
                    self.nonfinite_grad_steps += 1  # fp16: GradScaler skips this step and lowers the scale
                self.scaler.step(self.optimizer)
                self.scaler.update()
                for k, v in parts.items():
                    stats[k].append(v)
                stats["grad_norm"].append(grad_norm.detach())
            if p.target_kl is not None and torch.stack(stats["approx_kl"][-(self.batch_size // self.minibatch_size):]).mean() > p.target_kl:
                break
        out = {k: float(torch.stack(v).float().mean()) for k, v in stats.items()}
        out["epochs"] = epochs_run
        out["explained_variance"] = explained_variance(batch.values, batch.returns)
        return out

    # ---------------------------------------------------------------- loop
    def run_update(self, on_episode, on_probe=None) -> dict[str, float]:
        """One PPO iteration: LR anneal, alpha, rollout, GAE, update. Returns its metrics record.
        ``on_probe(record)`` receives the shadow probe's record on the updates it runs (drift.probe_every)."""
        p = self.cfg.ppo
        timers = {"env": 0.0, "inference": 0.0}
        frac = 1.0 - self.update_idx / self.num_updates
        lr = frac * p.learning_rate if p.anneal_lr else p.learning_rate
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        alpha = self.alpha(self.update_idx)
        self.policy.set_alpha(alpha)

        self.collect_rollout(on_episode, timers)
        t0 = time.perf_counter()
        with torch.no_grad(), self.precision.autocast():
            last_value = self.value(self.next_obs)
        advantages, returns = compute_gae(self.buf.rewards, self.buf.values, self.buf.episode_ends, last_value,
                                          p.gamma, p.gae_lambda)
        timers["inference"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        every = self.cfg.drift.probe_every
        probe = None
        if every and on_probe is not None and (self.update_idx + 1) % every == 0:
            probe = lambda mb: on_probe(shadow_probe(self, mb))  # noqa: E731
        stats = self.update(advantages, returns, probe)
        timers["update"] = time.perf_counter() - t0
        self.update_idx += 1
        record = {"global_step": self.global_step, "update": self.update_idx, "alpha": alpha, "lr": lr, **stats,
                  "nonfinite_grad_steps": self.nonfinite_grad_steps,
                  "time_env": timers["env"], "time_inference": timers["inference"], "time_update": timers["update"]}
        if self.scaler.is_enabled():
            record["loss_scale"] = float(self.scaler.get_scale())
        return record

    # ---------------------------------------------------------------- checkpoint
    def state_dict(self) -> dict:
        """Everything the next update depends on, taken at an update boundary."""
        from esper_exp.runtime import rng_state

        return {
            "update_idx": self.update_idx, "global_step": self.global_step,
            "nonfinite_grad_steps": self.nonfinite_grad_steps,
            "alpha": self.alpha(self.update_idx),  # informational: the schedule is a function of update_idx
            "policy": self.policy.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(), "next_obs": self.next_obs.cpu(),
            "action_rng": self.action_rng.get_state(), "minibatch_rng": self.minibatch_rng.bit_generator.state,
            "global_rng": rng_state(), "envs": self.envs.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        from esper_exp.runtime import set_rng_state

        self.update_idx, self.global_step = state["update_idx"], state["global_step"]
        self.nonfinite_grad_steps = state["nonfinite_grad_steps"]
        self.policy.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])
        if state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        self.next_obs = state["next_obs"].to(self.device)
        self.action_rng.set_state(state["action_rng"])
        self.minibatch_rng.bit_generator.state = state["minibatch_rng"]
        set_rng_state(state["global_rng"])
        self.envs.load_state_dict(state["envs"])

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
