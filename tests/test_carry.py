"""experiments/gpu_throughput/carry.py: a sweep's state carried from one lent GPU box to the next (the study's runs
outlive a box only this way). Packed: every file but older checkpoints, finished runs' checkpoints and drift
snapshots, in parts of a given size;
unpacked: bitwise the same files where they were; refused over an existing sweep directory or for a file outside it."""

import importlib.util
import io
import tarfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("carry", ROOT / "experiments" / "gpu_throughput" / "carry.py")
carry = importlib.util.module_from_spec(spec)
spec.loader.exec_module(carry)


def _sweep(root: Path) -> dict[str, bytes]:
    """A sweep directory: two interrupted runs and a completed one, each with two checkpoints (the trainer keeps two)
    and drift snapshots; sweep files."""
    files = {"outputs/sweeps/s/multirun.yaml": b"x: 1\n", "outputs/sweeps/s/summary.json": b"{}"}
    for run in ("a-exact-fp32/seed=1", "a-tanh-fp16/seed=2", "a-tanh-fp32/seed=3"):
        d = f"outputs/sweeps/s/{run}"
        files[f"{d}/run.json"] = b'{"status": "completed"}' if run.endswith("3") else b'{"status": "interrupted"}'
        files[f"{d}/metrics.jsonl"] = b'{"update": 1}\n' * 50
        rng = np.random.default_rng(len(run))  # incompressible, like weights
        for u, payload in ((25, rng.bytes(40_000)), (50, rng.bytes(40_000))):  # the newest is 50
            files[f"{d}/checkpoints/ckpt-{u:08d}.pt"] = payload
            files[f"{d}/checkpoints/ckpt-{u:08d}.pt.sha256"] = f"sha-{u}".encode()
        files[f"{d}/drift/snap-00000010.pt"] = b"snapshot"
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return files


def test_pack_keeps_the_newest_checkpoint_and_unpack_restores_the_files(tmp_path, monkeypatch):
    box1, box2 = tmp_path / "box1", tmp_path / "box2"
    box1.mkdir(), box2.mkdir()
    files = _sweep(box1)
    monkeypatch.chdir(box1)
    parts = carry.pack(Path("outputs/sweeps/s"), tmp_path / "back", part_mb=0.05)
    assert len(parts) > 1 and all(p.stat().st_size <= 50_000 for p in parts)  # split into parts of the given size
    monkeypatch.chdir(box2)
    carry.unpack(tmp_path / "back", Path("outputs/sweeps/s"))
    got = {str(p.relative_to(box2)): p.read_bytes() for p in box2.rglob("*") if p.is_file()}
    kept = {n: d for n, d in files.items() if "/drift/" not in n and "ckpt-00000025" not in n
            and not ("seed=3/checkpoints" in n)}  # a completed run's checkpoints are not needed to go on
    assert got == kept
    with pytest.raises(SystemExit, match="exists already"):  # a warm box's newer state is never overwritten
        carry.unpack(tmp_path / "back", Path("outputs/sweeps/s"))


def test_unpack_refuses_a_file_outside_the_sweep(tmp_path, monkeypatch):
    bad = tmp_path / "bad"
    bad.mkdir()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("outputs/sweeps/other/run.json")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"{}"))
    (bad / f"{carry.PREFIX}000").write_bytes(buf.getvalue())
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match="not inside"):
        carry.unpack(bad, Path("outputs/sweeps/s"))
    assert not (tmp_path / "outputs" / "sweeps" / "other").exists()
