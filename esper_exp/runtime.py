"""Per-job process state: device, seeds, determinism, threads.

Launchers may run several jobs in one worker process (joblib/loky does), so every job calls
``prepare`` first: it resets everything a previous job in the same process could have left behind.
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} requested but CUDA is not available; allowed here: auto, cpu")
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
