"""A tiny policy, trained for a few seconds, whose GELU inputs feed the numerics check.

The numerics question is about the values GELU actually sees in training, so the probe records the
seed's fc1 pre-activations from a policy that has learnt something, not only from a synthetic range.
To stay dependency-free (the GPU box has no gymnasium) the environment is CartPole's classic dynamics
(Barto, Sutton & Anderson 1983; the equations and constants of gymnasium's CartPole-v1) written in
torch and vectorised, and the policy is trained with REINFORCE (returns-to-go, batch-mean baseline),
not PPO. Architecture as in the trainer: host encoder ``Linear(4, dim) + tanh`` -> MLP seed
(the trainer's, one member; fc2 zero-initialised) -> ``blend_add`` at alpha -> actor head, trained and
recorded under the reference numerics (exact GELU, fp32). It is a small, quickly trained policy: what it
shows is the activation *range* of a trained seed, not a converged one.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from esper_exp.blend import blend_add
from esper_exp.numerics import Numerics
from esper_exp.seeds import make_seed

NUMERICS = Numerics(gelu="exact", precision="fp32")  # the probe trains and records (on CPU) under the reference


def cartpole_step(state: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One Euler step of CartPole (gymnasium CartPole-v1 constants). Returns (next state, done)."""
    gravity, masscart, masspole, length, force_mag, tau = 9.8, 1.0, 0.1, 0.5, 10.0, 0.02
    total_mass, polemass_length = masscart + masspole, masspole * length
    x, x_dot, theta, theta_dot = state.unbind(-1)
    force = torch.where(action == 1, force_mag, -force_mag)
    cos, sin = torch.cos(theta), torch.sin(theta)
    temp = (force + polemass_length * theta_dot**2 * sin) / total_mass
    theta_acc = (gravity * sin - cos * temp) / (length * (4.0 / 3.0 - masspole * cos**2 / total_mass))
    x_acc = temp - polemass_length * theta_acc * cos / total_mass
    x, x_dot = x + tau * x_dot, x_dot + tau * x_acc
    theta, theta_dot = theta + tau * theta_dot, theta_dot + tau * theta_acc
    nxt = torch.stack([x, x_dot, theta, theta_dot], -1)
    done = (x.abs() > 2.4) | (theta.abs() > 12 * 2 * math.pi / 360)
    return nxt, done


class ProbePolicy(nn.Module):
    def __init__(self, dim: int = 64, alpha: float = 1.0):
        super().__init__()
        self.host = nn.Sequential(nn.Linear(4, dim), nn.Tanh())
        self.seed = make_seed("mlp", dim)  # one member: the seed takes [1, rows, dim]
        self.head = nn.Linear(dim, 2)
        self.register_buffer("alpha", torch.tensor(alpha))

    def features(self, obs: torch.Tensor) -> torch.Tensor:
        return self.host(obs)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        with NUMERICS.autocast():
            h = self.features(obs)
            return self.head(blend_add(h, self.seed(h.unsqueeze(0), NUMERICS)[0], self.alpha))


def rollout(policy: ProbePolicy, n_envs: int, horizon: int, gen: torch.Generator):
    """Fixed-horizon rollout; an env that terminates stays done (its later steps are masked)."""
    state = (torch.rand(n_envs, 4, generator=gen) - 0.5) * 0.1
    alive = torch.ones(n_envs, dtype=torch.bool)
    obs, logps, masks = [], [], []
    for _ in range(horizon):
        logits = policy(state)
        dist = torch.distributions.Categorical(logits=logits)
        action = torch.multinomial(dist.probs.detach(), 1, generator=gen).squeeze(-1)
        obs.append(state)
        logps.append(dist.log_prob(action))
        masks.append(alive.float())
        state, done = cartpole_step(state, action)
        alive = alive & ~done
    return torch.stack(obs), torch.stack(logps), torch.stack(masks)


def train_probe(iterations: int = 40, n_envs: int = 128, horizon: int = 200, dim: int = 64, seed: int = 0) -> dict:
    """Train the probe policy on CPU and return it with its learning summary."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    policy = ProbePolicy(dim)
    opt = torch.optim.Adam(policy.parameters(), lr=1e-2)
    lengths = []
    for _ in range(iterations):
        _, logps, masks = rollout(policy, n_envs, horizon, gen)
        rtg = masks.flip(0).cumsum(0).flip(0)  # reward 1 per alive step: returns-to-go
        adv = (rtg - rtg.mean(1, keepdim=True)) / (rtg.std(1, keepdim=True) + 1e-8)
        loss = -(logps * adv * masks).sum() / masks.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        lengths.append(masks.sum(0).mean().item())
    return {"policy": policy, "episode_length_first": lengths[0], "episode_length_last": lengths[-1], "iterations": iterations, "horizon": horizon}


@torch.no_grad()
def record_activations(policy: ProbePolicy, n_envs: int = 256, horizon: int = 200, seed: int = 1) -> dict:
    """GELU inputs (the seed's fc1 pre-activations) and the seed's inputs over a fresh rollout,
    masked to steps where the episode was still running."""
    gen = torch.Generator().manual_seed(seed)
    obs, _, masks = rollout(policy, n_envs, horizon, gen)
    obs = obs[masks.bool()]
    h = policy.features(obs)
    pre = policy.seed.fc1(h.unsqueeze(0))[0]  # fp32, like the forward under NUMERICS
    return {"gelu_inputs": pre.flatten(), "seed_inputs": h}
