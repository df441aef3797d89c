"""What the seed speed benchmark runs (issue 5, item 1): one member of the trainer's seed, under the Numerics of
its cell, eager or compiled."""

import pytest
import torch

from esper_exp.bench.gelu import one_member_forward, seed_forward
from esper_exp.numerics import Numerics
from esper_exp.seeds import make_seed


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("gelu", ["exact", "tanh"])
def test_benchmarked_math_is_the_seed_forward(gelu, precision):
    # the benchmark times one baddbmm per layer (no zero twin); it must compute what seed(x, numerics) does:
    # same output dtype under autocast, same outputs and gradients up to a GEMM kernel's rounding
    numerics = Numerics(gelu=gelu, precision=precision)
    torch.manual_seed(0)
    seed = make_seed("mlp", 64)
    torch.nn.init.normal_(seed.fc2.weight, std=64**-0.5)
    torch.nn.init.normal_(seed.fc2.bias, std=0.1)
    x = torch.randn(1, 256, 64, requires_grad=True)
    tol = {"rtol": 1e-5, "atol": 1e-5} if precision == "fp32" else {"rtol": 1e-2, "atol": 1e-2}
    with numerics.autocast():
        ours, theirs = one_member_forward(seed, x, numerics), seed(x, numerics)
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape == x.shape
    assert torch.allclose(ours, theirs, **tol)
    inputs = [x, *seed.parameters()]
    for a, b in zip(torch.autograd.grad(ours.sum(), inputs), torch.autograd.grad(theirs.sum(), inputs)):
        assert torch.allclose(a, b, **tol)


def test_one_member_forward_rejects_a_group():
    with pytest.raises(ValueError, match="one-member"):
        one_member_forward(make_seed("mlp_small", 8, members=2), torch.randn(2, 4, 8), Numerics())


def test_compiled_seed_forward_runs_the_numerics_it_was_built_with():
    # one compiled wrapper per Numerics (the closure constant Dynamo guards on): each must run its own GELU variant
    # and autocast dtype, not the graph traced for the first one
    torch._dynamo.reset()
    torch.manual_seed(0)
    seed = make_seed("mlp", 16)
    torch.nn.init.normal_(seed.fc2.weight)
    x = torch.randn(1, 8, 16) * 3
    out = {}
    for numerics in (Numerics(gelu="exact"), Numerics(gelu="tanh"), Numerics(gelu="exact", precision="bf16")):
        compiled = seed_forward(seed, numerics, {"backend": "aot_eager"})
        with numerics.autocast():
            out[numerics.label] = compiled(x)
            eager = seed(x, numerics)
        assert torch.allclose(out[numerics.label], eager, atol=1e-6), numerics
    assert not torch.allclose(out["exact/fp32"], out["tanh/fp32"], atol=1e-6)
    assert not torch.allclose(out["exact/fp32"], out["exact/bf16"], atol=1e-3)
    torch._dynamo.reset()
