"""Seed blueprints, Numerics and blend_add: identity at birth, call-time GELU and dtype, member independence,
lerp endpoints and clamping."""

import math

import pytest
import torch

from esper_exp.blend import AlphaSchedule, blend_add
from esper_exp.numerics import Numerics
from esper_exp.seeds import make_seed

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _seed(blueprint="mlp", dim=8, members=1, trained=True, **kw):
    seed = make_seed(blueprint, dim, members=members, generators=[torch.Generator().manual_seed(k) for k in range(members)], **kw)
    if trained:  # a trained seed is no longer the identity: the residual branch is live
        torch.nn.init.normal_(seed.fc2.weight, generator=torch.Generator().manual_seed(9))
    return seed


@pytest.mark.parametrize("blueprint,expansion", [("mlp_small", 2), ("mlp", 4)])
@pytest.mark.parametrize("variant", ["exact", "tanh"])
def test_seed_is_identity_at_birth_and_has_the_blueprint_width(blueprint, expansion, variant):
    seed = _seed(blueprint, 16, members=2, trained=False)
    x = torch.randn(2, 8, 16)
    assert torch.equal(seed(x, Numerics(variant)), x)
    assert seed.fc1.weight.shape == (2, 16 * expansion, 16)
    torch.nn.init.normal_(seed.fc2.weight)
    assert not torch.equal(seed(x, Numerics(variant)), x)


def test_gelu_variant_is_chosen_at_call_time():
    seed = _seed()
    x = torch.randn(1, 32, 8) * 3
    exact, approx = seed(x, Numerics("exact")), seed(x, Numerics("tanh"))
    assert not torch.equal(exact, approx)
    assert (exact - approx).abs().max() < 1e-2  # GELU variants differ by <= 4.7e-4 per unit, times fc2 weights
    ref = x + seed.fc2(torch.nn.functional.gelu(seed.fc1(x), approximate="tanh"))
    assert torch.equal(approx, ref)
    assert torch.equal(seed(x, Numerics("exact")), exact)  # nothing is left switched


@pytest.mark.parametrize("precision,dtype", [("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_numerics_sets_the_compute_dtype_and_fp32_is_autocast_off(precision, dtype):
    seed = _seed()
    x = torch.randn(1, 4, 8)
    with Numerics(precision=precision).autocast():
        assert seed.branch(x, Numerics(precision=precision)).dtype == dtype
    # fp32 inside someone else's bf16 autocast region still computes in fp32: autocast is explicitly off
    with torch.autocast("cpu", dtype=torch.bfloat16), Numerics(precision="fp32").autocast():
        assert seed.branch(x, Numerics()).dtype == torch.float32


def test_checkpointing_gives_the_same_values_and_gradients():
    plain, ckpt = _seed(members=2), _seed(members=2, checkpointing=True)
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(2, 4, 8, requires_grad=True)
    for m in (plain, ckpt):
        m(x, Numerics()).square().sum().backward()
    assert torch.equal(plain.fc1.weight.grad, ckpt.fc1.weight.grad)


def test_members_are_independent_and_seeded_by_their_own_generator():
    group, alone = _seed(members=3), _seed(members=1)
    assert torch.equal(group.fc1.weight[0], alone.fc1.weight[0])  # member 0 of both uses generator seed 0
    assert not torch.equal(group.fc1.weight[0], group.fc1.weight[1])
    x = torch.randn(3, 64, 8)
    assert torch.equal(group(x, Numerics())[0], alone(x[:1], Numerics())[0])


def test_bad_blueprint_and_gelu_name_the_allowed_values():
    with pytest.raises(ValueError, match="mlp_small, mlp"):
        make_seed("conv", 8)
    with pytest.raises(ValueError, match="exact, tanh"):
        Numerics(gelu="fast")
    with pytest.raises(ValueError, match="fp32, bf16, fp16"):
        Numerics(precision="fp8")


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
def test_blend_is_in_the_host_dtype_and_accurate_for_every_dtype_pair(host_dtype, seed_dtype):
    torch.manual_seed(0)
    host, seed = torch.randn(64, 16).to(host_dtype), torch.randn(64, 16).to(seed_dtype)
    alpha = torch.tensor(0.3)
    out = blend_add(host, seed, alpha)
    assert out.dtype == host_dtype
    ref = host.double() + 0.3 * (seed.double() - host.double())
    tol = {torch.float32: 1e-5, torch.bfloat16: 3e-2, torch.float16: 3e-3}
    # the seed is rounded to the host dtype first, so the error is the coarser of the two dtypes
    assert (out.double() - ref).abs().max() < 4 * max(tol[host_dtype], tol[seed_dtype])


def test_mixed_dtypes_need_the_cast_and_work_under_autocast():
    host, seed = torch.randn(8, 4), torch.randn(8, 4, dtype=torch.bfloat16)
    with pytest.raises(RuntimeError):
        torch.lerp(host, seed, torch.tensor(0.5))  # why blend_add casts: lerp needs equal dtypes
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for cast in ("always", "conditional"):
            out = blend_add(host, seed, torch.tensor(0.5), cast=cast)
            assert out.dtype == torch.float32


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
