"""``esper-repro <run dir>``: re-run a finished run from its stored config and seed, and compare.

    esper-repro outputs/sweeps/gelu_amp_cartpole/cartpole-exact-fp32/seed=3
    esper-repro <run dir> --out /tmp/repro --keep        # keep the re-run's directory
    esper-repro <run dir> --device cpu                   # re-run a CUDA run on CPU (a different computation)

The re-run uses the resolved config stored in run.json ("config"), with wandb disabled and no progress bar
(neither changes what is computed), in a temporary directory. A CUDA run that was a member of a group is re-run
with its whole group in the stored layout and CUDA-graph mode (on CUDA a member's numbers depend on its group;
the other members' run.json files must be found, where run.json names them or beside the run). metrics.jsonl is
compared line by line, ignoring the wall-clock fields; then episodes.jsonl. Prints ``identical`` or the first update and metric where the runs
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
    cuda = info.get("cuda") or {}
    fp.update(device=info.get("device"), git_sha=info.get("git_sha"), cuda_graphs=info.get("cuda_graphs"),
              **{f"cuda_{k}": cuda.get(k) for k in ("gpu", "driver", "cuda_runtime", "cublas") if k in cuda})
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


def group_layout(run_dir: Path, stored: dict, device: str | None) -> tuple[list[dict], int] | None:
    """The stored configs of a CUDA run's whole group, in member order, and this run's index; None when the run
    alone reproduces it (a CPU run: a member computes bitwise what it computes alone; or a group of one).

    On CUDA a member's numbers depend on its group's layout (batched-GEMM kernels), so its group is re-run as it
    was: same members, same order. Member directories are found where run.json's ``group.members`` names them, or
    in the sweep beside this run's (``<cell>/seed=<k>``, e.g. after the sweep was copied elsewhere)."""
    group = stored.get("group") or {}
    on_cuda = str(device).startswith("cuda") if device is not None else bool(stored.get("cuda"))  # run.json's
    # "device" names the hardware (the GPU model); a CUDA run is one with a "cuda" block
    if not on_cuda or int(group.get("size", 1)) <= 1:
        return None
    configs = []
    for i, name in enumerate(group.get("members") or []):
        if i == group.get("member_index"):
            configs.append(stored["config"])
            continue
        # where it was; else in its cell's directory beside this run's cell (a mixed group's members are in several
        # cells: seed=<k> of this run's own cell may be another member); else beside this run
        candidates = [Path(name), run_dir.parent.parent / Path(name).parent.name / Path(name).name,
                      run_dir.parent / Path(name).name]
        found = next((c / "run.json" for c in candidates if (c / "run.json").exists()), None)
        if found is None:
            raise BadInput(f"this CUDA run was member {group.get('member_index')} of a group of {group.get('size')}: "
                           f"its numbers depend on that group, but member {i} ({name}) is not found; re-run needs "
                           "every member's run.json")
        try:
            configs.append(read_json(found)["config"])
        except (BadRunFile, KeyError, TypeError):
            raise BadInput(f"{found} holds no stored config (key 'config')") from None
    if len(configs) != int(group["size"]):
        raise BadInput(f"{run_dir}/run.json: group lists {len(configs)} members, size {group['size']}")
    return configs, int(group["member_index"])


def _prepared(config: dict, device: str | None) -> dict:
    config = json.loads(json.dumps(config))
    config.setdefault("tracking", {}).setdefault("wandb", {})["mode"] = "disabled"
    config["tracking"]["progress"] = "off"
    if device is not None:
        config["device"] = device
    return config


def rerun(config: dict, out_dir: Path, device: str | None, group: tuple[list[dict], int] | None = None,
          cuda_graphs: bool | None = None) -> tuple[str, dict, Path]:
    """Re-run ``config`` in ``out_dir`` (alone), or its whole ``group`` in ``out_dir/member-<i>`` with the same
    CUDA-graph mode as stored; returns (status, run.json, run dir) of the run being reproduced."""
    import os

    from omegaconf import OmegaConf

    from esper_exp.config import ConfigError
    from esper_exp.tracking import read_run_json
    from esper_exp.train import run, run_group

    previous = os.environ.get("ESPER_CUDA_GRAPHS")
    if cuda_graphs is not None:
        os.environ["ESPER_CUDA_GRAPHS"] = "1" if cuda_graphs else "0"
    try:
        if group is None:
            status, target = run(OmegaConf.create(_prepared(config, device)), out_dir), out_dir
        else:
            configs, k = group
            jobs = [(OmegaConf.create(_prepared(c, device)), out_dir / f"member-{i}") for i, c in enumerate(configs)]
            print(f"CUDA run: re-running its group of {len(jobs)} in the stored layout (member {k})", flush=True)
            status, target = run_group(jobs, job_nums=[0] * len(jobs), strict=True)[k], jobs[k][1]
    except ConfigError as e:
        raise BadInput(f"the stored config does not run here: {e}") from None
    finally:
        if cuda_graphs is not None:
            if previous is None:
                os.environ.pop("ESPER_CUDA_GRAPHS", None)
            else:
                os.environ["ESPER_CUDA_GRAPHS"] = previous
    return status, read_run_json(target) or {}, target


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
        group = group_layout(args.run_dir, stored, args.device)
        status, new, target = rerun(stored["config"], new_dir, args.device, group, stored.get("cuda_graphs"))
        same, lines = compare(args.run_dir, target, stored, new)
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
