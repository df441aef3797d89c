"""The numerics a forward pass runs under: GELU variant x autocast dtype, as one call-time object.

Both axes of the study are handled the same way: a :class:`Numerics` value is passed to every policy forward
(rollout, update, probe, benchmarks), which enters ``numerics.autocast()`` and calls ``numerics.apply_gelu(x)``. Nothing
is fixed at construction and there is no module-global override, so a probe can recompute the same forward under
``numerics.reference()`` (exact GELU, fp32) on the same parameters.

Master weights and optimizer state stay fp32 (autocast only changes op dtypes); fp16 needs a GradScaler because of
its narrow exponent range, bf16 has fp32's and does not. fp32 means autocast explicitly *off* (not merely "not
entered"), so an fp32 forward called inside someone else's autocast region still computes in fp32.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F

GELU_VARIANTS = ("exact", "tanh")
_TORCH_APPROXIMATE = {"exact": "none", "tanh": "tanh"}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Numerics:
    gelu: str = "exact"  # exact | tanh (approximate='tanh')
    precision: str = "fp32"  # fp32 | bf16 | fp16: the autocast dtype of every policy forward
    device_type: str = "cpu"  # cpu | cuda: autocast is per device type

    def __post_init__(self) -> None:
        if self.gelu not in GELU_VARIANTS:
            raise ValueError(f"unknown GELU variant {self.gelu!r}; allowed: {', '.join(GELU_VARIANTS)}")
        if self.precision not in DTYPES:
            raise ValueError(f"unknown precision {self.precision!r}; allowed: {', '.join(DTYPES)}")

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.precision]

    @property
    def needs_grad_scaler(self) -> bool:
        return self.precision == "fp16"

    def autocast(self) -> torch.autocast:
        """Context for a policy forward. fp32: autocast explicitly disabled."""
        return torch.autocast(self.device_type, dtype=self.dtype, enabled=self.precision != "fp32")

    def apply_gelu(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x, approximate=_TORCH_APPROXIMATE[self.gelu])

    def replace(self, **changes) -> Numerics:
        return dataclasses.replace(self, **changes)

    def reference(self) -> Numerics:
        """The reference numerics on the same device: exact GELU, fp32."""
        return self.replace(gelu="exact", precision="fp32")

    @property
    def label(self) -> str:
        return f"{self.gelu}/{self.precision}"
