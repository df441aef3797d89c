"""The run-directory format, in one torch-free module: what every reader and writer of a run directory shares.

- ``STATUSES``: the values of run.json's ``status``.
- ``cell_name`` / ``cell_label``: a run's cell (``cartpole/exact/fp32[/compiled][/perturb-<kind>]``).
- ``WALL_CLOCK``: metrics.jsonl keys that measure time, not computation (ignored when comparing runs).
- ``dumps`` / ``write_json_atomic``: strict JSON (RFC 8259). A non-finite float is written as the *string*
  ``"NaN"``, ``"Infinity"`` or ``"-Infinity"`` (Python's ``float()`` reads all three back); ``read_jsonl`` and
  ``read_json`` turn them back into floats. Files written before this rule may hold bare ``NaN`` / ``Infinity``
  tokens; the readers accept those too.
- ``read_jsonl``: strict reader: every non-blank line must be one JSON object, else ``BadRunFile`` naming the
  file and the first bad line (a torn last line included).
- ``RunLock``: one owner per run directory (an exclusive ``flock`` on ``<run dir>/.lock``, released by the OS when
  the process dies).
"""

from __future__ import annotations

import errno
import fcntl
import json
import math
import os
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any

STATUSES = ("running", "completed", "failed", "interrupted")
FINISHED = ("completed", "failed", "interrupted")
WALL_CLOCK = ("sps", "time_env", "time_inference", "time_update")
LOCK_NAME = ".lock"
_NONFINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


class BadRunFile(ValueError):
    """A run-directory file that is not in the format (one line: file and first bad line)."""


class RunLocked(RuntimeError):
    """Another live process owns the run directory."""


# --- cells -------------------------------------------------------------------------------------------------------

def cell_label(gelu: str, precision: str, compile_: bool, perturb: str | None = "none") -> str:
    """Cell without the env: ``exact/fp32``, ``tanh/bf16/compiled``, ``exact/fp32/perturb-ulp``."""
    return (f"{gelu}/{precision}" + ("/compiled" if compile_ else "")
            + ("" if perturb in (None, "", "none") else f"/perturb-{perturb}"))


def cell_name(config: dict, sep: str = "/") -> str:
    """Cell of a resolved config, env first: ``cartpole/exact/fp32`` (``sep="-"``: the sweep directory name)."""
    label = cell_label(config["model"]["gelu"], config["precision"]["name"], bool(config["model"].get("compile")),
                       (config.get("drift") or {}).get("perturb", "none"))
    return sep.join([config["env"]["name"], *label.split("/")])


# --- metrics -----------------------------------------------------------------------------------------------------

def stalled(skipped, epochs, num_minibatches: int):
    """Whether an update was stalled: the fp16 loss scaler skipped every minibatch step it attempted (``skipped``: the
    update's rise of ``nonfinite_grad_steps``; ``epochs``: its ``epochs``), so the policy did not change. Scalars or
    numpy arrays (one element per update). The trainer notes it, esper-report counts it: one definition for both."""
    attempted = epochs * num_minibatches
    return (attempted > 0) & (skipped >= attempted)


# --- strict JSON -------------------------------------------------------------------------------------------------

