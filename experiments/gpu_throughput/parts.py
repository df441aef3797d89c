"""Bytes cut into files a device call can return (at most 8 files of 16 MiB come back), and joined again: the one
mechanism behind carry.py's carry.txz.part-* and runs_pack.py's runs.tgz.part-*. Stdlib only."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path


def write_parts(data: bytes, out: Path, prefix: str, part_mb: float) -> list[Path]:
    """OUT/<prefix>000, 001, ... of at most part_mb MB each (earlier <prefix>* files there removed first)."""
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob(prefix + "*"):
        old.unlink()
    size, paths = int(part_mb * 1e6), []
    for i in range(0, len(data), size):
        paths.append(out / f"{prefix}{i // size:03d}")
        paths[-1].write_bytes(data[i:i + size])
    return paths


def open_parts(paths: list[Path]) -> tarfile.TarFile:
    """The tar archive the parts hold, joined in the order given (any compression tarfile reads)."""
    return tarfile.open(fileobj=io.BytesIO(b"".join(p.read_bytes() for p in paths)), mode="r:*")
