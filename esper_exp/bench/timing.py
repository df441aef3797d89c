"""How everything in esper-bench is timed, and the two hardware ceilings results are held against.

CPU: ``time.perf_counter`` around each call. CUDA: a pair of ``torch.cuda.Event`` per call, one
synchronize at the end (device time, not launch time). Both: warm-up calls first (compilation,
autotuning, allocator growth and CUDA-graph recording stay out of the numbers), then many timed calls,
and the median. Every benchmark is timed twice (two independent repeats) so the noise is visible:
a difference between variants smaller than the spread between repeats is noise.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable

import torch


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("esper-bench: --device cuda asked for, but torch.cuda.is_available() is False")
    return torch.device(device)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _times_s(fn: Callable[[], object], device: torch.device, reps: int) -> list[float]:
    if device.type == "cuda":
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        for start, end in zip(starts, ends):
            start.record()
            fn()
            end.record()
        torch.cuda.synchronize(device)
        return [s.elapsed_time(e) / 1e3 for s, e in zip(starts, ends)]
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def time_fn(
    fn: Callable[[], object],
    device: torch.device,
    *,
    warmup: int = 5,
    min_reps: int = 10,
    max_reps: int = 1000,
    target_s: float = 0.2,
) -> dict:
    """Median (and 10th/90th percentile) time of one call of ``fn`` in microseconds.

    The number of timed calls is chosen so that they take about ``target_s`` (within
    [min_reps, max_reps]), from the time of the warm-up calls.
    """
    fn()  # the first call compiles / autotunes / records graphs: never part of the estimate
    synchronize(device)
    t0 = time.perf_counter()
    for _ in range(max(warmup, 1)):
        fn()
    synchronize(device)
    per_call = (time.perf_counter() - t0) / max(warmup, 1)
    reps = int(min(max(target_s / max(per_call, 1e-7), min_reps), max_reps))
    times = sorted(_times_s(fn, device, reps))
    q = lambda f: times[min(int(f * len(times)), len(times) - 1)]  # noqa: E731
    return {
        "median_us": statistics.median(times) * 1e6,
        "p10_us": q(0.1) * 1e6,
        "p90_us": q(0.9) * 1e6,
        "reps": reps,
        "timer": "cuda_event" if device.type == "cuda" else "perf_counter",
    }


def device_time_us(fn: Callable[[], object], device: torch.device, calls: int = 10, reps: int = 5) -> float:
    """CUDA only: median device time of one call with the host's launch overhead hidden.

    A ``torch.cuda._sleep`` kernel keeps the GPU busy while the host queues ``calls`` calls between two
    events, so the GPU runs them back to back: what is left is kernel time plus on-device gaps, not the
    Python/dispatcher time per call (which the per-call timing of :func:`time_fn` includes whenever the
    host is slower than the GPU, as it is for small PPO-sized work). The sleep is sized from the
    host's measured enqueue time, twice over."""
    torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize(device)
    calls = max(3, min(calls, int(0.01 / max(time.perf_counter() - t0, 1e-6))))  # ~10 ms of work per rep
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    host_s = time.perf_counter() - t0  # enqueue time (an upper bound if the GPU was the slower)
    torch.cuda.synchronize(device)
    cycles = int(min(2 * host_s, 0.2) * 2.0e9)  # ~2 GHz SM clock; capped at ~0.2 s of sleep
    out = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda._sleep(cycles)
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        torch.cuda.synchronize(device)
        out.append(start.elapsed_time(end) * 1e3 / calls)
    return statistics.median(out)


def time_twice(fn: Callable[[], object], device: torch.device, **kwargs) -> dict:
    """Two independent repeats of :func:`time_fn`; ``median_us`` is the smaller of the two medians and
    ``spread`` = |r1 - r2| / min(r1, r2), the noise any comparison must beat. On CUDA also
    ``device_us`` (:func:`device_time_us`, two repeats): the per-call time with launch overhead hidden."""
    first = time_fn(fn, device, **kwargs)
    second = time_fn(fn, device, **{**kwargs, "warmup": 2})
    m1, m2 = first["median_us"], second["median_us"]
    extra = {}
    if device.type == "cuda":
        d1, d2 = device_time_us(fn, device), device_time_us(fn, device)
        extra = {"device_us": min(d1, d2), "device_repeats_us": [d1, d2], "device_spread": abs(d1 - d2) / max(min(d1, d2), 1e-12)}
    return {
        **extra,
        "median_us": min(m1, m2),
        "repeats_us": [m1, m2],
        "spread": abs(m1 - m2) / max(min(m1, m2), 1e-12),
        "reps": [first["reps"], second["reps"]],
        "timer": first["timer"],
    }


def matmul_ceiling(device: torch.device, dtype: torch.dtype, n: int, **timing) -> dict:
    """Achieved TFLOP/s of one large square matmul (random data, not zeros) in ``dtype``: the ceiling
    that seed-MLP throughput is held against. fp32 on CUDA is true fp32 (TF32 left off, as torch
    defaults to), so fp32 figures are against an fp32 ceiling."""
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    t = time_twice(lambda: torch.mm(a, b), device, **timing)
    return {"n": n, "dtype": str(dtype).removeprefix("torch."), "tflops": 2 * n**3 / (t["median_us"] * 1e-6) / 1e12, **t}


def copy_bandwidth(device: torch.device, nbytes: int, **timing) -> dict:
    """Device-memory bandwidth, counting bytes read plus written: a large device-to-device copy
    (``dst.copy_(src)``) and a STREAM-style add (``torch.add(a, b, out=c)``, 3 streams); ``gbps`` is the
    larger, the roofline for memory-bound kernels such as blend_add. (On the 2-core CPU copy_ can be the
    slower of the two, so it alone would understate the roofline.)"""
    n = nbytes // 4
    src, src2 = torch.rand(n, device=device), torch.rand(n, device=device)
    dst = torch.empty_like(src)
    t_copy = time_twice(lambda: dst.copy_(src), device, **timing)
    t_add = time_twice(lambda: torch.add(src, src2, out=dst), device, **timing)
    copy_gbps = 2 * n * 4 / (t_copy["median_us"] * 1e-6) / 1e9
    add_gbps = 3 * n * 4 / (t_add["median_us"] * 1e-6) / 1e9
    return {"nbytes": nbytes, "gbps": max(copy_gbps, add_gbps), "copy_gbps": copy_gbps, "add_gbps": add_gbps, "copy": t_copy, "add": t_add}


def machine_info(device: torch.device) -> dict:
    info = {
        "device": str(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            gpu=torch.cuda.get_device_name(device),
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            sm_count=props.multi_processor_count,
            cuda=torch.version.cuda,
        )
        try:
            import triton

            info["triton"] = triton.__version__
        except ImportError:
            pass
    else:
        try:
            with open("/proc/cpuinfo") as f:
                for line in f:
                    if line.startswith("model name"):
                        info["cpu"] = line.split(":", 1)[1].strip()
                        break
        except OSError:
            pass
    return info


class Deadline:
    """A time budget shared by the parts of one run: configurations past it are recorded as skipped."""

    def __init__(self, budget_s: float | None):
        self.end = None if budget_s is None else time.monotonic() + budget_s

    def expired(self) -> bool:
        return self.end is not None and time.monotonic() > self.end
