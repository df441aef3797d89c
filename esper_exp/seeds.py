"""Seed blueprints (ticket B3-PT-05): residual MLP seeds ``x + fc2(gelu(fc1(x)))``, with a leading member axis.

fc2 is zero-initialised, so a seed is the identity at birth. The GELU variant is not part of the module: it comes
with the :class:`~esper_exp.numerics.Numerics` passed to every call, so the same parameters can be evaluated under
the run's numerics and under the reference (exact, fp32). Weights are stacked over K members ([K, ...]) and
inputs are [K, rows, dim]; a single seed is K = 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from esper_exp.numerics import Numerics
from esper_exp.stacked import StackedLinear, linear_default_init, zeros_init

BLUEPRINTS = {"mlp_small": 2, "mlp": 4}  # name -> hidden expansion


class MLPSeed(nn.Module):
    """Residual MLP seed: ``x + fc2(gelu(fc1(x)))`` with ``expansion``x hidden width, for K members."""

    def __init__(self, dim: int, expansion: int, members: int = 1, checkpointing: bool = False,
                 generators: Sequence[torch.Generator | None] | None = None):
        super().__init__()
        gens = list(generators) if generators is not None else [None] * members
        self.dim, self.expansion, self.members = dim, expansion, members
        self.checkpointing = checkpointing
        self.fc1 = StackedLinear(members, dim, dim * expansion, linear_default_init, gens)  # nn.Linear's init
        self.fc2 = StackedLinear(members, dim * expansion, dim, zeros_init, gens)  # identity at birth

    def branch(self, x: torch.Tensor, numerics: Numerics) -> torch.Tensor:
        return self.fc2(numerics.apply_gelu(self.fc1(x)))

    def forward(self, x: torch.Tensor, numerics: Numerics) -> torch.Tensor:
        if self.checkpointing and self.training and torch.is_grad_enabled():
            return x + checkpoint(self.branch, x, numerics, use_reentrant=False)
        return x + self.branch(x, numerics)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, expansion={self.expansion}, members={self.members}, checkpointing={self.checkpointing}"


def make_seed(blueprint: str, dim: int, members: int = 1, checkpointing: bool = False,
              generators: Sequence[torch.Generator | None] | None = None) -> MLPSeed:
    if blueprint not in BLUEPRINTS:
        raise ValueError(f"unknown seed blueprint {blueprint!r}; allowed: {', '.join(BLUEPRINTS)}")
    return MLPSeed(dim, BLUEPRINTS[blueprint], members=members, checkpointing=checkpointing, generators=generators)
