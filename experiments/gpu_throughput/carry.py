"""Carry a sweep's state from one lent GPU box to the next (a box is wiped when it is handed back).

    python carry.py pack SWEEP_DIR OUT_DIR [--part-mb 15] [--preset 6] [--max-mb 52]   # on the box, after a call
    python carry.py unpack PARTS_DIR SWEEP_DIR                # on the next box, before the same sweep command

``pack`` writes OUT_DIR/carry.txz.part-000, -001, ... (each at most --part-mb MB: a device call returns at most 8
files of 16 MiB): an xz tar of every file of the sweep directory except older checkpoints (an unfinished run keeps
only its newest ``ckpt-*.pt`` that has its ``.sha256``, which is all a resume reads), the checkpoints of finished runs
(the sweep command skips a completed run and starts a failed one over) and drift snapshots; of a completed run only
its run.json, .hydra/ and train.log travel (enough for the command to skip it; its metrics and episodes are in the
runs parts of the call that completed it (runs_pack.py, every call of sweep_box.sh); train.log travels because Hydra
opens it on every launch, and a box without it returned an empty one that overwrote the full log on extraction).
Paths are stored as given (relative to the checkout, e.g. outputs/sweeps/gelu_amp_halfcheetah/...), so ``unpack`` in
the checkout's root puts them back where the sweep command looks; it refuses when SWEEP_DIR already exists (a warm box
still holds a newer state) or when a file lies outside it; it also reads the older gzip parts (carry.tgz.part-*).

Size: a run's checkpoint is 0.95 MB (HalfCheetah, width 64: float32 weights and Adam moments, which compress little:
gzip 0.95x). So checkpoints are stored byte-shuffled (``shuffle4``: byte j of every 4-byte word together, as blosc
and HDF5's shuffle filter do; torch.save stores tensors uncompressed at 64-byte aligned offsets, so the words are the
floats) and the tar is xz-compressed: the sign/exponent bytes then compress well. The 60-run HalfCheetah sweep's
state (round 5): gzip 57.2 MB, xz 54.0 MB, shuffled + xz 48.6 MB. Unpacked files are bitwise the originals (their
.sha256 files still match). Pack time, dev CPU, 2026-11-23, whole processes, 3 interleaved pairs ("... --preset 6" vs
"... --preset 0") on that state: median wall 7.4 s (--preset 0, 52.0 MB) vs 33.8 s (--preset 6, 48.6 MB), ratio 0.22.

Limit: a carry must travel into the next box's call beside the wheels (64 MiB in all, 11 MB of wheels), so ``pack``
refuses (one line, exit 3, nothing written) when the compressed archive would exceed --max-mb (default 52 MB: 64 MiB
less the wheels' 11 MB and the slim tree's 1.3 MB). It refuses before compressing when the checkpoints alone cannot fit
(their size x 0.8, below the ~0.85 shuffled xz keeps of float32 checkpoints): a width-384 member's checkpoint is
~32 MB (2.68M parameters and two Adam moments, float32), so
20 such runs (~640 MB) can never be carried, and packing them would only spend the call's time (session 18: a
width-384 pack ran past the call's limit). Such a sweep must finish on one box. The limit is on the compressed size
because the other files compress ~10x: the 3M-steps arm's 40 runs at update ~760 were 63 MB to read and 34 MB packed
(session 19, whose first box the earlier before-compression limit refused).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tarfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from parts import open_parts, write_parts  # noqa: E402  (this directory's parts.py)

PREFIX = "carry.txz.part-"
PREFIXES = (PREFIX, "carry.tgz.part-")  # unpack reads both (the gzip parts of 2026-11-23, session 6-7)
SHUFFLED = ".shuffle4"  # suffix of a byte-shuffled file in the archive


def shuffle4(data: bytes) -> bytes:
    """Byte j of every 4-byte word together (j = 0..3), then the len % 4 trailing bytes as they are."""
    n = len(data) // 4 * 4
    return np.frombuffer(data, np.uint8, n).reshape(-1, 4).T.tobytes() + data[n:]


def unshuffle4(data: bytes) -> bytes:
    n = len(data) // 4 * 4
    return np.frombuffer(data, np.uint8, n).reshape(4, -1).T.tobytes() + data[n:]


def _status(run_dir: Path) -> str | None:
    try:
        return json.loads((run_dir / "run.json").read_text()).get("status")
    except (OSError, ValueError):
        return None


def members(sweep: Path) -> list[Path]:
    """The files to carry: all, less drift snapshots, finished (completed or failed) runs' checkpoints, every other
    run's checkpoints but its newest, and a completed run's files but its run.json, .hydra/ and train.log (the sweep
    command skips a completed run by its run.json alone, and Hydra appends to its train.log on every launch; its
    metrics and episodes came back in the runs parts of the call that completed it, and a study of hundreds of runs
    would otherwise outgrow the 64 MiB that travel into a call)."""
    keep, status, newest = [], {}, {}
    for p in sorted(sweep.rglob("*")):
        rel = p.relative_to(sweep).parts
        if not p.is_file() or "drift" in rel:
            continue
        run = sweep / rel[0] / rel[1] if len(rel) > 2 and rel[1].startswith("seed=") else None
        if run is not None and run not in status:
            status[run] = _status(run)
        if run is not None and status[run] == "completed" and rel[2] not in ("run.json", ".hydra", "train.log"):
            continue
        if p.parent.name == "checkpoints" and p.name.startswith("ckpt-"):
            if p.parent not in newest:
                # the newest checkpoint whose write finished (its .sha256 is written after it): a sweep packed while
                # it runs (sweep_box.sh DETACH=1) may be caught between the two
                done = [c.name for c in sorted(p.parent.glob("ckpt-*.pt"))
                        if c.with_name(c.name + ".sha256").is_file()]
                newest[p.parent] = (done or [None])[-1]
            last = newest[p.parent]
            if status.get(run) in ("completed", "failed") or last is None or p.name not in (last, last + ".sha256"):
                continue
        keep.append(p)
    return keep


CKPT_RATIO = 0.8  # no carry's checkpoints compressed below this (shuffled xz of float32 weights and moments: ~0.85)


def _refuse(sweep: Path, files: list[Path], need: str, max_mb: float) -> None:
    runs = {p.parent.parent for p in files if p.parent.name == "checkpoints"}
    print(f"carry.py: not packed: {len(runs)} unfinished run(s) of {sweep} need {need}, over --max-mb {max_mb:g} "
          "(a carry travels into a call beside the wheels: 64 MiB in all); such a sweep must finish on one box",
          file=sys.stderr)
    raise SystemExit(3)


def pack(sweep: Path, out: Path, part_mb: float, preset: int = 6, max_mb: float = 52.0) -> list[Path]:
    if not sweep.is_dir():
        raise SystemExit(f"carry.py: no sweep directory {sweep}")
    files = members(sweep)
    ckpt = sum(p.stat().st_size for p in files if p.suffix == ".pt") / 1e6
    if ckpt * CKPT_RATIO > max_mb:  # hopeless: refuse before spending the call's time compressing
        _refuse(sweep, files, f"checkpoints of {ckpt:.0f} MB (at least {ckpt * CKPT_RATIO:.0f} MB compressed)", max_mb)
    buf = io.BytesIO()  # the whole archive in memory: tens of MB (a call carries at most 64 MiB anyway)
    with tarfile.open(fileobj=buf, mode="w:xz", preset=preset) as tar:
        for p in files:
            if p.suffix == ".pt":
                data = shuffle4(p.read_bytes())
                info = tar.gettarinfo(p, arcname=str(p) + SHUFFLED)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.add(p, arcname=str(p), recursive=False)
    data = buf.getvalue()
    if len(data) / 1e6 > max_mb:
        _refuse(sweep, files, f"{len(data) / 1e6:.0f} MB compressed", max_mb)
    paths = write_parts(data, out, PREFIX, part_mb)
    print(f"carry.py: {len(paths)} part(s), {len(data) / 2**20:.1f} MiB, from {sweep}")
    return paths


def part_files(parts_dir: Path) -> list[Path]:
    """A carry's parts in order (xz, or the older gzip parts); [] where the directory holds none."""
    return next((found for pre in PREFIXES if (found := sorted(parts_dir.glob(pre + "*")))), [])


