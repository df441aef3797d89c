"""experiments/gpu_throughput/runs_pack.py: a device call's runs come back in parts of bounded size, with only the
files changed since the previous call's pack; unpacking every call's parts in call order gives the sweep's files
(less checkpoints and drift snapshots) byte for byte; damaged or missing input is refused before anything is
written."""

import io
import os
import sys
import tarfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments" / "gpu_throughput"))
import runs_pack  # noqa: E402

OLD = time.time() - 600  # the files a previous call sent: stamped well before its pack


def _sweep(root: Path) -> Path:
    sweep = Path("outputs/sweeps/s")
    files = {"a-exact-fp32/seed=1/run.json": b'{"status": "completed"}',
             "a-exact-fp32/seed=1/metrics.jsonl": b'{"update": 1}\n' * 300,
             "a-exact-fp32/seed=1/.hydra/config.yaml": b"seed: 1\n",
             "a-tanh-fp32/seed=1/run.json": b'{"status": "running"}',
             "a-tanh-fp32/seed=1/probe.jsonl": os.urandom(3000),  # incompressible: several parts below
             "a-tanh-fp32/seed=1/checkpoints/ckpt-00005.pt": b"weights",
             "a-tanh-fp32/seed=1/checkpoints/ckpt-00005.pt.sha256": b"abc",
             "a-tanh-fp32/seed=1/drift/snapshot-10.pt": b"snapshot"}
    for rel, data in files.items():
        p = root / sweep / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        os.utime(p, (OLD, OLD))
    return sweep


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_calls_in_order_give_the_runs_and_each_sends_only_what_changed(tmp_path, monkeypatch):
    box, dev = tmp_path / "box", tmp_path / "dev"
    box.mkdir()
    dev.mkdir()
    sweep = _sweep(box)
    monkeypatch.chdir(box)
    marker = tmp_path / "packed"
    first = runs_pack.pack(sweep, tmp_path / "call1", since=marker, part_mb=0.001)  # no marker yet: everything
    assert len(first) > 1 and all(p.stat().st_size <= 1000 for p in first)
    assert marker.stat().st_mtime_ns < time.time_ns()
    run = sweep / "a-tanh-fp32/seed=1"
    (run / "metrics.jsonl").write_bytes(b'{"update": 1}\n')  # the running run writes on
    (run / "run.json").write_bytes(b'{"status": "completed"}')
    (run / "checkpoints/ckpt-00010.pt").write_bytes(b"newer weights")
    runs_pack.pack(sweep, tmp_path / "call2", since=marker)
    with tarfile.open(tmp_path / "call2" / "runs.tgz.part-000") as tar:
        assert sorted(tar.getnames()) == [str(run / "metrics.jsonl"), str(run / "run.json")]
    for call in ("call1", "call2"):
        assert runs_pack.unpack(tmp_path / call, dev) == 0
    want = {k: v for k, v in _tree(box).items() if "/checkpoints/" not in k and "/drift/" not in k}
    assert _tree(dev) == want and len(want) == 6


def test_without_a_marker_every_call_sends_everything(tmp_path, monkeypatch):
    sweep = _sweep(tmp_path)
    monkeypatch.chdir(tmp_path)
    for call in ("c1", "c2"):
        runs_pack.pack(sweep, tmp_path / call)
        with tarfile.open(tmp_path / call / "runs.tgz.part-000") as tar:
            assert len(tar.getnames()) == 5


def test_an_older_single_archive_is_read_and_bad_input_refused(tmp_path, capsys):
    old = tmp_path / "old"
    old.mkdir()
    with tarfile.open(old / "runs.tar.gz", "w:gz") as tar:
        info = tarfile.TarInfo("outputs/sweeps/s/a/seed=1/run.json")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"{}"))
    dest = tmp_path / "dev"
    assert runs_pack.unpack(old, dest) == 0 and (dest / "outputs/sweeps/s/a/seed=1/run.json").read_bytes() == b"{}"
    assert runs_pack.unpack(tmp_path / "dev", tmp_path / "x") == 2
    assert "holds no runs.tgz.part-*" in capsys.readouterr().err
    bad = tmp_path / "bad"
    bad.mkdir()
    with tarfile.open(bad / "runs.tgz.part-000", "w:gz") as tar:
        for name in ("outputs/ok.json", "../escape.json"):
            info = tarfile.TarInfo(name)
            info.size = 2
            tar.addfile(info, io.BytesIO(b"{}"))
    assert runs_pack.unpack(bad, tmp_path / "y") == 1
    assert "../escape.json is not a plain file inside the checkout" in capsys.readouterr().err
    assert not (tmp_path / "y").exists() and not (tmp_path / "escape.json").exists()
