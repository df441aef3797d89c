"""experiments/gpu_throughput/archive.py: a sweep's finished runs kept in git as one deterministic xz tar of their files
(no checkpoints, drift snapshots or lock); unfinished runs left out; a damaged run refused with nothing written;
unpacked byte-for-byte where esper-report reads them, refusing to overwrite a file with other content."""

import importlib.util
import io
import lzma
import tarfile
from pathlib import Path

import pytest

from tests.synthetic_runs import write_run

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("archive", ROOT / "experiments" / "gpu_throughput" / "archive.py")
archive = importlib.util.module_from_spec(spec)
spec.loader.exec_module(archive)


def _sweep(root: Path) -> Path:
    sweep = root / "sweeps" / "study"
    write_run(sweep / "cartpole-exact-fp32" / "seed=1", seed=1)
    write_run(sweep / "cartpole-tanh-fp32" / "seed=1", gelu="tanh", seed=1, status="failed", reason="crashed")
    write_run(sweep / "cartpole-exact-fp32" / "seed=2", seed=2, status="interrupted", stop_at=10_000)
    for d in ("cartpole-exact-fp32/seed=1", "cartpole-exact-fp32/seed=2"):
        (sweep / d / "checkpoints").mkdir()
        (sweep / d / "checkpoints" / "ckpt-00000003.pt").write_bytes(b"\0" * 100)
        (sweep / d / ".lock").write_text("")
        (sweep / d / ".hydra").mkdir()
        (sweep / d / ".hydra" / "config.yaml").write_text("seed: 1\n")
    (sweep / "summary.json").write_text("{}")
    return sweep


def _files(d: Path) -> dict[str, bytes]:
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_pack_keeps_finished_runs_files_only_and_unpacks_them_byte_for_byte(tmp_path, capsys):
    sweep = _sweep(tmp_path)
    out = tmp_path / "runs" / "a.tar.xz"
    assert archive.main(["pack", str(sweep), str(out)]) == 0
    names = set(archive.read_members(out))
    assert "study/cartpole-exact-fp32/seed=1/run.json" in names
    assert "study/cartpole-exact-fp32/seed=1/.hydra/config.yaml" in names
    assert "study/cartpole-tanh-fp32/seed=1/metrics.jsonl" in names  # failed runs are finished too
    assert not any("seed=2" in n for n in names)  # interrupted: the sweep resumes it
    assert not any("checkpoints" in n or n.endswith(".lock") or n.endswith("summary.json") for n in names)
    dest = tmp_path / "restored"
    assert archive.main(["unpack", str(out), str(dest)]) == 0
    got = _files(dest / "study")
    want = {k: v for k, v in _files(sweep).items() if k in {n.split("/", 1)[1] for n in names}}
    assert got == want and len(got) == len(names)
    assert archive.main(["unpack", str(out), str(dest)]) == 0  # again: identical files are left alone
    assert "0 file(s) written" in capsys.readouterr().out


def test_pack_is_deterministic_and_match_selects_runs(tmp_path):
    sweep = _sweep(tmp_path)
    a, b = tmp_path / "a.tar.xz", tmp_path / "b.tar.xz"
    assert archive.main(["pack", str(sweep), str(a)]) == 0
    (sweep / "cartpole-exact-fp32" / "seed=1" / "run.json").touch()  # a newer mtime changes nothing
    assert archive.main(["pack", str(sweep), str(b)]) == 0
    assert a.read_bytes() == b.read_bytes()
    assert archive.main(["pack", str(sweep), str(b), "--match", "cartpole-tanh-*/seed=1"]) == 0
    assert {n.split("/")[1] for n in archive.read_members(b)} == {"cartpole-tanh-fp32"}


def test_a_damaged_run_is_refused_and_nothing_is_written(tmp_path, capsys):
    sweep = _sweep(tmp_path)
    m = sweep / "cartpole-exact-fp32" / "seed=1" / "metrics.jsonl"
    lines = m.read_text().splitlines(keepends=True)
    m.write_text("".join(lines + lines[-1:]))  # a repeated update
    out = tmp_path / "a.tar.xz"
    assert archive.main(["pack", str(sweep), str(out)]) == 1
    assert "damaged run" in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob("a.tar.xz.*"))


def test_unpack_refuses_to_overwrite_other_content_and_writes_nothing_of_that_archive(tmp_path, capsys):
    sweep = _sweep(tmp_path)
    out = tmp_path / "a.tar.xz"
    archive.main(["pack", str(sweep), str(out)])
    dest = tmp_path / "d"
    clash = dest / "study" / "cartpole-exact-fp32" / "seed=1" / "run.json"
    clash.parent.mkdir(parents=True)
    clash.write_text('{"status": "running"}')
    assert archive.main(["unpack", str(out), str(dest)]) == 1
    assert "exists with other content" in capsys.readouterr().err
    assert _files(dest) == {"study/cartpole-exact-fp32/seed=1/run.json": b'{"status": "running"}'}


def test_unsafe_members_and_bad_input(tmp_path, capsys):
    bad = tmp_path / "bad.tar.xz"
    with lzma.open(bad, "wb") as xz, tarfile.open(fileobj=xz, mode="w") as t:
        ti = tarfile.TarInfo("../escape.txt")
        ti.size = 1
        t.addfile(ti, io.BytesIO(b"x"))
    assert archive.main(["unpack", str(bad), str(tmp_path / "d")]) == 1
    assert "refusing member" in capsys.readouterr().err and not (tmp_path / "escape.txt").exists()
    assert archive.main(["pack", str(tmp_path / "nope"), str(tmp_path / "x.tar.xz")]) == 2
    assert "no sweep directory" in capsys.readouterr().err
    assert archive.main(["pack", str(_sweep(tmp_path)), str(tmp_path / "x.tgz")]) == 2
    assert archive.main(["unpack", str(tmp_path / "missing.tar.xz"), str(tmp_path)]) == 2
    assert archive.main(["pack", str(tmp_path / "sweeps"), str(tmp_path / "y.tar.xz"), "--match", "zzz*"]) == 1
    assert "no finished run" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        archive.main(["frobnicate"])
    assert e.value.code == 2
