"""Per-job process state: device, seeds, determinism, threads, CUDA numerics.

Launchers may run several jobs in one worker process (joblib/loky does), so every job calls
``prepare`` first: it resets everything a previous job in the same process could have left behind.

On CUDA the numerics are pinned on purpose (:func:`pin_cuda_numerics`) rather than left to torch's defaults, and
:func:`cuda_fingerprint` reads back what is in force (flags, GPU, driver, CUDA / cuBLAS / cuDNN versions) for
run.json. CPU runs are untouched by either.
"""

from __future__ import annotations

import ctypes
import functools
import os
import random
import re
import subprocess
from pathlib import Path

import numpy as np
import torch

CUBLAS_WORKSPACE_CONFIG = ":4096:8"  # one of the two settings with which cuBLAS is deterministic (torch's docs)


def resolve_device(name: str, job_num: int | None = None) -> torch.device:
    """auto -> cuda if available else cpu. ``cuda`` without an index becomes ``cuda:<job_num mod #GPUs>`` in a sweep
    (job i on a machine with k GPUs uses GPU i mod k) and ``cuda:0`` otherwise; ``cuda:N`` must name a GPU that
    exists. Raises ValueError (one line, with what is allowed here) when it cannot be honoured."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if not name.startswith("cuda"):
        return torch.device(name)
    if not torch.cuda.is_available():
        raise ValueError(f"device={name!r} requested but CUDA is not available; allowed here: auto, cpu")
    count = torch.cuda.device_count()
    if name == "cuda":
        return torch.device("cuda", (job_num or 0) % count)
    index = name.split(":", 1)[1] if ":" in name else ""
    if not index.isdigit() or int(index) >= count:
        raise ValueError(f"device={name!r} is not a GPU of this machine; allowed here: auto, cpu, cuda, "
                         + ", ".join(f"cuda:{i}" for i in range(count)))
    return torch.device("cuda", int(index))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def pin_cuda_numerics(deterministic: bool) -> dict:
    """Pin every CUDA setting that changes a run's numbers, and return them as :func:`cuda_flags` reads them back.

    Call before the first CUDA context of the process (``CUBLAS_WORKSPACE_CONFIG`` is read when cuBLAS creates its
    handle). What is chosen, and why:

    * TF32 off for matmuls and cuDNN, float32 matmul precision "highest": the fp32 cells are the reference of the
      study and must be IEEE fp32 on every GPU (torch's defaults differ between versions and between the cuBLAS and
      cuDNN switches, so they are set, not assumed).
    * Reduced-precision reductions OFF for bf16 and fp16 matmuls (torch's default is on): cuBLAS then accumulates
      split-K partial sums in fp32. The study asks what bf16/fp16 *autocast* (rounding of inputs and outputs) does
      to training; whether cuBLAS also reduces in half precision is a per-shape, per-GPU heuristic choice that
      would make a cell's numerics depend on the kernel picked for its group size, and fp16 partial sums can
      overflow where the fp32 ones do not. Off gives "bf16/fp16 in, fp32 accumulate" everywhere. fp16
      accumulation (``allow_fp16_accumulation``, torch >= 2.7) is pinned off for the same reason.
    * Deterministic algorithms, cuDNN deterministic and no cuDNN autotuning when ``deterministic`` (the config key,
      on by default; the same switches as on CPU), and ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` always (a value already
      in the environment is kept, and recorded as found).
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE_CONFIG)
    matmul = torch.backends.cuda.matmul
    matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    matmul.allow_bf16_reduced_precision_reduction = False
    matmul.allow_fp16_reduced_precision_reduction = False
    if hasattr(torch._C, "_set_cublas_allow_fp16_accumulation"):
        matmul.allow_fp16_accumulation = False
    _set_determinism(deterministic)
    return cuda_flags()


def _set_determinism(deterministic: bool) -> None:
    torch.use_deterministic_algorithms(deterministic, warn_only=False)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic  # cuDNN autotuning only where determinism is not asked for


def cuda_flags() -> dict:
    """The numerics switches in force now (readable on any torch build, GPU or not)."""
    matmul = torch.backends.cuda.matmul

    def read(obj, name):
        try:
            return getattr(obj, name)
        except (AttributeError, RuntimeError):
            return None

    preferred = read(torch.backends.cuda, "preferred_blas_library")
    return {
        "matmul_allow_tf32": matmul.allow_tf32,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "matmul_fp32_precision": read(matmul, "fp32_precision"),
        "allow_bf16_reduced_precision_reduction": matmul.allow_bf16_reduced_precision_reduction,
        "allow_fp16_reduced_precision_reduction": matmul.allow_fp16_reduced_precision_reduction,
        "allow_fp16_accumulation": read(matmul, "allow_fp16_accumulation"),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
        "preferred_blas_library": None if preferred is None else str(preferred()).split(".")[-1],
    }


@functools.cache
def _driver_version() -> str:
    try:  # the kernel module's version, no subprocess
        m = re.search(r"Kernel Module(?: for \S+)?\s+(\d[\d.]*)", Path("/proc/driver/nvidia/version").read_text())
        if m:
            return m.group(1)
    except OSError:
        pass
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10, check=False)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.splitlines()[0].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return "unavailable"


@functools.cache
def _cuda_driver_api() -> str:
    """The CUDA version the driver supports (cuDriverGetVersion), e.g. '13.0'."""
    try:
        v = ctypes.c_int()
        if ctypes.CDLL("libcuda.so.1").cuDriverGetVersion(ctypes.byref(v)) == 0:
            return f"{v.value // 1000}.{v.value % 1000 // 10}"
    except (OSError, AttributeError):
        pass
    return "unavailable"


@functools.cache
def _cublas_version() -> str:
    """cuBLAS's version (cublasGetProperty) from the libcublas this process has loaded (torch links it), else from
    the one shipped beside torch; 'unavailable (why)' otherwise."""
    try:
        loaded = sorted({line.split()[-1] for line in Path("/proc/self/maps").read_text().splitlines()
                         if "/libcublas.so" in line})
    except OSError:
        loaded = []
    where = ""
    if not loaded:
        site = Path(torch.__file__).resolve().parent.parent
        loaded = sorted(str(p) for p in site.glob("nvidia/cu*/lib/libcublas.so*")) + \
            sorted(str(p) for p in site.glob("nvidia/cublas/lib/libcublas.so*"))
        where = ", beside torch, not loaded by it yet"
    if not loaded:
        return "unavailable (no libcublas loaded or found beside torch)"
    try:
        lib = ctypes.CDLL(loaded[0])
        parts = []
        for prop in (0, 1, 2):  # MAJOR_VERSION, MINOR_VERSION, PATCH_LEVEL
            v = ctypes.c_int()
            if lib.cublasGetProperty(prop, ctypes.byref(v)) != 0:
                return f"unavailable (cublasGetProperty failed in {Path(loaded[0]).name})"
            parts.append(str(v.value))
    except (OSError, AttributeError) as e:
        return f"unavailable ({type(e).__name__}: {e})"
    return f"{'.'.join(parts)} ({Path(loaded[0]).name}{where})"


def cuda_fingerprint(device: torch.device) -> dict:
    """What a CUDA run's numbers depend on beyond its config: the flags in force, the GPU and the software stack."""
    props = torch.cuda.get_device_properties(device)
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {
        "gpu": props.name, "gpu_index": device.index, "capability": f"{props.major}.{props.minor}",
        "gpu_memory_gib": round(props.total_memory / 2**30, 1),
        "driver": _driver_version(), "cuda_driver_api": _cuda_driver_api(),
        "cuda_runtime": torch.version.cuda, "cublas": _cublas_version(), "cudnn": cudnn,
        "flags": cuda_flags(),
    }


def prepare(seed: int, device: torch.device, deterministic: bool, threads: int) -> None:
    if device.type == "cuda":
        pin_cuda_numerics(deterministic)  # before set_device: the first CUDA context of a fresh process
        torch.cuda.set_device(device)
    else:
        _set_determinism(deterministic)
    if threads > 0:
        torch.set_num_threads(threads)
    torch.clear_autocast_cache()
    torch.compiler.reset()  # compiled graphs from a previous job in this process
    seed_everything(seed)


def rng_state() -> dict:
    """The global RNG states (python, numpy legacy, torch), in a form torch.load(weights_only=True) reads."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"python": random.getstate(), "numpy": (kind, torch.from_numpy(keys.copy()), pos, has_gauss, cached),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy(), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
