"""Per-job process state: device, seeds, determinism, threads.

Launchers may run several jobs in one worker process (joblib/loky does), so every job calls
``prepare`` first: it resets everything a previous job in the same process could have left behind.
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch


def resolve_device(name: str, job_num: int | None = None) -> torch.device:
    """auto -> cuda if available else cpu. In a sweep, job i on a machine with k GPUs uses GPU i mod k
    (unless the config names one, e.g. cuda:1)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} requested but CUDA is not available; allowed here: auto, cpu")
    if name == "cuda" and job_num is not None:
        name = f"cuda:{job_num % torch.cuda.device_count()}"
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def prepare(seed: int, device: torch.device, deterministic: bool, threads: int) -> None:
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.cuda.set_device(device)
    torch.use_deterministic_algorithms(deterministic, warn_only=False)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic
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
