"""Numerical equivalence of exact and tanh GELU (B3-PT-05: "Check numerical equivalence (tanh
approximation)"), against float64 references, per dtype.

Three questions, three functions:

- :func:`gelu_errors`: for each variant and dtype, the error of ``gelu(x)`` and of its derivative
  computed in that dtype, against float64 (a) of the same variant (the dtype's own rounding error)
  and (b) of exact GELU (what a run using that variant in that dtype deviates from exact math by),
  and the tanh-vs-exact gap itself in float64.
- :func:`seed_deviation`: the seed MLP's output and parameter gradients, exact vs tanh, per precision
  (fp32, and bf16/fp16 autocast over fp32 weights as the trainer runs: each under the
  :class:`~esper_exp.numerics.Numerics` of its (variant, precision)), next to each precision's own
  error against a float64 exact reference.
- :func:`gap_vs_rounding`: the ratio the ticket needs: the tanh-vs-exact gap over the dtype's own
  rounding error. Below 1, the approximation is hidden under the dtype's rounding.

Inputs are first rounded to the dtype, and the references are computed in float64 from those same
rounded inputs, so input rounding is not counted as GELU error.
"""

from __future__ import annotations

import copy

import torch

from esper_exp.numerics import DTYPES, GELU_VARIANTS, Numerics
from esper_exp.seeds import MLPSeed, make_seed

REL_FLOOR = 1e-2  # relative errors are taken where |reference| >= this (GELU passes through 0)


def _stats(err: torch.Tensor, ref: torch.Tensor) -> dict:
    err, ref = err.abs().double(), ref.abs().double()
    mask = ref >= REL_FLOOR
    rel = err[mask] / ref[mask]
    i = int(err.argmax())
    return {
        "max_abs": err.max().item(),
        "mean_abs": err.mean().item(),
        "max_rel": rel.max().item() if rel.numel() else None,
        "mean_rel": rel.mean().item() if rel.numel() else None,
        "argmax_index": i,
    }


def _value_and_grad(x: torch.Tensor, numerics: Numerics) -> tuple[torch.Tensor, torch.Tensor]:
    """GELU of ``numerics``' variant and its derivative, computed in x's own dtype (no autocast: GELU is
    elementwise, so this is what a seed under autocast computes on fc1's output in that dtype)."""
    x = x.detach().requires_grad_(True)
    y = numerics.apply_gelu(x)
    (g,) = torch.autograd.grad(y.sum(), x)
    return y.detach(), g.detach()


def gelu_errors(x: torch.Tensor, dtypes, device: torch.device) -> dict:
    """Errors of GELU values and derivatives per (variant, dtype) on inputs ``x`` (any float dtype)."""
    x64 = x.to(device=device, dtype=torch.float64)
    ref = {v: _value_and_grad(x64, Numerics(gelu=v, device_type=device.type)) for v in GELU_VARIANTS}
    out = {"n": x.numel(), "x_min": x64.min().item(), "x_max": x64.max().item(), "x_absmean": x64.abs().mean().item()}
    d_val = ref["tanh"][0] - ref["exact"][0]
    d_grad = ref["tanh"][1] - ref["exact"][1]
    out["gap_fp64"] = {
        "value": {**_stats(d_val, ref["exact"][0]), "at_x": x64[int(d_val.abs().argmax())].item()},
        "grad": {**_stats(d_grad, ref["exact"][1]), "at_x": x64[int(d_grad.abs().argmax())].item()},
    }
    out["per_dtype"] = {}
    for name in dtypes:
        numerics = {v: Numerics(gelu=v, precision=name, device_type=device.type) for v in GELU_VARIANTS}
        xd = x64.to(DTYPES[name])
        xr = xd.double()  # the rounded input, in float64
        own = {v: _value_and_grad(xr, numerics[v]) for v in GELU_VARIANTS}
        rows = {}
        for v in GELU_VARIANTS:
            y, g = _value_and_grad(xd, numerics[v])
            rows[v] = {
                "value_vs_own_fp64": _stats(y.double() - own[v][0], own[v][0]),
                "value_vs_exact_fp64": _stats(y.double() - own["exact"][0], own["exact"][0]),
                "grad_vs_own_fp64": _stats(g.double() - own[v][1], own[v][1]),
                "grad_vs_exact_fp64": _stats(g.double() - own["exact"][1], own["exact"][1]),
            }
        # the gap exact-vs-tanh when both are computed in this dtype
        ye, ge = _value_and_grad(xd, numerics["exact"])
        yt, gt = _value_and_grad(xd, numerics["tanh"])
        rows["tanh_minus_exact_in_dtype"] = {
            "value": _stats(yt.double() - ye.double(), own["exact"][0]),
            "grad": _stats(gt.double() - ge.double(), own["exact"][1]),
            "value_bitwise_equal_frac": (yt == ye).double().mean().item(),
        }
        rows["eps"] = torch.finfo(DTYPES[name]).eps
        out["per_dtype"][name] = rows
    return out


def gap_vs_rounding(errors: dict) -> list[dict]:
    """Per dtype: tanh-vs-exact gap (float64) over the dtype's own rounding error of exact GELU."""
    rows = []
    for name, r in errors["per_dtype"].items():
        for what in ("value", "grad"):
            gap = errors["gap_fp64"][what]
            own = r["exact"][f"{what}_vs_own_fp64"]
            rows.append(
                {
                    "dtype": name,
                    "quantity": what,
                    "gap_max_abs": gap["max_abs"],
                    "gap_mean_abs": gap["mean_abs"],
                    "rounding_max_abs": own["max_abs"],
                    "rounding_mean_abs": own["mean_abs"],
                    "ratio_max": gap["max_abs"] / max(own["max_abs"], 1e-300),
                    "ratio_mean": gap["mean_abs"] / max(own["mean_abs"], 1e-300),
                    "tanh_total_err_max_abs": r["tanh"][f"{what}_vs_exact_fp64"]["max_abs"],
                    "exact_total_err_max_abs": r["exact"][f"{what}_vs_exact_fp64"]["max_abs"],
                }
            )
    return rows


