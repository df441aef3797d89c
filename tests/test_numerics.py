"""Numerics of a mixed group: segments per precision, GELU picked per row."""

import torch

from esper_exp.numerics import Numerics


def test_a_mixed_groups_segments_are_its_precisions_with_gelu_picked_per_row():
    import torch.nn.functional as F

    from esper_exp.numerics import MemberNumerics, RowGelu, grad_scaled

    cells = [("exact", "bf16"), ("tanh", "bf16"), ("tanh", "bf16"), ("exact", "fp32"), ("exact", "fp32"),
             ("tanh", "fp16")]
    mixed = MemberNumerics(tuple(Numerics(g, p) for g, p in cells))
    segments = mixed.segments
    assert [(a, b) for a, b, _ in segments] == [(0, 3), (3, 5), (5, 6)]
    assert segments[1][2] == Numerics("exact", "fp32") and segments[2][2] == Numerics("tanh", "fp16")
    row = segments[0][2]
    assert isinstance(row, RowGelu) and row.precision == "bf16" and row.tanh == (False, True, True)
    x = torch.randn(6, 2, 32)  # trunk rows: 3 critic rows, then 3 actor rows (whole SIMD vectors per row, as in the
    # trunk: a row of 64 floats is computed in the same vector lanes alone or in the stack)
    y = row.apply_gelu(x)
    for r, tanh in enumerate((False, True, True) * 2):
        assert torch.equal(y[r], F.gelu(x[r], approximate="tanh" if tanh else "none"))
    assert grad_scaled(mixed, 6) == [False] * 5 + [True]
