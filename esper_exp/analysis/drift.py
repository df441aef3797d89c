"""esper-drift: how far runs' policies drift apart, judged per third of training against noise floors.

    esper-drift RUN_A RUN_B [--out DIR] [--return-window STEPS]
    esper-drift --sweep SWEEP_DIR [--control CELL] [--out DIR] [--reps N] [--seed S] [--rule reference=CELL]

Pair mode: distances of A from B at every common snapshot (drift_metrics: total variation, greedy-action
disagreement, output RMS, parameter distance, value RMS, windowed return difference); "IDENTICAL" when every
snapshot and episode is bitwise equal. A and B of the same cell and seed (or a perturb-duplicate run and its base)
form a determinism control: if they differ, that is reported loudly and the exit status is 3.

Sweep mode: every cell against the reference cell of the rule stored in the runs (exact/fp32 by default), seed by
seed, verdicts per third against the noise-floor controls (drift_verdicts), the applied-update probe; writes
drift.md + figures + CSV/JSON. Exit status 3 when a determinism control failed, else 1 when a damaged run (cut
or bad lines, missing updates) was left out, as esper-report.

Schema-2 snapshots are paired on the reference run's on-policy states: run ``python -m esper_exp.drift_eval
SWEEP_DIR --reference CELL`` (trainer side: it evaluates every run's saved weights on those states) before sweep
mode; runs that share no state set at a common update are refused with that command.

Modules: drift_metrics (files and distances; the record schema the trainer writes is in its docstring),
drift_verdicts (per-third verdicts), drift_report (output). Files only; never imports the trainer.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from esper_exp.runformat import BadRunFile

from . import drift_report as DR
from .cli import AnalysisError, add_common, check_positive, fail, parse_rule_overrides
from .drift_metrics import DriftError, pair_divergence, pair_verdict
from .load import RunReadError, load_run, load_sweep_or_raise, sort_cells
from .output import jsonable as _jsonable
from .output import write_csv as _write_csv
from .rule import DEFAULT_RULE, rule_from_runs

EXIT_NOT_DETERMINISTIC = 3
EXIT_DAMAGED = 1  # a damaged run was left out (as esper-report)
DEFAULTS = DR.DEFAULTS


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="esper-drift",
        description="Distances between two runs' policies over training, or sweep-wide: every cell against the "
                    "reference, per third of training, against noise-floor controls.")
    p.add_argument("runs", nargs="*", help="RUN_A RUN_B (run directories with snapshots.jsonl)")
    p.add_argument("--sweep", default=None, help="sweep directory: pair every cell with the reference, seed by seed")
    p.add_argument("--control", default=None,
                   help="noise-floor control cell (default: every <reference>/perturb-ulp|persistent cell)")
    p.add_argument("--return-window", type=float, default=None,
                   help="pair mode: steps of the return window (default: the snapshot spacing)")
    add_common(p, DEFAULTS["reps"])
    return p


def run_pair(a_dir, b_dir, out=None, return_window=None) -> dict:
    try:
        a, b = load_run(a_dir), load_run(b_dir)
    except RunReadError as e:
        raise DriftError(str(e)) from None
    for r in (a, b):
        if r.damage:
            print(f"esper-drift: DAMAGED RUN, comparing what could be read: {r.damage}", file=sys.stderr)
    p = pair_divergence(a, b, return_window)
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        _write_csv(out / "drift_pair.csv", p["rows"])
        (out / "drift_pair.json").write_text(json.dumps(_jsonable({**p, "verdict": pair_verdict(p)}),
                                                        indent=1, allow_nan=False) + "\n")
    return p


def run_sweep(sweep_dir, control=None, out=None, reference=None, **opts) -> tuple[list, Path]:
    o = {**DEFAULTS, **{k: v for k, v in opts.items() if v is not None}}
    check_positive(reps=o["reps"])
    root = Path(sweep_dir)
    sweep = load_sweep_or_raise(root, AnalysisError)
    for r in sweep.damaged:
        print(f"esper-drift: DAMAGED RUN EXCLUDED: {r.damage}", file=sys.stderr)
    if reference is None:
        stored, _ = rule_from_runs(r.info for r in sweep.runs)
        reference = (stored or DEFAULT_RULE).get("reference", DEFAULT_RULE["reference"])
    cells = sort_cells({r.cell for r in sweep.runs})
    if reference not in cells:
        raise AnalysisError(f"unknown reference cell '{reference}'; cells: {', '.join(cells)}")
    if control is not None and control not in cells:
        raise AnalysisError(f"unknown control cell '{control}'; cells: {', '.join(cells)}")
    if not DR.sweep_has_drift(sweep):
        raise AnalysisError("no run has snapshots.jsonl or probe.jsonl (train with drift.snapshot_every / "
                            "drift.probe_every)")
    out = Path(out) if out is not None else root / "drift"
    out.mkdir(parents=True, exist_ok=True)
    results = DR.analyse(sweep, reference, control, o)
    for res in results:  # damaged runs (cut lines, missing updates) are left out; each env says which
        res["damaged"] = [r.damage for r in sweep.damaged if r.env == res["env"]]
    DR.write_files(results, out, reference, o)
    lines = DR.section_lines(results, out, reference, o, heading="#")
    (out / "drift.md").write_text("\n".join([f"# esper-drift: {root}", ""] + lines[2:]), encoding="utf-8")
    return results, out


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.sweep:
            if args.runs:
                raise AnalysisError("give either RUN_A RUN_B or --sweep DIR, not both")
            over = parse_rule_overrides(args.rule)
            unknown = [k for k in over if k != "reference"]
            if unknown:
                raise AnalysisError(f"--rule: esper-drift uses only reference= (got {', '.join(unknown)})")
            results, out = run_sweep(args.sweep, args.control, args.out, over.get("reference"), reps=args.reps,
                                     seed=args.seed)
            for r in results:
                print(f"== {r['env']}: reference {r['reference']}, controls {', '.join(r['controls']) or 'none'}")
                for s in r.get("floor_summary", []):
                    print(f"  {s['cell']} vs {s['control']}: early {s.get('early')}, middle {s.get('middle')}, "
                          f"late {s.get('late')}")
                for d in r["determinism"]:
                    if not d["identical"]:
                        print(d["verdict"], file=sys.stderr)
            print(f"esper-drift: wrote {out / 'drift.md'}")
            if DR.any_determinism_failure(results):
                return EXIT_NOT_DETERMINISTIC
            return EXIT_DAMAGED if any(r["damaged"] for r in results) else 0
        if len(args.runs) != 2:
            raise AnalysisError("give two run directories (RUN_A RUN_B) or --sweep DIR")
        p = run_pair(args.runs[0], args.runs[1], args.out, args.return_window)
    except (AnalysisError, DriftError, BadRunFile) as e:
        return fail("esper-drift", e)
    print(f"A: {p['a']} ({p['cell_a']}, seed {p['seed_a']})\nB: {p['b']} ({p['cell_b']}, seed {p['seed_b']})")
    print(DR.pair_table(p))
    v = pair_verdict(p)
    if p["determinism_control"] and not p["identical"]:
        print(v, file=sys.stderr)
        return EXIT_NOT_DETERMINISTIC
    print(v)
    return 0


if __name__ == "__main__":
    sys.exit(main())
