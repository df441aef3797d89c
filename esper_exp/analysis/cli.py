"""What esper-report and esper-drift share on the command line: common options, rule overrides, one-line errors."""

from __future__ import annotations

import argparse
import json
import sys


class AnalysisError(Exception):
    """Bad input: reported as one line, exit code 2, no traceback."""


def add_common(p: argparse.ArgumentParser, reps: int) -> None:
    p.add_argument("--out", default=None, help="output directory")
    p.add_argument("--reps", type=int, default=reps, help="bootstrap resamples (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap RNG seed (default: %(default)s)")
    p.add_argument("--rule", action="append", default=[], metavar="KEY=VALUE",
                   help="override one key of the decision rule stored in the runs (e.g. delta=0.05, "
                        "contrasts=tanh_vs_exact, anchors.cartpole.random=10). The report then labels every "
                        "verdict NOT pre-registered. Repeatable.")


def parse_rule_overrides(items) -> dict:
    """['delta=0.05', 'anchors.cartpole.random=10', 'contrasts=a,b'] -> nested dict (JSON values where they
    parse, comma lists for contrasts, strings otherwise)."""
    out: dict = {}
    for item in items or []:
        if "=" not in item:
            raise AnalysisError(f"--rule {item!r}: expected KEY=VALUE")
        key, val = item.split("=", 1)
        if key == "contrasts":
            v = [s.strip() for s in val.split(",") if s.strip()]
        else:
            try:
                v = json.loads(val)
            except ValueError:
                v = val
        node = out
        parts = key.split(".")
        for k in parts[:-1]:
            node = node.setdefault(k, {})
        node[parts[-1]] = v
    return out


def check_positive(**kw) -> None:
    for k, v in kw.items():
        if int(v) < 1:
            raise AnalysisError(f"--{k.replace('_', '-')} must be a positive integer (got {v})")


def fail(prog: str, e: Exception) -> int:
    print(f"{prog}: error: {e}", file=sys.stderr)
    return 2
