"""GELU numerics against float64 (issue 5, item 3): checks that fail if the comparison is mis-wired."""

import math

import pytest
import torch

from esper_exp.bench import numerics
from esper_exp.bench.policy_probe import cartpole_step, record_activations, train_probe
from esper_exp.seeds import make_seed

DEV = torch.device("cpu")


@pytest.fixture(scope="module")
def grid_errors():
    return numerics.gelu_errors(torch.linspace(-10, 10, 1 << 16, dtype=torch.float64), ("fp32", "bf16", "fp16"), DEV)


def test_tanh_gap_in_float64_is_4_7e_4_at_2_7(grid_errors):
    # the ticket says "~1e-4"; the float64 maximum is 4.73e-4 near |x| = 2.70 (derivative: 8.7e-4 near 2.02)
    gap = grid_errors["gap_fp64"]
    assert 4.6e-4 < gap["value"]["max_abs"] < 4.8e-4
    assert abs(abs(gap["value"]["at_x"]) - 2.70) < 0.05
    assert 8.5e-4 < gap["grad"]["max_abs"] < 8.9e-4
    assert abs(abs(gap["grad"]["at_x"]) - 2.02) < 0.05


@pytest.mark.parametrize("dtype", ["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("variant", ["exact", "tanh"])
def test_gelu_in_dtype_is_within_one_ulp_of_its_float64_self(grid_errors, dtype, variant):
    eps = torch.finfo({"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]).eps
    err = grid_errors["per_dtype"][dtype][variant]["value_vs_own_fp64"]
    if dtype == "fp32":
        # fp32 is computed natively: absolute error of a few ulp at |y| ~ 1-10 (the exact formula
        # 0.5 x (1 + erf(x / sqrt 2)) cancels in the negative tail, so its *relative* error there is larger)
        assert err["max_abs"] <= 16 * eps
    else:
        # half types are computed in fp32 and rounded once: within one ulp (relative eps) everywhere
        assert err["max_rel"] <= eps
    assert grid_errors["per_dtype"][dtype]["eps"] == eps


def test_gap_is_far_above_fp32_rounding_and_below_bf16_rounding(grid_errors):
    rows = {(r["dtype"], r["quantity"]): r for r in numerics.gap_vs_rounding(grid_errors)}
    assert rows[("fp32", "value")]["ratio_max"] > 100  # in fp32 the approximation is plainly visible
    assert rows[("fp32", "grad")]["ratio_max"] > 100
    assert rows[("bf16", "value")]["ratio_max"] < 0.2  # in bf16 it hides under rounding
    assert rows[("bf16", "grad")]["ratio_max"] < 0.5
    # and a tanh run in bf16 is no further from exact math than an exact run, to within bf16 rounding
    bf16 = grid_errors["per_dtype"]["bf16"]
    assert bf16["tanh"]["value_vs_exact_fp64"]["max_abs"] < 1.2 * bf16["exact"]["value_vs_exact_fp64"]["max_abs"]


def test_seed_deviation_fp32_shows_gap_bf16_hides_it():
    torch.manual_seed(0)
    seed = make_seed("mlp", 64)
    torch.nn.init.normal_(seed.fc2.weight, std=256**-0.5)
    rows = numerics.seed_deviation(seed, torch.randn(512, 64), ["fp32", "bf16"], DEV)
    by = {(r["precision"], r["quantity"]): r for r in rows}
    assert by[("fp32", "branch_out")]["gap_over_rounding"] > 10
    assert by[("fp32", "fc1.weight")]["gap_over_rounding"] > 10
    assert by[("bf16", "branch_out")]["gap_over_rounding"] < 1
    # the reference is float64 and bf16 really runs under autocast: fp32 rounding is ~1e-7, bf16's ~1e-3
    assert 0 < by[("fp32", "branch_out")]["rounding_exact_vs_fp64"] < 1e-5
    assert by[("bf16", "branch_out")]["rounding_exact_vs_fp64"] > 1e-4
    # fc2's bias gradient is the cotangent's column sum: it cannot depend on the GELU variant
    assert by[("fp64", "fc2.bias")]["gap_tanh_vs_exact"] == 0.0
    assert by[("fp64", "fc1.weight")]["gap_tanh_vs_exact"] > 0.0


def test_seed_deviation_is_zero_for_a_newborn_seed_branch():
    # fc2 = 0 at birth: the branch outputs 0 for both variants, so exact and tanh seeds agree exactly
    rows = numerics.seed_deviation(make_seed("mlp_small", 32), torch.randn(64, 32), ["fp32"], DEV)
    by = {(r["precision"], r["quantity"]): r for r in rows}
    assert by[("fp32", "branch_out")]["gap_tanh_vs_exact"] == 0.0
    assert by[("fp32", "fc2.weight")]["gap_tanh_vs_exact"] > 0.0  # but fc2's gradient sees gelu(fc1 x)


def test_cartpole_dynamics_terminate_and_push():
    state = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.25, 0.0], [2.45, 0.0, 0.0, 0.0]])
    nxt, done = cartpole_step(state, torch.tensor([1, 0, 1]))
    assert done.tolist() == [False, True, True]
    assert nxt[0, 1] > 0  # pushing right accelerates the cart to the right
    temp = 10.0 / 1.1  # force / total mass; then the pole's reaction (gymnasium CartPole-v1 equations)
    theta_acc = -temp / (0.5 * (4 / 3 - 0.1 / 1.1))
    x_acc = temp - 0.05 * theta_acc / 1.1
    assert math.isclose(nxt[0, 1].item(), 0.02 * x_acc, rel_tol=1e-5)


def test_probe_policy_learns_and_records_activations():
    probe = train_probe(iterations=4, n_envs=32, horizon=60)
    assert probe["episode_length_last"] > probe["episode_length_first"]
    acts = record_activations(probe["policy"], n_envs=8, horizon=50)
    assert acts["gelu_inputs"].numel() == acts["seed_inputs"].shape[0] * 256
    assert acts["gelu_inputs"].abs().max() > 0


def test_seed_deviation_takes_a_single_seed():
    with pytest.raises(ValueError, match="members=1"):
        numerics.seed_deviation(make_seed("mlp_small", 8, members=2), torch.randn(4, 8), ["fp32"], DEV)
