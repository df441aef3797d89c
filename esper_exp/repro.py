"""``esper-repro <run dir>``: re-run a finished run from its stored config and seed, and compare.

    esper-repro outputs/sweeps/gelu_amp_cartpole/cartpole-exact-fp32/seed=3
    esper-repro <run dir> --out /tmp/repro --keep        # keep the re-run's directory
    esper-repro <run dir> --device cpu                   # re-run a CUDA run on CPU (a different computation)

The re-run uses the resolved config stored in run.json ("config"), with wandb disabled and no progress bar
(neither changes what is computed), in a temporary directory. metrics.jsonl is compared line by line, ignoring
the wall-clock fields; then episodes.jsonl. Prints ``identical`` or the first update and metric where the runs
diverge (both values), then the fingerprint differences (python/torch/numpy/gymnasium/mujoco versions, device,
git sha) that may explain a divergence. Exit code: 0 identical, 1 diverges, 2 bad input (one line, no traceback).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from esper_exp.runformat import (
    WALL_CLOCK,
    BadRunFile,
    check_run_files,
    read_json,
    read_jsonl,
)

FINGERPRINT_VERSIONS = ("python", "torch", "numpy", "gymnasium", "mujoco")


class BadInput(Exception):
    pass


def _read_jsonl(path: Path) -> list[dict]:
    try:
        return read_jsonl(path)
    except BadRunFile as e:
        raise BadInput(str(e)) from None


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def first_divergence(stored: list[dict], rerun: list[dict], ignore=WALL_CLOCK, what: str = "update") -> str | None:
    """None if equal (ignoring ``ignore`` keys), else one line naming the first record and key that differ."""
    for i, (a, b) in enumerate(zip(stored, rerun)):
        keys = [k for k in a if k not in ignore] + [k for k in b if k not in a and k not in ignore]
        for k in keys:
            if k not in a or k not in b or not _same(a[k], b[k]):
                where = (f"update {a.get('update', i + 1)} (global_step {a.get('global_step')})" if what == "update"
                         else f"episode {i + 1} (global_step {a.get('global_step')})")
                return (f"diverges at {where}: {k}: stored {a.get(k, '<missing>')!r}, "
                        f"re-run {b.get(k, '<missing>')!r}")
    if len(stored) != len(rerun):
        n = min(len(stored), len(rerun))
        which = "update" if what == "update" else "episode"
        return f"diverges after {which} {n}: stored has {len(stored)} {which}s, re-run has {len(rerun)}"
    return None


def fingerprint(info: dict) -> dict[str, Any]:
    versions = info.get("versions") or {}
    fp = {k: versions.get(k) for k in FINGERPRINT_VERSIONS}
    fp.update(device=info.get("device"), git_sha=info.get("git_sha"))
    return fp


def fingerprint_diff(a: dict, b: dict) -> list[str]:
    fa, fb = fingerprint(a), fingerprint(b)
    return [f"{k}: {fa[k]} (stored) -> {fb[k]} (re-run)" for k in fa if fa[k] != fb[k]]


def load_stored(run_dir: Path) -> dict:
    if not run_dir.is_dir():
        raise BadInput(f"{run_dir} is not a directory")
    path = run_dir / "run.json"
    if not path.exists():
        raise BadInput(f"{run_dir} has no run.json: not a run directory")
    try:
        info = read_json(path)
    except BadRunFile:
        raise BadInput(f"{path} is not valid JSON") from None
    if not isinstance(info, dict) or not isinstance(info.get("config"), dict):
        raise BadInput(f"{path} holds no stored config (key 'config')")
    status = info.get("status")
    if status not in ("completed", "failed"):  # see runformat.FINISHED
        raise BadInput(f"{run_dir} is not finished (status {status!r}); only completed or failed runs can be reproduced")
    if not (run_dir / "metrics.jsonl").exists():
        raise BadInput(f"{run_dir} has no metrics.jsonl")
    try:  # the stored files must be whole before anything is re-run: no torn or missing lines
        check_run_files(run_dir, info)
    except BadRunFile as e:
        raise BadInput(f"stored run is damaged: {e}") from None
    return info


def rerun(config: dict, out_dir: Path, device: str | None) -> tuple[str, dict]:
    from omegaconf import OmegaConf

    from esper_exp.config import ConfigError
    from esper_exp.tracking import read_run_json
    from esper_exp.train import run

    config = json.loads(json.dumps(config))
    config.setdefault("tracking", {}).setdefault("wandb", {})["mode"] = "disabled"
    config["tracking"]["progress"] = "off"
    if device is not None:
        config["device"] = device
    try:
        status = run(OmegaConf.create(config), out_dir)
    except ConfigError as e:
        raise BadInput(f"the stored config does not run here: {e}") from None
    return status, read_run_json(out_dir) or {}


def compare(run_dir: Path, new_dir: Path, stored: dict, new: dict) -> tuple[bool, list[str]]:
    lines = []
    div = first_divergence(_read_jsonl(run_dir / "metrics.jsonl"), _read_jsonl(new_dir / "metrics.jsonl"))
    if div is None:
        div = first_divergence(_read_jsonl(run_dir / "episodes.jsonl"), _read_jsonl(new_dir / "episodes.jsonl"),
                               ignore=(), what="episode")
        if div is not None:
            div = f"episodes.jsonl {div}"
    if div is None and stored.get("status") != new.get("status"):
        div = f"diverges in status: stored {stored.get('status')!r} ({stored.get('reason')}), " \
              f"re-run {new.get('status')!r} ({new.get('reason')})"
    if div is None and stored.get("reason") != new.get("reason"):
        div = f"diverges in failure reason: stored {stored.get('reason')!r}, re-run {new.get('reason')!r}"
    if div is None:
        n = len(_read_jsonl(new_dir / "metrics.jsonl"))
        lines.append(f"identical ({n} updates; metrics.jsonl without wall-clock fields, episodes.jsonl, status)")
    else:
        lines.append(div)
    return div is None, lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="esper-repro", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="a finished run directory (holds run.json and metrics.jsonl)")
    parser.add_argument("--out", type=Path, default=None, help="directory for the re-run (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the re-run's directory (always kept on divergence)")
    parser.add_argument("--device", default=None, help="override the stored device (e.g. cpu); changes the run")
    args = parser.parse_args(argv)

    new_dir: Path | None = None
    temp, keep = args.out is None, False
    try:
        stored = load_stored(args.run_dir)
        if args.out is not None:
            if (args.out / "run.json").exists():
                raise BadInput(f"--out {args.out} already holds a run; choose an empty directory")
            try:
                args.out.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise BadInput(f"--out {args.out}: {e.strerror or e}") from None
            new_dir = args.out
        else:
            new_dir = Path(tempfile.mkdtemp(prefix="esper-repro-"))
        print(f"re-running {args.run_dir} (cell {stored.get('cell')}, seed {stored.get('seed')}) in {new_dir}",
              flush=True)
        status, new = rerun(stored["config"], new_dir, args.device)
        same, lines = compare(args.run_dir, new_dir, stored, new)
        keep = args.keep or not same
    except BadInput as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:  # a temp dir is removed on every path except a divergence (kept to look at) or --keep
        if temp and new_dir is not None and not keep:
            shutil.rmtree(new_dir, ignore_errors=True)

    diffs = fingerprint_diff(stored, new)
    for line in lines:
        print(line)
    if diffs:
        print("fingerprint differences" + (" (the result did not change):" if same else " (may explain it):"))
        for d in diffs:
            print(f"  {d}")
    else:
        fp = fingerprint(stored)
        print("fingerprint: same (" + ", ".join(f"{k} {v}" for k, v in fp.items()) + ")")
    stored_device = str(stored.get("device") or "")
    if not same:
        if stored_device and not stored_device.startswith("cpu"):
            det = stored["config"].get("deterministic")
            print(f"note: the original ran on CUDA ({stored_device}) and did not reproduce. CUDA runs reproduce "
                  f"bitwise only in deterministic mode (deterministic=true; it was {det}) on the same GPU model with "
                  "the same torch/CUDA/cuDNN versions" + ("" if det else "; re-run the study with deterministic=true"))
        print(f"re-run kept in {new_dir}")
    elif args.keep or args.out is not None:
        print(f"re-run kept in {new_dir}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
