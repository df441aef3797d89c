"""blend_add: cast cost, fused alternative and correctness (B2-PT-02: "Benchmark blend_add with and
without conditional conversion", "Verify correctness across float16, bfloat16, float32 inputs").

Policies compared (all compute ``lerp(host, seed, clamp(alpha, 0, 1))`` in the host dtype):

- ``always``: esper_exp.blend.blend_add(cast="always"): ``.to(host dtype)`` on seed and alpha;
- ``conditional``: blend_add(cast="conditional"): cast only when the dtypes differ (ticket option A);
- ``compiled``: ``torch.compile`` of blend_add(cast="conditional"): Inductor fuses cast, clamp and
  lerp into one pointwise kernel that reads host and seed once and writes the output once;
- ``none``: bare ``torch.lerp`` without casts (ticket option B), for correctness only: it raises on
  mixed dtypes.

Roofline: the fewest bytes a blend must move (host read + seed read + output write, each once) over
the device-to-device copy bandwidth measured in the same run.
"""

from __future__ import annotations

import functools
import itertools

import torch

from esper_exp.bench.timing import time_twice
from esper_exp.blend import blend_add
from esper_exp.numerics import DTYPES, Numerics

POLICIES = ("always", "conditional", "compiled")
# (host dtype, seed dtype) cases for timing: same-dtype, and what autocast produces
TIMING_CASES = (("fp32", "fp32"), ("bf16", "bf16"), ("fp32", "bf16"))
# (rows, features): one PPO minibatch of d=64 features up to tens of millions of elements
SIZES_FULL = ((64, 64), (2048, 64), (4096, 384), (16384, 384), (65536, 384), (131072, 384))
SIZES_QUICK = ((64, 64), (2048, 64))


@functools.lru_cache(maxsize=None)
def compiled_blend():
    return torch.compile(functools.partial(blend_add, cast="conditional"), dynamic=False)


def blend_fn(policy: str):
    if policy == "compiled":
        return compiled_blend()
    if policy == "none":
        return lambda h, s, a: torch.lerp(h, s, a.clamp(0.0, 1.0))
    return functools.partial(blend_add, cast=policy)


def min_bytes(numel: int, host: str, seed: str) -> int:
    size = lambda d: torch.tensor([], dtype=DTYPES[d]).element_size()  # noqa: E731
    return numel * (2 * size(host) + size(seed))  # read host, read seed, write output (host dtype)


def to_allocates(device: torch.device) -> dict:
    """Does ``Tensor.to(dtype)`` copy when the dtype already matches? (the ticket says it 'creates a
    new tensor'; the PyTorch reviewer says it is a no-op)."""
    x = torch.randn(1024, 64, device=device)
    alpha = torch.tensor(0.3, device=device)
    out = {}
    for name, t, dtype in (("features_same", x, torch.float32), ("alpha_same", alpha, torch.float32), ("features_other", x, torch.bfloat16)):
        before = torch.cuda.memory_allocated(device) if device.type == "cuda" else None
        y = t.to(dtype)
        after = torch.cuda.memory_allocated(device) if device.type == "cuda" else None
        out[name] = {
            "returns_self": y is t,
            "same_data_ptr": y.data_ptr() == t.data_ptr(),
            "bytes_allocated": None if before is None else after - before,
        }
        del y
    return out


