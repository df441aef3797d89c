"""Seed MLP speed, exact vs tanh GELU (B3-PT-05: "Profile MLP forward pass with exact vs approximate GELU").

Times ``x + fc2(gelu(fc1(x)))`` forward (no_grad, as in a PPO rollout) and forward+backward (input and
parameter gradients for a fixed cotangent, as in a PPO update), for the ``mlp_small`` (2x) and ``mlp``
(4x) seeds, per precision (fp32; bf16/fp16 through autocast over fp32 master weights, as the trainer
runs them), eager and compiled. Throughput is reported in TFLOP/s (matmul FLOPs only) and as a fraction
of a large matmul measured in the same run.

The seed's parameters are the trainer's own (:func:`esper_exp.seeds.make_seed`, one member: weights
[1, out, in], inputs [1, rows, dim]), and each call runs under a :class:`~esper_exp.numerics.Numerics` built for
its (GELU variant, precision), as the policy's forwards do: one ``torch.baddbmm`` per layer, as the seed computes
a member of a group.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch

from esper_exp.bench.timing import Deadline, time_twice
from esper_exp.numerics import GELU_VARIANTS, Numerics
from esper_exp.seeds import BLUEPRINTS, MLPSeed, make_seed

EXPANSION = BLUEPRINTS  # blueprint -> hidden expansion
# mode -> torch.compile keyword arguments (None: eager)
MODES = {
    "eager": None,
    "compile": {},
    "max-autotune": {"mode": "max-autotune-no-cudagraphs"},
    "cudagraphs": {"mode": "reduce-overhead"},  # compile + CUDA graphs (CUDA only)
}
PASSES = ("fwd", "fwdbwd")


def seed_flops(blueprint: str, dim: int, rows: int, pass_: str) -> int:
    """Matmul FLOPs of one call: two matmuls forward; backward does twice the forward (input and
    weight gradients)."""
    fwd = 2 * 2 * rows * dim * dim * EXPANSION[blueprint]
    return fwd if pass_ == "fwd" else 3 * fwd


def seed_forward(seed: MLPSeed, numerics: Numerics, compile_kwargs: dict | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """``x -> seed(x, numerics)`` with ``numerics`` fixed; compiled with
    ``torch.compile(**compile_kwargs)`` unless that is None. Dynamo sees ``numerics`` as a closure constant (it
    guards on it), not as a graph input, so the GELU variant is baked into the generated code. Call it under
    ``numerics.autocast()``, as the policy calls its (compiled) stacks."""

    def forward(x: torch.Tensor) -> torch.Tensor:
        return seed(x, numerics)

    return forward if compile_kwargs is None else torch.compile(forward, dynamic=False, **compile_kwargs)


def make_step(seed: MLPSeed, x, cotangent, numerics: Numerics, pass_: str, mode: str):
    """A zero-argument callable doing one timed step."""
    fn = seed_forward(seed, numerics, MODES[mode])
    params = [x, *seed.parameters()]
    mark = torch.compiler.cudagraph_mark_step_begin if mode == "cudagraphs" else (lambda: None)

    if pass_ == "fwd":

        def step():
            mark()
            with torch.no_grad(), numerics.autocast():
                return fn(x)

    else:

        def step():
            mark()
            with numerics.autocast():
                y = fn(x)
            return torch.autograd.grad(y, params, cotangent)

    return step


def configs(device: torch.device, quick: bool, precisions, variants=GELU_VARIANTS):
    """(blueprint, dim, rows, precision, mode) in priority order: eager everywhere first, then the
    compiled modes on a few shapes (each compiled entry costs a compilation)."""
    if quick:
        shapes = [("mlp_small", 64, 64), ("mlp", 64, 256)]
        modes = ["eager"]
    else:
        shapes = [(b, d, r) for b in ("mlp_small", "mlp") for d in (64, 384) for r in (64, 2048, 65536)]
        if device.type == "cpu":
            shapes = [s for s in shapes if not (s[1] == 384 and s[2] == 65536)]
        modes = ["eager"]
    out = [(*s, p, m) for m in modes for s in shapes for p in precisions]
    if not quick:
        # compiled modes on two shapes: the policy size (launch-bound) and a large one (compute-bound);
        # in priority order, as a time budget may cut the tail: bf16 first (the trainer's AMP dtype)
        shapes = [("mlp_small", 64, 2048), ("mlp", 384, 65536 if device.type == "cuda" else 4096)]
        order = [p for p in ("bf16", "fp32", "fp16") if p in precisions]
        modes = ["compile", "cudagraphs", "max-autotune"] if device.type == "cuda" else ["compile", "max-autotune"]
        for mode in modes:
            for p in order:
                if mode != "compile" and p == "fp16":
                    continue
                out += [(*s, p, mode) for s in shapes]
    return out


def bench_one(blueprint, dim, rows, precision, variant, mode, pass_, device, timing) -> dict:
    numerics = Numerics(gelu=variant, precision=precision, device_type=device.type)
    torch.manual_seed(0)
    seed = make_seed(blueprint, dim).to(device)  # one member: weights [1, out, in]
    torch.nn.init.normal_(seed.fc2.weight, std=dim**-0.5)  # a trained seed, not the zero-init identity
    x = torch.randn(1, rows, dim, device=device, requires_grad=True)
    cotangent = torch.randn(1, rows, dim, device=device)
    step = make_step(seed, x, cotangent, numerics, pass_, mode)
    t = time_twice(step, device, **timing)
    flops = seed_flops(blueprint, dim, rows, pass_)
    return {**t, "tflops": flops / (t.get("device_us", t["median_us"]) * 1e-6) / 1e12, "flops": flops}


def run(device: torch.device, quick: bool, deadline: Deadline, precisions, ceilings: dict, modes=None) -> dict:
    timing = dict(warmup=3, min_reps=5, max_reps=50, target_s=0.02) if quick else dict(warmup=10, min_reps=20, max_reps=2000, target_s=0.05 if device.type == "cuda" else 0.1)
    records = []
    for (blueprint, dim, rows, precision, mode), pass_, variant in itertools.product(
        [c for c in configs(device, quick, precisions) if modes is None or c[4] in modes], PASSES, GELU_VARIANTS
    ):
        rec = dict(blueprint=blueprint, dim=dim, rows=rows, precision=precision, mode=mode, pass_=pass_, gelu=variant)
        if deadline.expired():
            rec["skipped"] = "time budget"
        else:
            try:
                rec.update(bench_one(blueprint, dim, rows, precision, variant, mode, pass_, device, timing))
                ceiling = ceilings.get(precision)
                if ceiling:
                    rec["frac_of_matmul_ceiling"] = rec["tflops"] / ceiling
            except Exception as exc:  # a mode that fails on this build is a result, not a crash
                rec["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
            finally:
                torch._dynamo.reset()
        records.append(rec)
    return {"records": records, "speedups": speedups(records)}


def speedups(records) -> list[dict]:
    """tanh speed-up (time exact / time tanh) per configuration, with the noise it must beat."""
    key = lambda r: (r["blueprint"], r["dim"], r["rows"], r["precision"], r["mode"], r["pass_"])  # noqa: E731
    by = {}
    for r in records:
        if "median_us" in r:
            by.setdefault(key(r), {})[r["gelu"]] = r
    out = []
    for k, pair in by.items():
        if set(pair) == {"exact", "tanh"}:
            e, t = pair["exact"], pair["tanh"]
            out.append(
                dict(
                    zip(("blueprint", "dim", "rows", "precision", "mode", "pass_"), k),
                    exact_us=e["median_us"],
                    tanh_us=t["median_us"],
                    tanh_speedup=e["median_us"] / t["median_us"],
                    noise=max(e["spread"], t["spread"]),
                    exact_tflops=e["tflops"],
                    exact_frac_ceiling=e.get("frac_of_matmul_ceiling"),
                )
            )
            if "device_us" in e and "device_us" in t:
                out[-1].update(
                    exact_device_us=e["device_us"],
                    tanh_device_us=t["device_us"],
                    device_speedup=e["device_us"] / t["device_us"],
                    device_noise=max(e["device_spread"], t["device_spread"]),
                )
    return out
