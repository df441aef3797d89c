"""Seed blueprints (ticket B3-PT-05): residual MLP seeds ``x + fc2(gelu(fc1(x)))``.

fc2 is zero-initialised, so a seed is the identity at birth. The GELU variant is a
construction-time default that can be overridden at call time with :func:`gelu_variant`,
so a drift probe can recompute the same forward pass under the reference numerics.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

GELU_VARIANTS = ("exact", "tanh")
_TORCH_APPROXIMATE = {"exact": "none", "tanh": "tanh"}
# A plain module global, not a contextvars.ContextVar: TorchDynamo cannot trace ContextVar.get (graph
# break, so a compiled seed split into two graphs and the residual add could not fuse), while it reads
# a module global and guards on its value (a compiled seed recompiles when the override changes).
# Thread-local semantics are lost; the trainer runs one job per process (thread).
_GELU_OVERRIDE: str | None = None


def check_gelu(variant: str) -> str:
    if variant not in GELU_VARIANTS:
        raise ValueError(f"unknown GELU variant {variant!r}; allowed: {', '.join(GELU_VARIANTS)}")
    return variant


@contextlib.contextmanager
def gelu_variant(variant: str | None) -> Iterator[None]:
    """Within this context every seed uses ``variant`` (None: each seed's own default)."""
    global _GELU_OVERRIDE
    previous = _GELU_OVERRIDE
    _GELU_OVERRIDE = None if variant is None else check_gelu(variant)
    try:
        yield
    finally:
        _GELU_OVERRIDE = previous


def gelu(x: torch.Tensor, variant: str) -> torch.Tensor:
    return F.gelu(x, approximate=_TORCH_APPROXIMATE[variant])


class MLPSeed(nn.Module):
    """Residual MLP seed: ``x + fc2(gelu(fc1(x)))`` with ``expansion``x hidden width."""

    def __init__(self, dim: int, expansion: int, gelu: str = "exact", checkpointing: bool = False):
        super().__init__()
        self.dim, self.expansion = dim, expansion
        self.gelu = check_gelu(gelu)
        self.checkpointing = checkpointing
        self.fc1 = nn.Linear(dim, dim * expansion)
        self.fc2 = nn.Linear(dim * expansion, dim)
        nn.init.zeros_(self.fc2.weight)  # identity at birth: the residual branch outputs 0
        nn.init.zeros_(self.fc2.bias)

    def _branch(self, x: torch.Tensor) -> torch.Tensor:
        variant = _GELU_OVERRIDE or self.gelu
        return self.fc2(gelu(self.fc1(x), variant))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.checkpointing and self.training and torch.is_grad_enabled():
            return x + checkpoint(self._branch, x, use_reentrant=False)
        return x + self._branch(x)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, expansion={self.expansion}, gelu={self.gelu}, checkpointing={self.checkpointing}"


BLUEPRINTS: dict[str, Callable[..., MLPSeed]] = {
    "mlp_small": lambda dim, **kw: MLPSeed(dim, expansion=2, **kw),
    "mlp": lambda dim, **kw: MLPSeed(dim, expansion=4, **kw),
}


def make_seed(blueprint: str, dim: int, gelu: str = "exact", checkpointing: bool = False) -> MLPSeed:
    if blueprint not in BLUEPRINTS:
        raise ValueError(f"unknown seed blueprint {blueprint!r}; allowed: {', '.join(BLUEPRINTS)}")
    return BLUEPRINTS[blueprint](dim, gelu=gelu, checkpointing=checkpointing)
