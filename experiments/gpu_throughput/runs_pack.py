"""A device call's runs back to the dev side: the sweep's small per-run files, only those changed since the last
call's pack, in parts that fit what a call returns.

    python runs_pack.py pack SWEEP_DIR OUT_DIR [--since MARKER] [--part-mb 15]   # on the box (sweep_box.sh)
    python runs_pack.py unpack FILES_DIR [DEST (.)]                                # on the dev side (collect.sh)

``pack`` writes OUT_DIR/runs.tgz.part-000, -001, ... (a gzip tar cut into parts of at most --part-mb MB: a device call
returns at most 8 files of 16 MiB) of every file under SWEEP_DIR but checkpoints (``checkpoints/``, ``*.pt``) and drift
snapshots (``drift/``). Paths are stored as given (relative to the checkout), so ``unpack`` in the checkout's root puts
them where esper-report reads them. With ``--since MARKER``, only files modified after MARKER's modification time are
packed (the calls' archives are extracted in call order, so each needs only what changed since the one before), and
MARKER is then set to the time the pack began (less 2 s: file times are stamped by a coarser clock), so a file written
after that comes with the next call. MARKER is advanced only after the parts are written, so a pack that fails is
repeated whole by the next call. Where MARKER does not exist yet, everything is packed. A call whose parts did not come
back (a left-out file, a lost transfer) is repaired by packing the next call without ``--since`` (sweep_box.sh:
``FULL=1``).

Why: sweep_box.sh tarred the whole sweep directory every call into one runs.tar.gz. For the primary study (40 runs
per box, metrics and episodes only) that was 5-10 MB; the mechanistic probe adds a probe.jsonl of ~1.1 MB per run
(~0.35 MB gzipped: 48 probed updates of ~23 KB, measured on a 2-update CPU smoke run of the probe config, dev VM,
2026-11-24), so its 60 runs would be ~30 MB per call, over the 16 MiB a returned file may have, and the file would
not come back at all.

``unpack`` extracts FILES_DIR's runs.tgz.part-* (joined in order), or the older single runs.tar.gz, under DEST; it
refuses (exit 1, nothing written) members with absolute paths, "..", links or devices, and exits 2 with one line
where FILES_DIR holds neither.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tarfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from parts import open_parts, write_parts  # noqa: E402  (this directory's parts.py)

PREFIX = "runs.tgz.part-"
OLD = "runs.tar.gz"  # one archive, sweep_box.sh before 2026-11-24 (session 16)


def members(sweep: Path, since_ns: int | None) -> list[Path]:
    """The files to pack: every file but checkpoints and drift snapshots, modified after since_ns where given."""
    out = []
    for p in sorted(sweep.rglob("*")):
        rel = p.relative_to(sweep).parts
        if not p.is_file() or p.is_symlink() or "checkpoints" in rel or "drift" in rel or p.suffix == ".pt":
            continue
        if since_ns is not None and p.stat().st_mtime_ns <= since_ns:
            continue
        out.append(p)
    return out


def pack(sweep: Path, out: Path, since: Path | None = None, part_mb: float = 15.0) -> list[Path]:
    if not sweep.is_dir():
        raise SystemExit(f"runs_pack.py: no sweep directory {sweep}")
    # the marker's new time: 2 s before now, as file times come from a coarser clock than time_ns (a file written
    # just after this line may be stamped a few ms before it); a file written in those 2 s is sent twice, never lost
    began = time.time_ns() - 2_000_000_000
    since_ns = since.stat().st_mtime_ns if since is not None and since.exists() else None
    files = members(sweep, since_ns)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=6) as tar:
        for p in files:
            tar.add(p, arcname=str(p), recursive=False)
    (out / OLD).unlink(missing_ok=True)
    data = buf.getvalue()
    paths = write_parts(data, out, PREFIX, part_mb)
    if since is not None:  # only now: a failed pack leaves the marker, and the next call sends these files again
        since.touch()
        os.utime(since, ns=(began, began))
    what = "all" if since_ns is None else "changed since the last pack"
    print(f"runs_pack.py: {len(files)} files ({what}), {len(paths)} part(s), {len(data) / 2**20:.1f} MiB, from {sweep}")
    return paths


def unpack(files_dir: Path, dest: Path) -> int:
    parts = sorted(files_dir.glob(PREFIX + "*")) or ([files_dir / OLD] if (files_dir / OLD).is_file() else [])
    if not parts:
        print(f"runs_pack.py: {files_dir} holds no {PREFIX}* (or {OLD})", file=sys.stderr)
        return 2
    with open_parts(parts) as tar:
        ms = tar.getmembers()
        for m in ms:  # every name checked before anything is written
            name = Path(m.name)
            if name.is_absolute() or ".." in name.parts or not (m.isfile() or m.isdir()):
                print(f"runs_pack.py: {m.name} is not a plain file inside the checkout: nothing unpacked",
                      file=sys.stderr)
                return 1
        tar.extractall(dest, filter="data")
    print(f"runs_pack.py: {sum(m.isfile() for m in ms)} files from {len(parts)} part(s) into {dest}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack")
    p.add_argument("sweep", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--since", type=Path, default=None, help="marker file: pack only files modified after it")
    p.add_argument("--part-mb", type=float, default=15.0)
    u = sub.add_parser("unpack")
    u.add_argument("files", type=Path)
    u.add_argument("dest", type=Path, nargs="?", default=Path("."))
    a = ap.parse_args(argv)
    if a.cmd == "pack":
        pack(a.sweep, a.out, a.since, a.part_mb)
        return 0
    return unpack(a.files, a.dest)


if __name__ == "__main__":
    sys.exit(main())
