"""The numerics a forward pass runs under: GELU variant x autocast dtype, as one call-time object.

Both axes of the study are handled the same way: a :class:`Numerics` value is passed to every policy forward
(rollout, update, probe, benchmarks), which enters ``numerics.autocast()`` and calls ``numerics.apply_gelu(x)``. Nothing
is fixed at construction and there is no module-global override, so a probe can recompute the same forward under
``numerics.reference()`` (exact GELU, fp32) on the same parameters.

Master weights and optimizer state stay fp32 (autocast only changes op dtypes); fp16 needs a GradScaler because of
its narrow exponent range, bf16 has fp32's and does not. fp32 means autocast explicitly *off* (not merely "not
entered"), so an fp32 forward called inside someone else's autocast region still computes in fp32.

``perturb=True`` is the drift study's *persistent* noise-floor control (``drift.perturb=persistent``): every GELU output
gets ``sign(hash(x)) * |gelu_tanh(x) - gelu_exact(x)|`` added, a perturbation of exactly the tanh-vs-exact size per
element with a pseudo-random sign drawn from the bits of the input (:func:`gelu_perturbation`). It is stateless (no
RNG, no counter), so every recomputation of a forward (a probe, a replay, a resumed run) sees the same perturbation,
and it has zero mean over inputs, unlike the systematic tanh-vs-exact difference whose size it copies.
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
    perturb: bool = False  # the persistent drift control: gelu_perturbation added to every GELU output

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
        y = F.gelu(x, approximate=_TORCH_APPROXIMATE[self.gelu])
        if self.perturb:
            y = y + gelu_perturbation(x).to(y.dtype)
        return y

    def replace(self, **changes) -> Numerics:
        return dataclasses.replace(self, **changes)

    def reference(self) -> Numerics:
        """The reference numerics on the same device: exact GELU, fp32, no perturbation."""
        return self.replace(gelu="exact", precision="fp32", perturb=False)

    @property
    def label(self) -> str:
        return f"{self.gelu}/{self.precision}"


_MASK32 = 0xFFFFFFFF
_HASH_MUL = 0x45D9F3B  # < 2**27: a 32-bit value times it stays below 2**63 (no signed overflow in int64)
_INT_VIEW = {torch.float32: torch.int32, torch.float64: torch.int64, torch.bfloat16: torch.int16,
             torch.float16: torch.int16}


def hash_sign(x: torch.Tensor) -> torch.Tensor:
    """+1 or -1 per element of ``x``, a fixed pseudo-random function of the element's bits (an integer hash of its
    bit pattern, low 32 bits), as float32. Deterministic on any device, no RNG state; half of all bit patterns map
    to each sign."""
    h = x.detach().contiguous().view(_INT_VIEW[x.dtype]).to(torch.int64) & _MASK32
    for _ in range(2):
        h = (((h >> 16) ^ h) * _HASH_MUL) & _MASK32
    h = (h >> 16) ^ h
    return (h & 1).to(torch.float32) * 2 - 1


def gelu_perturbation(x: torch.Tensor) -> torch.Tensor:
    """The persistent control's perturbation of gelu(x), float32: ``hash_sign(x) * |gelu_tanh(x) - gelu_exact(x)|``
    (sizes computed in float32). Differentiable through the size (the sign is a constant of x's bits), so the
    backward pass is perturbed by the tanh-vs-exact size of the derivative too."""
    xf = x.float()
    return hash_sign(x) * (F.gelu(xf, approximate="tanh") - F.gelu(xf)).abs()


@dataclass(frozen=True)
class MemberNumerics:
    """Per-member numerics of a *mixed* group (members of several GELU x precision cells in one process, one GPU):
    ``members[k]`` is member k's :class:`Numerics`. A group whose members share one Numerics passes that Numerics
    itself; the policy's forwards and the PPO loss take either.

    The policy computes a mixed group as :attr:`segments`: runs of consecutive members with the same precision (and
    perturbation), each under its own autocast region exactly as a group of that precision alone; inside a segment
    each member's GELU variant is picked per row (:class:`RowGelu`: both variants computed, one kept, elementwise), so
    a member's numbers do not depend on which other cells share its process (CPU: bitwise, tests/test_group.py)."""

    members: tuple[Numerics, ...]

    def __post_init__(self) -> None:
        if not self.members:
            raise ValueError("MemberNumerics needs at least one member")
        if len({n.device_type for n in self.members}) != 1:
            raise ValueError("the members of a group run on one device type")

    @property
    def segments(self) -> tuple[tuple[int, int, Numerics], ...]:
        """(start, stop, numerics) of every run of consecutive members with equal precision and perturbation, in
        member order: a plain Numerics where the run shares one GELU variant, else a :class:`RowGelu`."""
        out, start, ms = [], 0, self.members
        for k in range(1, len(ms) + 1):
            if k == len(ms) or ms[k].replace(gelu="exact") != ms[start].replace(gelu="exact"):
                run = ms[start:k]
                if len({n.gelu for n in run}) == 1:
                    out.append((start, k, run[0]))
                else:
                    out.append((start, k, RowGelu(run[0].gelu, run[0].precision, run[0].device_type, run[0].perturb,
                                                  tanh=tuple(n.gelu == "tanh" for n in run))))
                start = k
        return tuple(out)

    @property
    def label(self) -> str:
        return "mixed: " + ", ".join(f"{n.label} x{b - a}" for a, b, n in self.segments)


def member_segments(numerics: Numerics | MemberNumerics, members: int) -> tuple[tuple[int, int, Numerics], ...]:
    """The (start, stop, numerics) runs a forward over ``members`` members computes: one for a plain Numerics."""
    if isinstance(numerics, MemberNumerics):
        if len(numerics.members) != members:
            raise ValueError(f"numerics for {len(numerics.members)} members, the group has {members}")
        return numerics.segments
    return ((0, members, numerics),)


def grad_scaled(numerics: Numerics | MemberNumerics, members: int) -> list[bool]:
    """Per member: trains with an fp16 loss scale."""
    return [n.needs_grad_scaler for a, b, n in member_segments(numerics, members) for _ in range(a, b)]


@dataclass(frozen=True)
class RowGelu(Numerics):
    """A mixed group's segment whose members share a precision but not a GELU variant: ``tanh[j]`` says whether its
    member j uses approximate='tanh'. :meth:`apply_gelu` on the segment's trunk rows (its members' critic rows,
    then their actor rows: 2 x len(tanh)) computes both variants and keeps each row's own, elementwise (on CPU
    bitwise what that member's variant gives alone)."""

    tanh: tuple[bool, ...] = ()

    def apply_gelu(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.where(_row_mask(self.tanh, x.device, x.dim()), F.gelu(x, approximate="tanh"), F.gelu(x))
        if self.perturb:
            y = y + gelu_perturbation(x).to(y.dtype)
        return y

    @property
    def label(self) -> str:
        return f"{sum(self.tanh)} tanh + {len(self.tanh) - sum(self.tanh)} exact/{self.precision}"


_ROW_MASKS: dict = {}


def _row_mask(tanh: tuple[bool, ...], device: torch.device, dim: int) -> torch.Tensor:
    """[2m, 1, ...] bool: the rows of a segment's trunk (critic rows, then actor rows) that use tanh. Cached per
    device: built once, before any CUDA-graph capture (the warm-up runs), and never as an inference tensor."""
    key = (tanh, str(device), dim)
    if key not in _ROW_MASKS:
        with torch.inference_mode(False):
            _ROW_MASKS[key] = torch.tensor(tanh * 2, device=device).view(-1, *([1] * (dim - 1)))
    return _ROW_MASKS[key]
