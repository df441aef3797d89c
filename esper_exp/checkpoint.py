"""Checkpoint files: atomic, integrity-checked, and safe to load.

A checkpoint is a dict of tensors and plain Python values saved with ``torch.save`` and loaded with
``torch.load(weights_only=True)``, which refuses anything that could run code. Each file is written to
a temp name, fsynced and renamed, with its SHA-256 beside it; loading verifies the hash first, so a
truncated or corrupt file is reported and the previous good checkpoint is used instead.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Any

import torch

KEEP = 2  # newest checkpoints kept: the latest and one fallback


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save(directory: Path, update: int, state: dict[str, Any]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getvalue()
    path = directory / f"ckpt-{update:08d}.pt"
    _atomic_write(path, data)
    _atomic_write(path.with_name(path.name + ".sha256"), hashlib.sha256(data).hexdigest().encode())
    for old in sorted(directory.glob("ckpt-*.pt"))[:-KEEP]:
        old.unlink(missing_ok=True)
        old.with_name(old.name + ".sha256").unlink(missing_ok=True)
    return path


def load_file(path: Path) -> dict[str, Any]:
    """Load one checkpoint; raise ValueError saying why if it is missing, truncated or corrupt."""
    data = path.read_bytes()
    digest_file = path.with_name(path.name + ".sha256")
    if not digest_file.exists():
        raise ValueError(f"{path.name}: no .sha256 beside it (the write did not finish)")
    if hashlib.sha256(data).hexdigest() != digest_file.read_text().strip():
        raise ValueError(f"{path.name}: SHA-256 mismatch (truncated or corrupt file)")
    try:
        return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except Exception as e:  # an unsafe or unreadable payload
        raise ValueError(f"{path.name}: cannot be loaded safely ({type(e).__name__}: {e})") from None


def load_latest(directory: Path, warn=print) -> tuple[dict[str, Any], Path] | None:
    """Newest checkpoint that passes its checks, warning about each bad one skipped; None if none is good."""
    for path in sorted(directory.glob("ckpt-*.pt"), reverse=True):
        try:
            return load_file(path), path
        except (ValueError, OSError) as e:
            warn(f"warning: skipping checkpoint {e}; falling back to the previous one")
    return None