def finite_safe(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by its string ("NaN", "Infinity", "-Infinity")."""
    if isinstance(obj, float):
        if math.isfinite(obj):
            return obj
        return "NaN" if math.isnan(obj) else ("Infinity" if obj > 0 else "-Infinity")
    if isinstance(obj, dict):
        return {k: finite_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_safe(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "shape", None) == ():  # numpy / torch scalar
        return finite_safe(obj.item())
    return obj


def dumps(obj: Any, **kwargs) -> str:
    """Strict JSON text (never a bare NaN / Infinity token)."""
    return json.dumps(finite_safe(obj), allow_nan=False, **kwargs)


def decode_nonfinite(obj: Any) -> Any:
    """Inverse of ``finite_safe`` for values: the strings "NaN", "Infinity", "-Infinity" become floats."""
    if isinstance(obj, str):
        return _NONFINITE.get(obj, obj)
    if isinstance(obj, dict):
        return {k: decode_nonfinite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [decode_nonfinite(v) for v in obj]
    return obj


def file_stamp(path: Path) -> tuple[int, int] | None:
    """(mtime_ns, size) of a file, None if it is missing: tells whether a file was (re)written since a snapshot."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size)


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write strict JSON to ``path`` atomically (temp file in the same directory, fsync, rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(dumps(obj, indent=2))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    """One JSON document; BadRunFile if unreadable."""
    path = Path(path)
    try:
        return decode_nonfinite(json.loads(path.read_text()))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise BadRunFile(f"{path}: not valid JSON ({e})") from None


def read_run_json(run_dir: Path) -> dict | None:
    """run.json of a run directory, or None if there is none or it is unreadable."""
    path = Path(run_dir) / "run.json"
    if not path.exists():
        return None
    try:
        info = read_json(path)
    except BadRunFile:
        return None
    return info if isinstance(info, dict) else None


def read_jsonl(path: Path, missing_ok: bool = True) -> list[dict]:
    """Every record of a JSONL file, strictly: BadRunFile naming the file and the first line that is not one
    JSON object (``line N is cut off`` for a last line without its newline that does not parse)."""
    path = Path(path)
    if not path.exists():
        if missing_ok:
            return []
        raise BadRunFile(f"{path}: missing")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise BadRunFile(f"{path}: unreadable ({e})") from None
    lines = text.split("\n")
    out = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            torn = i == len(lines)  # no newline after it: the write was cut off
            raise BadRunFile(f"{path}: line {i} is {'cut off' if torn else 'not valid JSON'}") from None
        if not isinstance(obj, dict):
            raise BadRunFile(f"{path}: line {i} is not a JSON object")
        out.append(decode_nonfinite(obj))
    return out


def truncate_jsonl(path: Path, keep: Callable[[dict], bool]) -> None:
    """Keep the leading records for which keep(record) holds (and drop a torn last line)."""
    path = Path(path)
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            break
        if not isinstance(record, dict) or not keep(record):
            break
        kept.append(line + "\n")
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(kept))
    os.replace(tmp, path)


def check_run_files(run_dir: Path, info: dict | None = None) -> tuple[list[dict], list[dict]]:
    """Read metrics.jsonl and episodes.jsonl strictly and check them against run.json: updates numbered 1..N
    without gaps or repeats, and (for a finished run) N equal to run.json's ``update``. Returns (metrics, episodes);
    BadRunFile (one line) on the first problem."""
    run_dir = Path(run_dir)
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    episodes = read_jsonl(run_dir / "episodes.jsonl")
    for i, m in enumerate(metrics, 1):
        if m.get("update") != i:
            raise BadRunFile(f"{run_dir / 'metrics.jsonl'}: record {i} has update {m.get('update')!r}, expected {i} "
                             "(missing or repeated updates)")
    if info is not None and info.get("status") in FINISHED and isinstance(info.get("update"), int) \
            and info["update"] != len(metrics):
        raise BadRunFile(f"{run_dir / 'metrics.jsonl'}: holds {len(metrics)} updates but run.json says "
                         f"{info['status']} at update {info['update']}")
    return metrics, episodes


# --- one owner per run directory ---------------------------------------------------------------------------------

class RunLock:
    """An exclusive, non-blocking ``flock`` on ``<run dir>/.lock``, held for the life of the run.

    The OS releases it when the process dies (any way: SIGKILL, OOM, node reboot), so a stale lock never blocks.
    The file holds ``host pid`` of the owner while held and is emptied on a clean release: a non-empty file found
    when taking the lock was left by a process that died holding it (``taken_over`` names it).
    """

    def __init__(self, run_dir: Path, what: str = "run directory"):
        self.run_dir = Path(run_dir)
        self.what = what  # how a refusal names the directory ("sweep directory" for a multirun's own directory)
        self.path = self.run_dir / LOCK_NAME
        self._fd: int | None = None
        self.taken_over: str | None = None

    @staticmethod
    def _holder(text: str) -> str:
        parts = text.split()
        return f"host {parts[0]}, pid {parts[1]}" if len(parts) >= 2 else "an unknown process"

    def acquire(self) -> RunLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            text = os.pread(fd, 256, 0).decode(errors="replace")
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise RunLocked(f"{self.what} {self.run_dir} is in use by another process "
                                f"({self._holder(text)}); refusing to write to it") from None
            raise
        previous = os.pread(fd, 256, 0).decode(errors="replace").strip()
        if previous:
            self.taken_over = self._holder(previous)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{platform.node()} {os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)
        except OSError:
            pass
        os.close(self._fd)  # closing the descriptor drops the flock
        self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def lock_holder(run_dir: Path) -> str | None:
    """Who holds ``run_dir``'s lock right now ("host H, pid P"), or None; creates nothing."""
    path = Path(run_dir) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return RunLock._holder(os.pread(fd, 256, 0).decode(errors="replace"))
    finally:
        os.close(fd)
    return None