def member_names(parts_dir: Path) -> list[str]:
    """The names a carry holds, as stored (a checkpoint's with the ``.shuffle4`` suffix), without extracting it."""
    with open_parts(part_files(parts_dir)) as tar:
        return tar.getnames()


def unpack(parts_dir: Path, sweep: Path) -> None:
    paths = part_files(parts_dir)
    if not paths:
        raise SystemExit(f"carry.py: no {PREFIX}* (or carry.tgz.part-*) files in {parts_dir}")
    if sweep.exists():
        raise SystemExit(f"carry.py: {sweep} exists already (a newer state?): not unpacked")
    with open_parts(paths) as tar:
        todo = []
        for m in tar.getmembers():  # every name checked before anything is written
            shuffled = m.name.endswith(SHUFFLED)
            name = Path(m.name[:-len(SHUFFLED)] if shuffled else m.name)
            if name.is_absolute() or ".." in name.parts or name.parts[:len(sweep.parts)] != sweep.parts:
                raise SystemExit(f"carry.py: {m.name} is not inside {sweep}: nothing unpacked (the parts hold paths "
                                 "relative to the checkout's root: unpack there, with the sweep directory they name)")
            if shuffled and not m.isfile():
                raise SystemExit(f"carry.py: {m.name} is not a regular file: nothing unpacked")
            todo.append((m, name, shuffled))
        for m, name, shuffled in todo:
            if shuffled:
                name.parent.mkdir(parents=True, exist_ok=True)
                name.write_bytes(unshuffle4(tar.extractfile(m).read()))
            else:
                tar.extract(m, filter="data")
    print(f"carry.py: {len(todo)} files from {len(paths)} part(s) into {sweep}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack")
    p.add_argument("sweep", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--part-mb", type=float, default=15.0)
    p.add_argument("--preset", type=int, default=6, choices=range(10),
                   help="xz preset: 6 (default) or 0 (the 60-run state, dev CPU: 0.22x the wall time, 7%% larger)")
    p.add_argument("--max-mb", type=float, default=52.0,
                   help="refuse (exit 3, nothing written) above this many MB compressed (52)")
    u = sub.add_parser("unpack")
    u.add_argument("parts", type=Path)
    u.add_argument("sweep", type=Path)
    a = ap.parse_args(argv)
    if a.cmd == "pack":
        pack(a.sweep, a.out, a.part_mb, a.preset, a.max_mb)
    else:
        unpack(a.parts, a.sweep)


if __name__ == "__main__":
    sys.exit(main())
