"""experiments/gpu_throughput/carry.py: a sweep's state carried from one lent GPU box to the next (the study's runs
outlive a box only this way). Packed: every file but older checkpoints, finished runs' checkpoints and drift
snapshots, a completed run's files but its run.json (.hydra/, train.log), in parts of a given size;
unpacked: bitwise the same files where they were; refused over an existing sweep directory or for a file outside it.
Checkpoints travel byte-shuffled in an xz tar (smaller than gzip for float weights); older gzip parts still unpack."""

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
        files[f"{d}/train.log"] = b"2026-11-24 started\n"
        rng = np.random.default_rng(len(run))  # float32 weights (compress little unless shuffled), odd lengths
        for u in (25, 50):  # the newest is 50
            payload = (rng.normal(0, 0.1, 10_000).astype(np.float32).tobytes() + b"tail"[:u % 3 + 1])
            files[f"{d}/checkpoints/ckpt-{u:08d}.pt"] = payload
            files[f"{d}/checkpoints/ckpt-{u:08d}.pt.sha256"] = f"sha-{u}".encode()
        files[f"{d}/drift/snap-00000010.pt"] = b"snapshot"
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return files


def _tgz(name: str, data: bytes) -> bytes:
    """A gzip tar holding one file (the parts format before 2026-11-23, session 7; unpack reads any tar)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


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
            and not ("seed=3/" in n and not n.endswith(("seed=3/run.json", "seed=3/train.log")))}  # completed
    assert got == kept
    assert all(p.name.startswith("carry.txz.part-") for p in parts)
    plain = io.BytesIO()  # the same files in a gzip tar, unshuffled (the format before 2026-11-23, session 7)
    with tarfile.open(fileobj=plain, mode="w:gz") as tar:
        for name in sorted(kept):
            tar.add(box1 / name, arcname=name)
    assert sum(p.stat().st_size for p in parts) < 0.96 * len(plain.getvalue())  # unshuffled xz: ~1.0
    with pytest.raises(SystemExit, match="exists already"):  # a warm box's newer state is never overwritten
        carry.unpack(tmp_path / "back", Path("outputs/sweeps/s"))


def test_pack_takes_the_newest_checkpoint_whose_write_finished(tmp_path, monkeypatch):
    """A sweep packed while it runs (sweep_box.sh DETACH=1) can catch a checkpoint between its file and its .sha256
    (written after it): that run travels with its previous, finished checkpoint, the one a resume can verify."""
    _sweep(tmp_path)
    run = "outputs/sweeps/s/a-exact-fp32/seed=1/checkpoints"
    (tmp_path / run / "ckpt-00000075.pt").write_bytes(b"being written")  # no .sha256 yet
    monkeypatch.chdir(tmp_path)
    got = {str(p) for p in carry.members(Path("outputs/sweeps/s")) if "/checkpoints/" in str(p)}
    assert got == {f"{run}/ckpt-00000050.pt", f"{run}/ckpt-00000050.pt.sha256",
                   "outputs/sweeps/s/a-tanh-fp16/seed=2/checkpoints/ckpt-00000050.pt",
                   "outputs/sweeps/s/a-tanh-fp16/seed=2/checkpoints/ckpt-00000050.pt.sha256"}


def test_unpack_refuses_a_file_outside_the_sweep(tmp_path, monkeypatch):
    bad = tmp_path / "bad"
    bad.mkdir()
    buf = io.BytesIO()  # a good file first, then one outside: nothing at all is written
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name in ("outputs/sweeps/s/run.json", "outputs/sweeps/other/run.json"):
            info = tarfile.TarInfo(name)
            info.size = 2
            tar.addfile(info, io.BytesIO(b"{}"))
    (bad / f"{carry.PREFIX}000").write_bytes(buf.getvalue())
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match="outputs/sweeps/other/run.json is not inside outputs/sweeps/s: nothing unp"):
        carry.unpack(bad, Path("outputs/sweeps/s"))
    assert not (tmp_path / "outputs").exists()


def test_shuffle4_is_undone_for_every_length():
    rng = np.random.default_rng(0)
    for n in range(0, 13):
        data = rng.bytes(n)
        assert carry.unshuffle4(carry.shuffle4(data)) == data
    floats = np.arange(8, dtype=np.float32).tobytes()
    assert carry.shuffle4(floats)[:8] == floats[0::4]  # the low bytes of the 8 words first


def test_older_gzip_parts_still_unpack(tmp_path, monkeypatch):
    old = tmp_path / "old"
    old.mkdir()
    (old / "carry.tgz.part-000").write_bytes(_tgz("outputs/sweeps/s/a/seed=1/checkpoints/ckpt-00000001.pt", b"12345"))
    monkeypatch.chdir(tmp_path)
    carry.unpack(old, Path("outputs/sweeps/s"))
    assert (tmp_path / "outputs/sweeps/s/a/seed=1/checkpoints/ckpt-00000001.pt").read_bytes() == b"12345"


def test_pack_refuses_a_state_too_big_to_carry_and_writes_nothing(tmp_path, monkeypatch, capsys):
    """A carry must travel into the next call beside the wheels (64 MiB): over --max-mb (compressed) nothing is
    packed, one line says why, exit 3. Checkpoints that cannot fit even compressed (a width-384 sweep's 20 are
    ~640 MB) are refused before compressing; a state over the limit before compression but under it after (the 3M-steps
    arm's 63 MB that packed to 34 MB) is packed."""
    _sweep(tmp_path)
    monkeypatch.chdir(tmp_path)
    files = carry.members(Path("outputs/sweeps/s"))
    raw = sum(p.stat().st_size for p in files) / 1e6
    ckpt = sum(p.stat().st_size for p in files if p.suffix == ".pt") / 1e6
    packed = sum(p.stat().st_size for p in carry.pack(Path("outputs/sweeps/s"), tmp_path / "probe", 15)) / 1e6
    assert ckpt * carry.CKPT_RATIO < packed < raw  # the three cases below are distinct

    def refused(max_mb: float) -> str:
        with pytest.raises(SystemExit) as e:
            carry.main(["pack", "outputs/sweeps/s", str(tmp_path / "back"), "--max-mb", f"{max_mb:.6f}"])
        assert e.value.code == 3 and not (tmp_path / "back").exists()
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "2 unfinished run(s)" in err and "--max-mb" in err
        return err

    with monkeypatch.context() as m:  # hopeless: refused without compressing anything
        m.setattr(carry, "shuffle4", lambda data: pytest.fail("compressed a state that cannot fit"))
        assert "checkpoints of" in refused(ckpt * carry.CKPT_RATIO * 0.9)
    assert "compressed" in refused(packed * 0.99)
    paths = carry.pack(Path("outputs/sweeps/s"), tmp_path / "back", part_mb=15, max_mb=packed * 1.01)
    assert packed * 1.01 < raw and [p.read_bytes() for p in paths] == [
        p.read_bytes() for p in sorted((tmp_path / "probe").iterdir())]