def correctness(device: torch.device, compiled: bool = True) -> list[dict]:
    """Every cast policy for every (host, seed, alpha) dtype triple against a float64 lerp of the same
    inputs. Error unit: the host dtype's eps times max |reference| (the output is in the host dtype, so
    about 1 unit is the best possible). Alpha values include the clamp ends and out-of-range values."""
    gen = torch.Generator(device=device).manual_seed(0)
    alphas = (0.0, 0.3, 0.5, 0.7, 1.0, -0.2, 1.7)
    policies = ["always", "conditional", "none"] + (["compiled"] if compiled else [])
    rows = []
    for h, s, a in itertools.product(("fp32", "bf16", "fp16"), repeat=3):
        host = (torch.randn(512, 64, device=device, generator=gen) * 3).to(DTYPES[h])
        seed = (torch.randn(512, 64, device=device, generator=gen) * 3).to(DTYPES[s])
        # the compiled blend is checked with an fp32 alpha (what the alpha controller produces): each
        # dtype combination is a compilation
        for policy in (p for p in policies if p != "compiled" or a == "fp32"):
            row = {"host": h, "seed": s, "alpha": a, "policy": policy}
            worst, ends_exact = 0.0, True
            try:
                for av in alphas:
                    alpha = torch.tensor(av, device=device, dtype=DTYPES[a])
                    out = blend_fn(policy)(host, seed, alpha)
                    if out.dtype != host.dtype:
                        raise TypeError(f"output dtype {out.dtype} != host dtype {host.dtype}")
                    # reference: float64 lerp of the inputs as given; the clamp and the alpha value are
                    # taken after alpha's rounding to its own dtype and to the host dtype, as any cast
                    # policy must
                    a_eff = alpha.to(host.dtype).double().clamp(0, 1)
                    ref = torch.lerp(host.double(), seed.to(host.dtype).double(), a_eff)
                    unit = torch.finfo(host.dtype).eps * ref.abs().max().item()
                    worst = max(worst, (out.double() - ref).abs().max().item() / unit)
                    if av <= 0.0:
                        ends_exact &= torch.equal(out, host)
                    if av >= 1.0:
                        ends_exact &= torch.equal(out, seed.to(host.dtype))
                row.update(ok=True, max_err_eps=worst, endpoints_exact=ends_exact)
            except (RuntimeError, TypeError) as exc:
                row.update(ok=False, error=f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
            rows.append(row)
    return rows


def seed_rounding_cost(device: torch.device) -> dict:
    """What casting costs in accuracy when seed and host dtypes differ: a bf16 seed blended into an
    fp32 host is exact (bf16 -> fp32 is lossless); an fp32 seed into a bf16 host is rounded to bf16."""
    gen = torch.Generator(device=device).manual_seed(1)
    host32 = torch.randn(4096, device=device, generator=gen)
    seed32 = torch.randn(4096, device=device, generator=gen)
    alpha = torch.tensor(0.5, device=device)
    ref = torch.lerp(host32.double(), seed32.double(), 0.5)
    out_bf16_host = blend_add(host32.bfloat16(), seed32, alpha)
    return {
        "fp32_host_bf16_seed_exact_upcast": torch.equal(seed32.bfloat16().to(torch.float32).bfloat16(), seed32.bfloat16()),
        "bf16_host_fp32_seed_rel_err": ((out_bf16_host.double() - ref).norm() / ref.norm()).item(),
    }


def autocast_lerp_mixed(device: torch.device) -> dict:
    """Does autocast reconcile a mixed-dtype lerp by itself? (lerp is on no autocast list). Under the
    autocast a bf16 policy forward enters."""
    host = torch.randn(8, 8, device=device)
    seed = torch.randn(8, 8, device=device, dtype=torch.bfloat16)
    alpha = torch.tensor(0.5, device=device)
    try:
        with Numerics(precision="bf16", device_type=device.type).autocast():
            torch.lerp(host, seed, alpha)
        return {"raises": False}
    except RuntimeError as exc:
        return {"raises": True, "error": str(exc).splitlines()[0][:200]}


def speed(device: torch.device, quick: bool, deadline, bandwidth_gbps: float | None) -> list[dict]:
    timing = dict(warmup=3, min_reps=5, max_reps=50, target_s=0.02) if quick else dict(warmup=10, min_reps=20, max_reps=5000, target_s=0.1)
    sizes = SIZES_QUICK if quick else (SIZES_FULL if device.type == "cuda" else SIZES_FULL[:4])
    policies = ("always", "conditional") if quick else POLICIES
    rows = []
    gen = torch.Generator(device=device).manual_seed(0)
    for (r, d), (h, s) in itertools.product(sizes, TIMING_CASES):
        host = torch.randn(r, d, device=device, generator=gen).to(DTYPES[h])
        seed = torch.randn(r, d, device=device, generator=gen).to(DTYPES[s])
        alpha = torch.tensor(0.3, device=device)  # fp32, as the alpha controller produces
        nbytes = min_bytes(r * d, h, s)
        for policy in policies:
            row = {"rows": r, "features": d, "numel": r * d, "host": h, "seed": s, "policy": policy, "min_bytes": nbytes}
            if deadline.expired():
                row["skipped"] = "time budget"
                rows.append(row)
                continue
            fn = blend_fn(policy)
            try:
                t = time_twice(lambda: fn(host, seed, alpha), device, **timing)
                row.update(t)
                t_us = t.get("device_us", t["median_us"])  # device time where measured (CUDA)
                row["achieved_gbps"] = nbytes / (t_us * 1e-6) / 1e9
                if bandwidth_gbps:
                    roof_us = nbytes / (bandwidth_gbps * 1e9) * 1e6
                    row.update(roofline_us=roof_us, x_roofline=t_us / roof_us)
            except Exception as exc:
                row["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
            rows.append(row)
    return rows


def run(device: torch.device, quick: bool, deadline, bandwidth_gbps: float | None) -> dict:
    return {
        "to_allocates": to_allocates(device),
        "autocast_lerp_mixed": autocast_lerp_mixed(device),
        "seed_rounding_cost": seed_rounding_cost(device),
        "correctness": correctness(device, compiled=not quick),
        "speed": speed(device, quick, deadline, bandwidth_gbps),
    }
