"""Host/seed feature blending (ticket B2-PT-02) and the alpha schedule that drives it.

``blend_add(host, seed, alpha) = lerp(host, seed, clamp(alpha, 0, 1))`` in the host dtype.
``torch.lerp`` needs input, end and a tensor weight of one dtype and is on no autocast list,
so mixed inputs (fp32 host, bf16 seed under autocast) must be cast by hand.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

CAST_POLICIES = ("always", "conditional")


def blend_add(host: torch.Tensor, seed: torch.Tensor, alpha: torch.Tensor, cast: str = "always") -> torch.Tensor:
    """Blend seed features into host features: ``host + clamp(alpha) * (seed - host)``.

    cast="always" casts seed and alpha to the host dtype on every call (as esper-lite does;
    ``Tensor.to`` returns ``self`` when the dtype already matches). cast="conditional" casts
    only when the dtypes differ. Both give bitwise-equal results by construction (no test needed: ``.to`` of the
    same dtype returns the tensor itself).
    """
    dtype = host.dtype
    if cast == "always":
        seed = seed.to(dtype)
        alpha = alpha.to(dtype)
    elif cast == "conditional":
        if seed.dtype != dtype:
            seed = seed.to(dtype)
        if alpha.dtype != dtype:
            alpha = alpha.to(dtype)
    else:
        raise ValueError(f"unknown blend cast policy {cast!r}; allowed: {', '.join(CAST_POLICIES)}")
    return torch.lerp(host, seed, alpha.clamp(0.0, 1.0))


SCHEDULE_KINDS = ("constant", "linear", "cosine")


@dataclass(frozen=True)
class AlphaSchedule:
    """Alpha as a function of the PPO update index (0-based), standing in for esper-lite's alpha controller.

    constant: ``end`` throughout. linear / cosine: ``start`` until update ``start_update``, then a ramp
    to ``end`` over ``ramp_updates`` updates, then ``end``.
    """

    kind: str = "linear"
    start: float = 0.0
    end: float = 1.0
    start_update: int = 0
    ramp_updates: int = 1

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULE_KINDS:
            raise ValueError(f"unknown alpha schedule {self.kind!r}; allowed: {', '.join(SCHEDULE_KINDS)}")
        for name in ("start", "end"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"alpha.{name}={value} is outside the allowed range [0, 1]")
        if self.start_update < 0 or self.ramp_updates < 1:
            raise ValueError(
                f"alpha.start_update={self.start_update} must be >= 0 and alpha.ramp_updates={self.ramp_updates} >= 1"
            )

    def __call__(self, update: int) -> float:
        if self.kind == "constant":
            return self.end
        progress = min(max((update - self.start_update) / self.ramp_updates, 0.0), 1.0)
        if self.kind == "cosine":
            progress = 0.5 - 0.5 * math.cos(math.pi * progress)
        return self.start + (self.end - self.start) * progress
