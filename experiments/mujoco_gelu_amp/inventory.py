"""Where the primary study stands, per env and block of 10 seeds: the first command of a session (dev side).

    python experiments/mujoco_gelu_amp/inventory.py [--sweep outputs/sweeps/mujoco_gelu_amp] [--carries .]

A block (40 runs: 4 cells x 10 seeds) is "kept" when its four archives are in runs/ (keep_runs.sh; git is the only
store that outlives a session); otherwise its runs' run.json statuses in the sweep directory say how far it got.
Also named: kept blocks whose runs this checkout's sweep directory lacks (a new checkout: the reports need them
unpacked, the boxes do not), completed blocks not yet kept (run keep_runs.sh and commit), and the carries on this
VM (``.carry_s*``: the unfinished runs a box packed, and the update their checkpoints are at), which exist only
while this checkout does. Reads statuses and update counts only, never returns: the study stays blind.
Then one line each for the probe and the exploratory arms (runs kept in git, runs completed or unfinished here).
Stdlib only. Exit 2 with one line if the archives' directory is missing. ``--require-complete``: exit 1 with one line
unless all 480 registered runs have completed in the sweep directory (analyse.sh's guard: no contrast before that).
"""

from __future__ import annotations

import argparse
import json
import lzma
import re
import sys
import tarfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "gpu_throughput"))
import carry  # noqa: E402  (the carries' own reader)
ENVS = ("halfcheetah", "hopper", "walker2d")
CELLS = ("exact-fp32", "tanh-fp32", "exact-bf16", "tanh-bf16")
BLOCKS = ((1, 10), (11, 20), (21, 30), (31, 40))
# The probe and the exploratory arms: (their kept archives under the study directory, registered runs, as the
# README's design table gives them; analyse.sh reads the counts from here, --registered). Their sweep directory is
# mujoco_gelu_amp_<name> beside --sweep.
OTHERS = {"probe": ("probe/runs", 60), "cpu": ("exploratory/cpu/runs", 40), "fp16": ("exploratory/fp16/runs", 20),
          "alpha1": ("exploratory/alpha1/runs", 40), "3m": ("exploratory/3m/runs", 40),
          "width384": ("exploratory/width384/runs", 20), "compile": ("exploratory/compile/runs", 20),
          "fp16_fixed": ("exploratory/fp16_fixed/runs", 20)}  # fp16 again after session 22's fix (stacked.py)
STEPS_PER_RUN = 488 * 2048  # 999,424: the registered 1M steps in whole updates of 2,048


def _archive(runs: Path, env: str, cell: str, a: int, b: int) -> Path:
    return runs / f"{env}-{cell}_seeds{a:02d}-{b:02d}.tar.xz"  # keep_runs.sh's names


def _state(run_dir: Path) -> tuple[str, int]:
    """(status, update) from run.json: ("missing", 0) where there is none, ("unreadable", 0) where it is damaged. A run
    still "running" in its run.json (its state packed from a frozen sweep: run.json is rewritten when a run starts,
    resumes or stops, not per update, so it holds 0 or the update it resumed from) has its update from the last line
    of metrics.jsonl where that is later."""
    try:
        info = json.loads((run_dir / "run.json").read_text())
    except FileNotFoundError:
        return "missing", 0
    except (OSError, ValueError):
        return "unreadable", 0
    update = int(info.get("update") or 0)
    if info.get("status") == "running":
        try:
            lines = (run_dir / "metrics.jsonl").read_text().splitlines()
            update = max(update, int(json.loads(lines[-1])["update"]) if lines else 0)
        except (OSError, ValueError, KeyError):
            pass
    return str(info.get("status")), update


def block_state(sweep: Path, runs: Path, env: str, a: int, b: int) -> tuple[str, dict[str, int]]:
    """One table cell and its counts (kept / completed / unfinished / not started runs)."""
    states = [_state(sweep / f"{env}-{cell}" / f"seed={s}") for cell in CELLS for s in range(a, b + 1)]
    n = len(states)
    if all(_archive(runs, env, cell, a, b).is_file() for cell in CELLS):
        here = sum(st == "completed" for st, _ in states)
        return ("kept" if here == n else f"kept ({n - here} not unpacked here)"), {"kept": n, "not unpacked": n - here}
    done = sum(st == "completed" for st, _ in states)
    fresh = sum(st == "missing" for st, _ in states)
    ups = [u for st, u in states if st not in ("completed", "missing")]
    parts = []
    if done:
        parts.append(f"{done} completed, not kept")
    if ups:
        parts.append(f"{len(ups)} unfinished (updates {min(ups)}-{max(ups)})")
    if fresh:
        parts.append("not started" if fresh == n else f"{fresh} not started")
    return ", ".join(parts), {"completed": done, "unfinished": len(ups), "not started": fresh}


_CKPT = re.compile(r"^(?P<sweep>.+?)/(?P<cell>[a-z0-9]+(?:-[a-z0-9]+){2,})/seed=(?P<seed>\d+)/checkpoints/"
                   r"ckpt-(?P<u>\d+)\.pt")


