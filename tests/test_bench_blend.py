"""blend_add cast policies against float64, and what .to does (issue 5, item 4)."""

import pytest
import torch

from esper_exp.bench import blend as bb
from esper_exp.blend import blend_add

DEV = torch.device("cpu")


@pytest.fixture(scope="module")
def rows():
    return bb.correctness(DEV, compiled=False)


def test_every_cast_policy_matches_float64_for_every_dtype_triple(rows):
    checked = [r for r in rows if r["policy"] in ("always", "conditional")]
    assert len(checked) == 2 * 27
    for r in checked:
        assert r["ok"], r
        assert r["max_err_eps"] <= 1.0, r  # within one host-dtype eps of max|ref|: a single rounding
        assert r["endpoints_exact"], r  # alpha <= 0 gives host, alpha >= 1 gives the (cast) seed, bitwise


def test_lerp_without_cast_fails_exactly_when_host_and_seed_dtypes_differ(rows):
    for r in (r for r in rows if r["policy"] == "none"):
        assert r["ok"] == (r["host"] == r["seed"]), r
        if not r["ok"]:
            assert "expected dtype" in r["error"]


def test_to_same_dtype_returns_self_without_copy():
    res = bb.to_allocates(DEV)
    assert res["features_same"]["returns_self"] and res["features_same"]["same_data_ptr"]
    assert res["alpha_same"]["returns_self"]
    assert not res["features_other"]["same_data_ptr"]


def test_autocast_does_not_reconcile_mixed_lerp():
    assert bb.autocast_lerp_mixed(DEV)["raises"]


def test_casting_a_bf16_seed_into_an_fp32_host_is_lossless():
    res = bb.seed_rounding_cost(DEV)
    assert res["fp32_host_bf16_seed_exact_upcast"]
    assert 1e-4 < res["bf16_host_fp32_seed_rel_err"] < 1e-2  # the other way round rounds to bf16


def test_min_bytes_counts_each_tensor_once():
    assert bb.min_bytes(1000, "fp32", "bf16") == 1000 * (4 + 2 + 4)
    assert bb.min_bytes(1000, "bf16", "bf16") == 1000 * 6


def test_compiled_blend_matches_float64_on_mixed_dtypes():
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(5)
    h = torch.randn(256, 32, generator=g) * 3
    s = (torch.randn(256, 32, generator=g) * 3).bfloat16()
    fn = bb.blend_fn("compiled")
    for av in (0.0, 0.3, 0.8, 1.0, 1.5):
        a = torch.tensor(av)
        out = fn(h, s, a)
        ref = torch.lerp(h.double(), s.double(), min(max(av, 0.0), 1.0))
        assert out.dtype == torch.float32
        assert (out.double() - ref).abs().max() <= torch.finfo(torch.float32).eps * ref.abs().max()
        assert torch.allclose(out, blend_add(h, s, a), rtol=0, atol=4 * torch.finfo(torch.float32).eps * 10)
