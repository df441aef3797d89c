"""Keep a sweep's finished runs in git: their files, xz-compressed, byte-for-byte (no checkpoints).

    python archive.py pack SWEEP_DIR ARCHIVE.tar.xz [--match GLOB ...]   # finished runs under SWEEP_DIR
    python archive.py unpack ARCHIVE.tar.xz [...] DEST_DIR                # e.g. DEST_DIR = outputs/sweeps
    python archive.py list ARCHIVE.tar.xz [...]                           # one line per run: path, status, updates

Why: the dev VM does not outlive a session. Session 12 of issue 13 began on a new checkout: the git-ignored
outputs/ and .carry*/ of sessions 9-11 were gone, and with them the 280 primary runs completed on the GPU boxes
(the runs' files had never been committed). What is in git is all that lasts; so every run a box finishes is packed
here right after the call that returned it, and committed.

``pack`` takes every run directory under SWEEP_DIR (a directory holding run.json) whose status is finished
(completed or failed), and whose path relative to SWEEP_DIR matches one of the --match globs (default: all), and
writes ONE xz tar of their files: run.json, metrics.jsonl, episodes.jsonl, train.log, .hydra/ and any other file of
the run, but not checkpoints/, drift/ (snapshots) or the .lock. Paths are stored under SWEEP_DIR's own name (e.g.
mujoco_gelu_amp/hopper-exact-fp32/seed=1/run.json), so ``unpack ... outputs/sweeps`` puts them back where
esper-report reads them. A run whose files are damaged (runformat.check_run_files: missing or repeated updates, a
cut line, an update count that differs from run.json) is refused, naming it: nothing is written. The archive is
deterministic (sorted members, zeroed times and owners), so packing the same runs again gives the same bytes, and it
is read back and compared with the sources before it replaces ARCHIVE (written to a temporary file first).
Unfinished runs (running, interrupted) are never packed: the sweep resumes or reruns them.

``unpack`` extracts each archive under DEST_DIR; a file that exists with other content is refused (exit 1, naming
it; nothing of that archive is written), an identical one is left alone. Members with absolute paths, "..", links or
devices are refused.

Size (dev VM, 2026-11-24): the 80 completed runs of session 12 (HalfCheetah and Hopper seeds 1-10, 1M steps each)
are 40 MB as files, 5.1 MB as an xz tar of their run.json, metrics.jsonl and episodes.jsonl (`tar | xz -9`); ~31 MB
for the study's 480 runs. The box never needs them: `box_tree.sh slim` leaves them out of what travels.
"""

from __future__ import annotations

import argparse
import fnmatch
import io
import json
import lzma
import os
import sys
import tarfile
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from esper_exp.runformat import BadRunFile, check_run_files, read_json  # noqa: E402

FINISHED = ("completed", "failed")
SKIP_DIRS = {"checkpoints", "drift", "wandb"}
SKIP_FILES = {".lock"}


class ArchiveError(Exception):
    """A refusal with one line of reason (exit 1)."""


def run_dirs(sweep: Path) -> list[Path]:
    # stdlib only (not esper_exp.analysis.load's walk, which brings numpy): keep_runs.sh runs this with any python3
    out = []
    for dirpath, dirnames, filenames in os.walk(sweep):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        if "run.json" in filenames:
            out.append(Path(dirpath))
    return sorted(out)


def run_files(run_dir: Path) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(run_dir):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        here = Path(dirpath)
        if here != run_dir and (here / "run.json").exists():
            dirnames[:] = []  # a nested run is its own run
            continue
        out += [here / f for f in filenames if f not in SKIP_FILES]
    return sorted(out)


def select(sweep: Path, globs: list[str]) -> list[Path]:
    """The finished, undamaged runs under sweep matching a glob; ArchiveError on a damaged one."""
    chosen = []
    for d in run_dirs(sweep):
        rel = d.relative_to(sweep).as_posix()
        if globs and not any(fnmatch.fnmatchcase(rel, g) for g in globs):
            continue
        try:
            info = read_json(d / "run.json")
        except BadRunFile as e:
            raise ArchiveError(f"{d}: run.json unreadable ({e}); nothing written") from None
        if not isinstance(info, dict) or info.get("status") not in FINISHED:
            continue
        try:
            check_run_files(d, info)
        except BadRunFile as e:
            raise ArchiveError(f"damaged run, nothing written: {e}") from None
        chosen.append(d)
    return chosen


def _member(name: str, data: bytes) -> tuple[tarfile.TarInfo, io.BytesIO]:
    ti = tarfile.TarInfo(name)
    ti.size, ti.mtime, ti.mode, ti.uid, ti.gid, ti.uname, ti.gname = len(data), 0, 0o644, 0, 0, "", ""
    return ti, io.BytesIO(data)


