"""Seed blueprints and blend_add: identity at birth, lerp endpoints and clamping, cast policies."""

import math

import pytest
import torch

from esper_exp.blend import AlphaSchedule, blend_add
from esper_exp.seeds import MLPSeed, gelu_variant, make_seed

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


@pytest.mark.parametrize("blueprint,expansion", [("mlp_small", 2), ("mlp", 4)])
@pytest.mark.parametrize("variant", ["exact", "tanh"])
def test_seed_is_identity_at_birth_and_has_the_blueprint_width(blueprint, expansion, variant):
    torch.manual_seed(0)
    seed = make_seed(blueprint, 16, gelu=variant)
    x = torch.randn(8, 16)
    assert torch.equal(seed(x), x)
    assert seed.fc1.out_features == 16 * expansion
    # a trained seed is no longer the identity: the residual branch is live
    torch.nn.init.normal_(seed.fc2.weight)
    assert not torch.equal(seed(x), x)


def test_gelu_variant_switches_at_call_time():
    torch.manual_seed(0)
    seed = make_seed("mlp", 8, gelu="exact")
    torch.nn.init.normal_(seed.fc2.weight)
    x = torch.randn(32, 8) * 3
    exact = seed(x)
    with gelu_variant("tanh"):
        approx = seed(x)
    tanh_seed = make_seed("mlp", 8, gelu="tanh")
    tanh_seed.load_state_dict(seed.state_dict())
    assert torch.equal(approx, tanh_seed(x))
    assert not torch.equal(exact, approx)
    assert (exact - approx).abs().max() < 1e-2  # GELU variants differ by <= 4.7e-4 per unit, times fc2 weights
    assert torch.equal(seed(x), exact)  # the override ends with its context


def test_checkpointing_gives_the_same_values_and_gradients():
    torch.manual_seed(0)
    plain = MLPSeed(8, 4)
    torch.nn.init.normal_(plain.fc2.weight)
    ckpt = MLPSeed(8, 4, checkpointing=True)
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(4, 8, requires_grad=True)
    for m in (plain, ckpt):
        m(x).square().sum().backward()
    assert torch.equal(plain.fc1.weight.grad, ckpt.fc1.weight.grad)


def test_bad_blueprint_and_gelu_name_the_allowed_values():
    with pytest.raises(ValueError, match="mlp_small, mlp"):
        make_seed("conv", 8)
    with pytest.raises(ValueError, match="exact, tanh"):
        make_seed("mlp", 8, gelu="fast")


def test_lerp_endpoints_and_clamping():
    host, seed = torch.randn(5, 4), torch.randn(5, 4)
    assert torch.equal(blend_add(host, seed, torch.tensor(0.0)), host)
    assert torch.equal(blend_add(host, seed, torch.tensor(1.0)), seed)
    assert torch.equal(blend_add(host, seed, torch.tensor(-3.0)), host)  # clamped to 0
    assert torch.equal(blend_add(host, seed, torch.tensor(7.0)), seed)  # clamped to 1
    mid = blend_add(host.double(), seed.double(), torch.tensor(0.25, dtype=torch.float64))
    torch.testing.assert_close(mid, 0.75 * host.double() + 0.25 * seed.double())


@pytest.mark.parametrize("host_dtype", DTYPES)
@pytest.mark.parametrize("seed_dtype", DTYPES)
@pytest.mark.parametrize("alpha_dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_cast_policies_are_bitwise_equal_for_every_dtype_pair(host_dtype, seed_dtype, alpha_dtype):
    torch.manual_seed(0)
    host, seed = torch.randn(64, 16).to(host_dtype), torch.randn(64, 16).to(seed_dtype)
    alpha = torch.tensor(0.3, dtype=alpha_dtype)
    always = blend_add(host, seed, alpha, cast="always")
    conditional = blend_add(host, seed, alpha, cast="conditional")
    assert always.dtype == host_dtype
    assert torch.equal(always, conditional)
    ref = host.double() + alpha.double().clamp(0, 1) * (seed.double() - host.double())
    tol = {torch.float32: 1e-5, torch.bfloat16: 3e-2, torch.float16: 3e-3}[host_dtype]
    # the seed is rounded to the host dtype first, so the error is the coarser of the two dtypes
    tol = max(tol, {torch.float32: 1e-5, torch.bfloat16: 3e-2, torch.float16: 3e-3}[seed_dtype])
    assert (always.double() - ref).abs().max() < tol * 4


def test_mixed_dtypes_need_the_cast_and_work_under_autocast():
    host, seed = torch.randn(8, 4), torch.randn(8, 4, dtype=torch.bfloat16)
    with pytest.raises(RuntimeError):
        torch.lerp(host, seed, torch.tensor(0.5))  # why blend_add casts: lerp needs equal dtypes
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for cast in ("always", "conditional"):
            out = blend_add(host, seed, torch.tensor(0.5), cast=cast)
            assert out.dtype == torch.float32


def test_same_dtype_cast_does_not_allocate():
    x = torch.randn(4)
    assert x.to(torch.float32).data_ptr() == x.data_ptr()


def test_unknown_cast_policy():
    with pytest.raises(ValueError, match="always, conditional"):
        blend_add(torch.zeros(1), torch.zeros(1), torch.tensor(0.5), cast="never")


def test_alpha_schedules():
    lin = AlphaSchedule("linear", start=0.0, end=1.0, start_update=10, ramp_updates=20)
    assert [lin(u) for u in (0, 10, 20, 30, 100)] == [0.0, 0.0, 0.5, 1.0, 1.0]
    cos = AlphaSchedule("cosine", start=0.2, end=0.8, start_update=0, ramp_updates=10)
    assert cos(0) == pytest.approx(0.2) and cos(5) == pytest.approx(0.5) and cos(10) == pytest.approx(0.8)
    assert cos(2) < 0.2 + 0.6 * 0.2  # cosine ramps slower than linear at first
    assert AlphaSchedule("constant", end=0.7)(123) == 0.7
    with pytest.raises(ValueError, match="constant, linear, cosine"):
        AlphaSchedule("step")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        AlphaSchedule("linear", end=1.5)
    assert not math.isnan(lin(-1))
