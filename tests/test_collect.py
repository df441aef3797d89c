"""experiments/gpu_throughput/collect.sh: a sweep_box.sh call's files filed on the dev side (runs extracted in the
repository root, log and progress kept under a prefix, the carry parts replacing the next box's carry), and bad
arguments refused with one line and exit 2 before anything is written."""
import io
import json
import random
import subprocess
import sys
import tarfile
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "gpu_throughput" / "collect.sh"
sys.path.insert(0, str(SCRIPT.parent))
import runs_pack  # noqa: E402


def _call_files(d: Path) -> None:
    d.mkdir()
    runs = {"a-exact-fp32/seed=1": {"status": "completed", "steps": 10, "updates": 5},
            "a-tanh-fp32/seed=1": {"status": "interrupted", "steps": 6, "updates": 3}}
    (d / "progress.json").write_text(json.dumps({"statuses": {"completed": 1, "interrupted": 1}, "total_steps": 16,
                                                 "runs": runs}))
    (d / "log.txt").write_text("call log\n")
    with tarfile.open(d / "runs.tar.gz", "w:gz") as tar:
        data = b'{"status": "completed"}'
        info = tarfile.TarInfo("outputs/sweeps/s/a-exact-fp32/seed=1/run.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    (d / "carry.txz.part-000").write_bytes(b"new state")


def _collect(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=cwd, capture_output=True, text=True)


def test_a_call_is_filed_and_its_carry_replaces_the_old(tmp_path):
    repo, call = tmp_path / "repo", tmp_path / "call"
    repo.mkdir()
    _call_files(call)
    (repo / ".carry_x").mkdir()
    (repo / ".carry_x" / "carry.txz.part-001").write_bytes(b"old state")  # an older carry's extra part goes
    r = _collect(repo, str(call), "results/s_call1", ".carry_x")
    assert r.returncode == 0, r.stderr
    assert (repo / "outputs/sweeps/s/a-exact-fp32/seed=1/run.json").read_text() == '{"status": "completed"}'
    assert (repo / "results/s_call1_log.txt").read_text() == "call log\n"
    assert json.loads((repo / "results/s_call1_progress.json").read_text())["total_steps"] == 16
    assert sorted(p.name for p in (repo / ".carry_x").iterdir()) == ["carry.txz.part-000"]
    assert "unfinished a-tanh-fp32: 1 runs at updates 3-3" in r.stdout


def test_bad_arguments_are_refused_before_anything_is_written(tmp_path):
    repo, call = tmp_path / "repo", tmp_path / "call"
    repo.mkdir()
    _call_files(call)
    for args, says in [((str(call), "results/p", "carry"), "CARRY_DIR must be a git-ignored .carry*/ directory"),
                       ((str(tmp_path / "none"), "results/p"), "no directory"),
                       ((str(call),), "usage")]:
        r = _collect(repo, *args)
        assert r.returncode == 2 and says in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert list(repo.iterdir()) == []


def test_a_call_whose_runs_came_in_parts_is_extracted_whole(tmp_path, monkeypatch):
    box, repo, call = tmp_path / "box", tmp_path / "repo", tmp_path / "call"
    run = box / "outputs/sweeps/s/a-exact-fp32/seed=1"
    run.mkdir(parents=True)
    (run / "run.json").write_text('{"status": "completed"}')
    probe = random.Random(0).randbytes(10_000)  # incompressible: several parts
    (run / "probe.jsonl").write_bytes(probe)
    _call_files(call)
    (call / "runs.tar.gz").unlink()
    monkeypatch.chdir(box)
    assert len(runs_pack.pack(Path("outputs/sweeps/s"), call, part_mb=0.002)) > 1
    repo.mkdir()
    r = _collect(repo, str(call), "results/s_call1")
    assert r.returncode == 0, r.stderr
    assert (repo / "outputs/sweeps/s/a-exact-fp32/seed=1/probe.jsonl").read_bytes() == probe