def carry_summary(parts_dir: Path, sweep: Path) -> str:
    """'env seeds a-b: N runs at update U; ...' from a carry's checkpoint names (carry.py), marked stale where all
    those runs have completed since in the sweep directory the carry names (the carry would resume nothing). A carry
    of another sweep than ``sweep`` (the probe's, an arm's) is named by its sweep directory's name; runs of one cell
    at one update (the probe's one process per env x cell) are named by their cell, runs of several by their env."""
    try:
        names = carry.member_names(parts_dir)
    except (OSError, EOFError, lzma.LZMAError, tarfile.TarError) as e:
        return f"unreadable ({e})"
    groups: dict[tuple[str, str, int], set[tuple[str, int]]] = {}
    for name in names:
        m = _CKPT.search(name)
        if m:
            key = (m["sweep"], m["cell"].split("-")[0], int(m["u"]))
            groups.setdefault(key, set()).add((m["cell"], int(m["seed"])))
    if not groups:
        return "no checkpoints"
    out = []
    for (where, env, u), runs in sorted(groups.items()):
        seeds = [seed for _, seed in runs]
        cells = {cell for cell, _ in runs}
        name = next(iter(cells)) if len(cells) == 1 else env
        stale = all(_state(Path(where) / cell / f"seed={seed}")[0] == "completed" for cell, seed in runs)
        label = "" if Path(where) == sweep else f"{Path(where).name} "
        out.append(f"{label}{name} seeds {min(seeds)}-{max(seeds)}: {len(runs)} runs at update {u}"
                   + (" (stale: they have completed since)" if stale else ""))
    return "; ".join(out)


def other_state(study: Path, sweeps: Path, name: str) -> str:
    """One line for the probe or an arm: runs kept in git (the run.json files its archives hold: archive.py packs
    finished runs only) and, of the rest, how far its sweep directory here got."""
    rel, registered = OTHERS[name]
    kept = 0
    for a in sorted((study / rel).glob("*.tar.xz")):
        with tarfile.open(a) as tar:
            kept += sum(n.endswith("/run.json") and "/seed=" in n for n in tar.getnames())
    sweep = sweeps / f"mujoco_gelu_amp_{name}"
    states = [_state(r.parent) for r in sweep.glob("*/seed=*/run.json")]
    done = sum(st == "completed" for st, _ in states)
    ups = [u for st, u in states if st != "completed"]
    line = f"{name}: {kept} of {registered} registered runs kept in git"
    if done > kept:
        line += f", {done - kept} more completed in {sweep} (keep_runs.sh, then commit)"
    if ups:
        line += f", {len(ups)} unfinished there (updates {min(ups)}-{max(ups)})"
    if kept and done < kept:
        line += f" ({kept - done} not unpacked in {sweep})"
    return line


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="inventory.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--sweep", type=Path, default=Path("outputs/sweeps/mujoco_gelu_amp"))
    runs = HERE / "runs"
    runs = runs.relative_to(Path.cwd()) if runs.is_relative_to(Path.cwd()) else runs
    ap.add_argument("--runs", type=Path, default=runs, help="the kept archives (default: runs/ here)")
    ap.add_argument("--carries", type=Path, default=Path("."), help="where .carry_s* directories are looked for")
    ap.add_argument("--study", type=Path, default=HERE, help="the study directory with probe/ and exploratory/ (here)")
    ap.add_argument("--registered", choices=OTHERS, help="print how many runs that arm (or the probe) registered; "
                    "nothing else (analyse.sh: the one place these counts are written)")
    ap.add_argument("--require-complete", action="store_true",
                    help="exit 1 unless every registered run has completed in --sweep (analyse.sh: blind until then)")
    args = ap.parse_args(argv)
    if args.registered:
        print(OTHERS[args.registered][1])
        return 0
    if not args.runs.is_dir():
        print(f"inventory.py: no archive directory {args.runs}", file=sys.stderr)
        return 2
    totals = {"kept": 0, "completed": 0, "unfinished": 0, "not started": 0, "not unpacked": 0}
    print("| env | " + " | ".join(f"seeds {a}-{b}" for a, b in BLOCKS) + " |")
    print("|---|" + "---|" * len(BLOCKS))
    for env in ENVS:
        cells = []
        for a, b in BLOCKS:
            text, counts = block_state(args.sweep, args.runs, env, a, b)
            cells.append(text)
            for k, v in counts.items():
                totals[k] += v
        print(f"| {env} | " + " | ".join(cells) + " |")
    n = sum(totals[k] for k in ("kept", "completed", "unfinished", "not started"))
    left = n - totals["kept"] - totals["completed"]
    print(f"\n{n} registered runs: {totals['kept']} kept in git, {totals['completed']} completed but not kept, "
          f"{totals['unfinished']} unfinished, {totals['not started']} not started; left to train: {left} runs "
          f"({left * STEPS_PER_RUN / 1e6:.1f}M steps, fewer by the unfinished runs' progress)")
    if totals["not unpacked"]:
        print(f"kept runs not unpacked here (the reports need them): python experiments/gpu_throughput/archive.py "
              f"unpack {args.runs}/*.tar.xz {args.sweep.parent}")
    if totals["completed"]:
        print("completed runs not kept: bash experiments/mujoco_gelu_amp/keep_runs.sh, then commit")
    carries = sorted(p for p in args.carries.glob(".carry_s*") if p.is_dir())
    for c in carries:
        parts = carry.part_files(c)
        size = sum(p.stat().st_size for p in parts) / 1e6
        print(f"carry {c}: {size:.1f} MB, " + (carry_summary(c, args.sweep) if parts else "empty"))
    if not carries:
        print("no carries (.carry_s*) on this VM: unfinished runs, if any, start over")
    print("the probe and the exploratory arms:")
    for k in OTHERS:
        print("  " + other_state(args.study, args.sweep.parent, k))
    here = totals["kept"] - totals["not unpacked"] + totals["completed"]
    if args.require_complete and here < n:
        print(f"inventory.py: {n - here} of {n} registered runs have not completed in {args.sweep} (trained or "
              "unpacked): the study stays blind, nothing analysed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
