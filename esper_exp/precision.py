"""AMP precision: which autocast dtype the policy runs in, and whether a GradScaler is needed.

Master weights and optimizer state stay fp32 (autocast only changes op dtypes); fp16 needs a
GradScaler because of its narrow exponent range, bf16 has fp32's and does not.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Precision:
    name: str
    device_type: str  # "cpu" | "cuda"

    def __post_init__(self) -> None:
        if self.name not in DTYPES:
            raise ValueError(f"unknown precision {self.name!r}; allowed: {', '.join(DTYPES)}")

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.name]

    @property
    def uses_autocast(self) -> bool:
        return self.name != "fp32"

    @property
    def needs_grad_scaler(self) -> bool:
        return self.name == "fp16"

    def autocast(self) -> contextlib.AbstractContextManager:
        """Context for every policy forward (rollout and update). fp32: autocast explicitly off."""
        if not self.uses_autocast:
            return contextlib.nullcontext()  # cheaper than a disabled autocast on the per-step hot path
        return torch.autocast(self.device_type, dtype=self.dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        return torch.amp.GradScaler(self.device_type, enabled=self.needs_grad_scaler)
