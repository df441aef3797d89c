"""What the seed speed benchmark runs (issue 5, item 1): one member of the trainer's seed, under the Numerics of
its cell, eager or compiled."""

import pytest
import torch

from esper_exp.bench.gelu import seed_forward
from esper_exp.numerics import Numerics
from esper_exp.seeds import make_seed


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