def pack(sweep: Path, archive: Path, globs: list[str]) -> int:
    runs = select(sweep, globs)
    if not runs:
        raise ArchiveError(f"no finished run under {sweep}" + (f" matching {' '.join(globs)}" if globs else ""))
    files = {}
    for d in runs:
        for f in run_files(d):
            files[(Path(sweep.name) / f.relative_to(sweep)).as_posix()] = f.read_bytes()
    archive.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=archive.parent, prefix=archive.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        with lzma.open(tmp, "wb", preset=9) as xz, tarfile.open(fileobj=xz, mode="w", format=tarfile.PAX_FORMAT) as t:
            for name in sorted(files):
                t.addfile(*_member(name, files[name]))
        back = read_members(Path(tmp))
        if back != files:
            raise ArchiveError(f"{archive}: read back differs from the runs' files; nothing written")
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would stay on a file meant for git
        os.replace(tmp, archive)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    print(f"archive.py: {len(runs)} finished run(s), {len(files)} files -> {archive} "
          f"({archive.stat().st_size / 1e6:.2f} MB)")
    return 0


def read_members(archive: Path) -> dict[str, bytes]:
    """Every member's bytes; ArchiveError on a member that is not a plain file at a safe relative path."""
    out = {}
    try:
        with tarfile.open(archive, "r:xz") as t:
            for m in t.getmembers():
                p = Path(m.name)
                if not m.isfile() or p.is_absolute() or ".." in p.parts:
                    raise ArchiveError(f"{archive}: refusing member {m.name!r} (not a plain file at a relative path)")
                out[m.name] = t.extractfile(m).read()
    except (tarfile.TarError, lzma.LZMAError, EOFError) as e:
        raise ArchiveError(f"{archive}: not a readable xz tar ({e})") from None
    return out


def unpack(archives: list[Path], dest: Path) -> int:
    for a in archives:
        members = read_members(a)
        clash = [n for n, b in members.items() if (dest / n).exists() and (dest / n).read_bytes() != b]
        if clash:
            raise ArchiveError(f"{a}: {dest / clash[0]} exists with other content"
                               + (f" (and {len(clash) - 1} more)" if len(clash) > 1 else "")
                               + "; nothing of this archive written")
        new = 0
        for n, b in members.items():
            out = dest / n
            if out.exists():
                continue
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(b)
            new += 1
        print(f"archive.py: {a} -> {dest}: {new} file(s) written, {len(members) - new} already there")
    return 0


def list_runs(archives: list[Path]) -> int:
    for a in archives:
        members = read_members(a)
        for n in sorted(m for m in members if m.endswith("/run.json")):
            info = json.loads(members[n])
            updates = members.get(n[:-len("run.json")] + "metrics.jsonl", b"").count(b"\n")
            print(f"{a.name}  {n[:-len('/run.json')]}  {info.get('status')}  updates {updates}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="archive.py", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack")
    p.add_argument("sweep", type=Path)
    p.add_argument("archive", type=Path)
    p.add_argument("--match", nargs="+", default=[], metavar="GLOB",
                   help="run paths relative to SWEEP_DIR, e.g. 'hopper-*/seed=[1-9]' (default: every run)")
    u = sub.add_parser("unpack")
    u.add_argument("paths", type=Path, nargs="+", metavar="ARCHIVE... DEST_DIR")
    ls = sub.add_parser("list")
    ls.add_argument("archives", type=Path, nargs="+")
    a = ap.parse_args(argv)
    try:
        if a.cmd == "pack":
            if not a.archive.name.endswith(".tar.xz"):
                print(f"archive.py: the archive must end in .tar.xz, got '{a.archive}'", file=sys.stderr)
                return 2
            if not a.sweep.is_dir():
                print(f"archive.py: no sweep directory {a.sweep}", file=sys.stderr)
                return 2
            return pack(a.sweep, a.archive, a.match)
        if a.cmd == "unpack":
            if len(a.paths) < 2:
                print("archive.py: usage: unpack ARCHIVE.tar.xz [...] DEST_DIR", file=sys.stderr)
                return 2
            missing = [p for p in a.paths[:-1] if not p.is_file()]
            if missing:
                print(f"archive.py: no archive {missing[0]}", file=sys.stderr)
                return 2
            return unpack(a.paths[:-1], a.paths[-1])
        missing = [p for p in a.archives if not p.is_file()]
        if missing:
            print(f"archive.py: no archive {missing[0]}", file=sys.stderr)
            return 2
        return list_runs(a.archives)
    except BrokenPipeError:  # `list ... | head`
        sys.stdout = open(os.devnull, "w")
        return 0
    except ArchiveError as e:
        print(f"archive.py: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