def _rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-300)).item()


def _seed_out_grads(seed: MLPSeed, x, cotangent, numerics: Numerics):
    """Branch output (``seed(x) - x``) and parameter gradients for ``cotangent``, under ``numerics``."""
    params = list(seed.parameters())
    with numerics.autocast():
        y = seed(x, numerics)
    grads = torch.autograd.grad(y, params, cotangent.to(y.dtype))
    names = [n for n, _ in seed.named_parameters()]
    return (y - x.to(y.dtype)).detach(), dict(zip(names, [g.detach() for g in grads]))


def seed_deviation(seed: MLPSeed, x: torch.Tensor, precisions, device: torch.device) -> list[dict]:
    """Seed branch output (``out - x``: the residual x would otherwise dominate the norm) and
    parameter gradients: exact vs tanh within each precision, and each precision's own deviation from
    the float64 exact reference. Relative L2 errors, and max abs for the output.

    ``seed`` has one member (K = 1) and ``x`` is [rows, dim]."""
    if seed.members != 1:
        raise ValueError(f"seed_deviation takes a single seed (members=1), got members={seed.members}")
    torch.manual_seed(1)
    seed = seed.to(device)
    x = x.to(device).unsqueeze(0)  # [1, rows, dim]: one member
    cot = torch.randn(x.shape, device=device)
    # float64 reference: a double-precision copy of the seed under fp32 numerics, whose autocast() is
    # torch.autocast(enabled=False), so every op runs in float64
    s64 = copy.deepcopy(seed).double()
    ref_out, ref_g = _seed_out_grads(s64, x.double(), cot.double(), Numerics(gelu="exact", device_type=device.type))
    tanh64_out, tanh64_g = _seed_out_grads(s64, x.double(), cot.double(), Numerics(gelu="tanh", device_type=device.type))
    rows = [
        {
            "precision": "fp64",
            "quantity": q,
            "gap_tanh_vs_exact": _rel_l2(tanh64_out, ref_out) if q == "branch_out" else _rel_l2(tanh64_g[q], ref_g[q]),
        }
        for q in ["branch_out", *ref_g]
    ]
    for p in precisions:
        e_out, e_g = _seed_out_grads(seed, x, cot, Numerics(gelu="exact", precision=p, device_type=device.type))
        t_out, t_g = _seed_out_grads(seed, x, cot, Numerics(gelu="tanh", precision=p, device_type=device.type))
        for q in ["branch_out", *ref_g]:
            e, t, r = (e_out, t_out, ref_out) if q == "branch_out" else (e_g[q], t_g[q], ref_g[q])
            gap, rnd = _rel_l2(t, e), _rel_l2(e, r)
            rows.append(
                {
                    "precision": p,
                    "quantity": q,
                    "gap_tanh_vs_exact": gap,  # both computed at this precision
                    "rounding_exact_vs_fp64": rnd,  # this precision's own error
                    "tanh_vs_fp64_exact": _rel_l2(t, r),
                    "gap_over_rounding": gap / max(rnd, 1e-300),
                    "gap_max_abs": (t.double() - e.double()).abs().max().item(),
                }
            )
    return rows


def run(device: torch.device, quick: bool, deadline, precisions) -> dict:
    from esper_exp.bench.policy_probe import record_activations, train_probe

    out = {}
    n = 1 << (14 if quick else 21)
    grid = torch.linspace(-10, 10, n, dtype=torch.float64)
    out["gelu_grid"] = gelu_errors(grid, precisions, device)
    out["gelu_grid"]["name"] = f"uniform grid of {n} points on [-10, 10]"
    probe = train_probe(iterations=3 if quick else 40, n_envs=32 if quick else 128, horizon=50 if quick else 200)
    acts = record_activations(probe["policy"], n_envs=16 if quick else 256, horizon=50 if quick else 200)
    out["policy"] = {k: v for k, v in probe.items() if k != "policy"}
    a = acts["gelu_inputs"]
    out["gelu_policy"] = gelu_errors(a, precisions, device)
    out["gelu_policy"]["name"] = "fc1 pre-activations of the CartPole probe policy (policy_probe.py)"
    out["gelu_policy"]["quantiles"] = {str(q): a.quantile(q).item() for q in (0.001, 0.01, 0.5, 0.99, 0.999)} if a.numel() < 16_000_000 else None
    out["gap_vs_rounding"] = {"grid": gap_vs_rounding(out["gelu_grid"]), "policy": gap_vs_rounding(out["gelu_policy"])}
    # end to end: the probe's trained seed on its own inputs, and a d=384 4x seed, randomly initialised
    # with fc2 perturbed away from zero (std 1/sqrt(hidden)), on unit-normal inputs
    out["seed_trained_probe"] = seed_deviation(probe["policy"].seed, acts["seed_inputs"][:4096], precisions, device)
    torch.manual_seed(0)
    big = make_seed("mlp", 384)
    torch.nn.init.normal_(big.fc2.weight, std=(4 * 384) ** -0.5)
    torch.nn.init.normal_(big.fc2.bias, std=0.02)
    out["seed_random_perturbed"] = seed_deviation(big, torch.randn(256 if quick else 4096, 384), precisions, device)
    return out
