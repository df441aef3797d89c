"""Actor-critic policy: host encoder -> seed MLP -> blend_add(host, seed, alpha) -> head.

Actor and critic are separate networks, each with its own host -> seed -> blend stack (as in
CleanRL's PPO): with a shared trunk the value loss would move the policy's features and change the
dynamics under study. Both stacks read the same alpha. Head outputs are upcast to fp32 before any
distribution math, so log-probs, entropies and values are fp32 whatever the autocast dtype.

Action noise comes from a caller-supplied ``torch.Generator`` so that seed k draws the same noise in
every GELU x precision cell (paired seeds): cells then differ only in numerics.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from esper_exp.blend import blend_add
from esper_exp.seeds import make_seed

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def layer_init(layer: nn.Linear, std: float = math.sqrt(2), bias: float = 0.0) -> nn.Linear:
    """CleanRL's orthogonal initialisation."""
    nn.init.orthogonal_(layer.weight, std)
    nn.init.constant_(layer.bias, bias)
    return layer


class BlendedStack(nn.Module):
    """host encoder (Linear-Tanh x depth) -> seed -> blend_add -> linear head."""

    def __init__(self, in_dim: int, out_dim: int, width: int, depth: int, blueprint: str, gelu: str,
                 checkpointing: bool, blend_cast: str, head_std: float):
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(depth):
            layers += [layer_init(nn.Linear(in_dim if i == 0 else width, width)), nn.Tanh()]
        self.host = nn.Sequential(*layers)
        self.seed = make_seed(blueprint, width, gelu=gelu, checkpointing=checkpointing)
        self.head = layer_init(nn.Linear(width, out_dim), std=head_std)
        self.blend_cast = blend_cast

    def forward(self, x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        host = self.host(x)
        return self.head(blend_add(host, self.seed(host), alpha, cast=self.blend_cast)).float()


class ActorCritic(nn.Module):
    def __init__(self, obs_dim: int, action_space, width: int = 64, depth: int = 2, blueprint: str = "mlp",
                 gelu: str = "exact", checkpointing: bool = False, blend_cast: str = "always"):
        super().__init__()
        import gymnasium as gym

        if isinstance(action_space, gym.spaces.Discrete):
            self.discrete, out_dim = True, int(action_space.n)
        elif isinstance(action_space, gym.spaces.Box) and len(action_space.shape) == 1:
            self.discrete, out_dim = False, int(action_space.shape[0])
        else:
            raise ValueError(f"unsupported action space {action_space}; allowed: Discrete, 1-D Box")
        stack = dict(width=width, depth=depth, blueprint=blueprint, gelu=gelu, checkpointing=checkpointing,
                     blend_cast=blend_cast)
        self.critic = BlendedStack(obs_dim, 1, head_std=1.0, **stack)
        self.actor = BlendedStack(obs_dim, out_dim, head_std=0.01, **stack)
        if not self.discrete:
            self.actor_logstd = nn.Parameter(torch.zeros(1, out_dim))  # state-independent log-std
        # alpha is state, not a parameter: a 0-d fp32 buffer set once per PPO update.
        self.register_buffer("alpha", torch.zeros(()))

    def set_alpha(self, value: float) -> None:
        self.alpha.fill_(value)

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        return self.critic(obs, self.alpha).squeeze(-1)

    def act(self, obs: torch.Tensor, generator: torch.Generator | None = None):
        """Sample actions for a rollout step: returns (action, log_prob, value)."""
        out = self.actor(obs, self.alpha)
        if self.discrete:
            logp_all = torch.log_softmax(out, dim=-1)
            u = torch.rand(out.shape[:-1] + (1,), generator=generator, device=out.device)
            # inverse-CDF sampling from one uniform per env: same noise stream in every cell
            action = (logp_all.exp().cumsum(-1) < u).sum(-1).clamp_(max=out.shape[-1] - 1)
            logp = logp_all.gather(-1, action.unsqueeze(-1)).squeeze(-1)
        else:
            std = self.actor_logstd.exp()
            noise = torch.randn(out.shape, generator=generator, device=out.device)
            action = out + std * noise
            logp = (-0.5 * noise.square() - self.actor_logstd - _LOG_SQRT_2PI).sum(-1)
        return action, logp, self.value(obs)

    def evaluate(self, obs: torch.Tensor, action: torch.Tensor):
        """Log-prob and entropy of given actions, and values: returns (log_prob, entropy, value)."""
        out = self.actor(obs, self.alpha)
        if self.discrete:
            logp_all = torch.log_softmax(out, dim=-1)
            logp = logp_all.gather(-1, action.long().unsqueeze(-1)).squeeze(-1)
            entropy = -(logp_all.exp() * logp_all).sum(-1)
        else:
            logstd = self.actor_logstd.expand_as(out)
            logp = (-0.5 * ((action - out) / logstd.exp()).square() - logstd - _LOG_SQRT_2PI).sum(-1)
            entropy = (0.5 + _LOG_SQRT_2PI + logstd).sum(-1)
        return logp, entropy, self.value(obs)


def obs_dim_of(space) -> int:
    return int(np.prod(space.shape))
