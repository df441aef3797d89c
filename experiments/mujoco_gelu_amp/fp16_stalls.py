"""How the fp16 runs stalled, from their metrics.jsonl only (dev side; no device, no rerun).

    python experiments/mujoco_gelu_amp/fp16_stalls.py [SWEEP] [--out FILE.md] [--trace TRACE.jsonl]

SWEEP (default outputs/sweeps/mujoco_gelu_amp_fp16; a new checkout unpacks exploratory/fp16/runs/*.tar.xz there)
holds the runs; every run that records a ``loss_scale`` (the fp16 members) gets one row: the update in which its loss
scale first fell below 2**-127 (``collapse``), the scale before that update, the minibatch steps the scaler skipped in
it (the rise of ``nonfinite_grad_steps``), the most it skipped in any earlier update, whether that update's mean losses
were finite, and how many updates stalled (runformat.stalled: every attempted step skipped).

Why 2**-127: the scaler multiplies the gradients by 1/scale in float32 (MemberGradScaler.unscale_, as torch's
GradScaler), and 1/scale overflows float32 once the scale is at or below 2**-128; from then on a zero gradient times an
infinite factor is NaN, every step is skipped and the scale halves to 0 and stays there. Getting there from a scale S
takes log2(S) + 128 halvings, each a skipped step (the scale grows only after 2,000 good steps in a row), so a collapse
within one update means steps were skipped at every scale from S down to 2**-127: a non-finite gradient that no scale
removes.

Two more columns tell what kind of non-finite value a run's steps saw, from each update's mean gradient norm (the
mean over its attempted steps, so one non-finite step makes it non-finite): the updates whose mean norm was inf (an
ordinary overflow: some step's norm inf, none NaN) and the first whose mean was NaN. Session 22 found why a NaN norm
stalled a run for good: the clip's in-place multiply left the NaN in the padding of the flat gradient buffer, which
no later step rewrote (esper_exp/stacked.py, FlatParams; fixed there). Before that fix the first NaN-norm update is
the collapse, and every later update's norm is NaN.

``--trace``: the file such a rerun wrote (``ESPER_NONFINITE_TRACE``, esper_exp/nonfinite.py; the runs of SWEEP are
the rerun's). Each run's traced steps (matched by run.json's ``env_id``, ``gelu``, ``precision``, ``seed``; a resumed
run's earlier launches included) add a column: the
first traced step (update, loss scale) and the backward op that first made its gradient non-finite, with the ops
named by its later traced steps where they differ. ``--kept KEPT_SWEEP``: whether each rerun run's metrics.jsonl
equals the same cell and seed's in KEPT_SWEEP (the kept runs), wall-clock keys aside, line by line through the rerun's
last update, or from which update it differs: a trace describes the kept runs' collapses only where they are equal.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from esper_exp import repro, runformat  # noqa: E402

FLOOR = 2.0 ** -127  # the smallest scale whose float32 reciprocal is finite (2**127)


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def run_row(run: Path) -> dict | None:
    """One fp16 run's stall record, or None for a run without a loss scale (fp32/bf16)."""
    info = json.loads((run / "run.json").read_text())
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    if not rows or "loss_scale" not in rows[0]:
        return None
    n_mb = info["config"]["ppo"]["num_minibatches"]
    prev_skipped, prev_scale, worst = 0, None, 0
    out = {"run": f"{run.parent.name}/{run.name}", "collapse": None, "scale_before": None, "skipped_then": None,
           "most_skipped_before": None, "losses_finite_then": None, "stalled_updates": 0, "inf_norm_updates": 0,
           "first_nan_norm": None}
    for r in rows:
        norm = float(r["grad_norm"]) if "grad_norm" in r else 0.0  # metrics.jsonl writes inf and NaN as strings
        out["inf_norm_updates"] += norm == math.inf
        if math.isnan(norm) and out["first_nan_norm"] is None:
            out["first_nan_norm"] = r["update"]
        skipped = r["nonfinite_grad_steps"] - prev_skipped
        out["stalled_updates"] += bool(runformat.stalled(skipped, r["epochs"], n_mb))
        if out["collapse"] is None and _finite(r["loss_scale"]) and r["loss_scale"] < FLOOR:
            out.update(collapse=r["update"], scale_before=prev_scale, skipped_then=skipped, most_skipped_before=worst,
                       losses_finite_then=_finite(r["policy_loss"]) and _finite(r["value_loss"]))
        elif out["collapse"] is None:
            worst = max(worst, skipped)
        prev_skipped, prev_scale = r["nonfinite_grad_steps"], r["loss_scale"]
    if out["collapse"] is None:
        out["most_skipped_before"] = worst
    return out


def traced_ops(run: Path, records: list[dict]) -> str:
    """The trace column of one run: its first traced step and op, then the other ops its traced steps name."""
    info = json.loads((run / "run.json").read_text())
    mine = [r for r in records if all(r.get(key) == info.get(key) for key in ("env_id", "gelu", "precision", "seed"))]
    if not mine:
        return "-"
    op = lambda r: (r["trace"]["first"] or {}).get("node", "none found")  # noqa: E731
    first = mine[0]
    tail = " <- ".join((first["trace"]["first"] or {}).get("path", [])[-4:][::-1])
    others = sorted({op(r) for r in mine[1:]} - {op(first)})
    return (f"update {first['update']}, scale {first['loss_scale']:g}: {op(first)}" + (f" ({tail})" if tail else "")
            + step_note(first) + (f"; later also {', '.join(others)}" if others else "") + f" [{len(mine)} traced]")


def step_note(record: dict) -> str:
    """What the record's whole-step recomputation says (nonfinite.step_gradients; records from before it: nothing):
    the recomputed norm (float32, as the step's check reads it; float64 where they differ) and where the step's own
    gradient, and the recomputation's, were non-finite; with ``step_stats`` the step's own policy loss (beside the
    recomputation's) and norm."""
    sg = record.get("step_gradients")
    if sg is None:
        return ""
    e = sg["eager"]
    where = lambda d: ", ".join(f"{key} ({n})" for key, n in d.items()) or "nowhere"  # noqa: E731
    norm = f"{e['grad_norm']:.3g}" + (f" (float64 {e['grad_norm_f64']:.3g})" if e["grad_norm"] != e["grad_norm_f64"]
                                      and math.isfinite(e["grad_norm_f64"]) else "")
    own = record.get("step_stats", {})
    losses = (f"policy loss {own['policy_loss']:.4g} (eager {record['policy_loss']:.4g}), norm {own['grad_norm']:.3g}, "
              if "policy_loss" in own else "")
    return (f"; eager step: norm {norm}, non-finite {where(e['nonfinite'])}; the run's step: {losses}non-finite "
            f"{where(sg['step']['nonfinite'])}")


def same_as_kept(run: Path, kept: Path) -> str:
    """'yes (updates 1-N)', 'no: from update U', or 'no kept run' for the rerun ``run`` against its kept twin."""
    twin = kept / run.parent.name / run.name / "metrics.jsonl"
    if not twin.is_file():
        return "no kept run"
    mine, theirs = runformat.read_jsonl(run / "metrics.jsonl"), runformat.read_jsonl(twin)
    for i, r in enumerate(mine):  # esper-repro's comparison (wall-clock keys aside, NaN equal to NaN), line by line
        if i >= len(theirs) or repro.first_divergence([theirs[i]], [r]) is not None:
            return f"no: from update {r.get('update', i + 1)}"
    return f"yes (updates 1-{len(mine)})"


def table(rows: list[dict]) -> str:
    extra = [(key, title) for key, title in (("trace", "first non-finite op (trace)"), ("kept", "same as the kept run"))
             if any(key in r for r in rows)]
    head = ("| run | scale collapsed in update | scale before | steps skipped in that update | most skipped in an "
            "earlier update | that update's losses finite | stalled updates | updates with an inf mean norm | first "
            "update with a NaN mean norm |" + "".join(f" {title} |" for _, title in extra)
            + "\n|---|---:|---:|---:|---:|---|---:|---:|---:|"
            + "---|" * len(extra) + "\n")
    fmt = lambda v: "-" if v is None else (f"{v:g}" if isinstance(v, float) else str(v))  # noqa: E731
    return head + "".join(
        f"| {r['run']} | {fmt(r['collapse'])} | {fmt(r['scale_before'])} | {fmt(r['skipped_then'])} | "
        f"{fmt(r['most_skipped_before'])} | {fmt(r['losses_finite_then'])} | {r['stalled_updates']} | "
        f"{r['inf_norm_updates']} | {fmt(r['first_nan_norm'])} |"
        + "".join(f" {r.get(key, '-')} |" for key, _ in extra) + "\n" for r in rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sweep", nargs="?", type=Path, default=Path("outputs/sweeps/mujoco_gelu_amp_fp16"))
    ap.add_argument("--out", type=Path, help="also write the table (and a one-line summary) to this markdown file")
    ap.add_argument("--trace", type=Path, help="the ESPER_NONFINITE_TRACE file of a rerun whose runs SWEEP holds")
    ap.add_argument("--kept", type=Path, help="the kept runs' sweep, to compare SWEEP's runs (a rerun's) with")
    a = ap.parse_args(argv)
    if a.trace and not a.trace.is_file():
        print(f"fp16_stalls.py: --trace {a.trace}: no such file", file=sys.stderr)
        return 2
    if a.kept and not a.kept.is_dir():
        print(f"fp16_stalls.py: --kept {a.kept}: no such sweep directory", file=sys.stderr)
        return 2
    runs = sorted((p.parent for p in a.sweep.glob("*/seed=*/run.json")),
                  key=lambda p: (p.parent.name, int(p.name.removeprefix("seed="))))
    if not runs:
        print(f"fp16_stalls.py: no runs in {a.sweep} (unpack exploratory/fp16/runs/*.tar.xz there first)",
              file=sys.stderr)
        return 2
    records = [json.loads(line) for line in a.trace.read_text().splitlines() if line.strip()] if a.trace else None
    rows = []
    for run in runs:
        row = run_row(run)
        if row is not None and records is not None:
            row["trace"] = traced_ops(run, records)
        if row is not None and a.kept:
            row["kept"] = same_as_kept(run, a.kept)
        if row is not None:
            rows.append(row)
    collapsed = [r for r in rows if r["collapse"] is not None]
    summary = (f"{len(collapsed)} of {len(rows)} loss-scaled runs had their scale collapse (below 2**-127)"
               + (f"; in that update they skipped {min(r['skipped_then'] for r in collapsed)}-"
                  f"{max(r['skipped_then'] for r in collapsed)} steps, against at most "
                  f"{max(r['most_skipped_before'] for r in rows)} in any other update before a collapse"
                  if collapsed else "") + ".")
    nan = [r for r in rows if r["first_nan_norm"] is not None]
    summary += (f" {sum(r['inf_norm_updates'] > 0 for r in rows)} runs had updates with an inf mean gradient norm "
                f"({sum(r['inf_norm_updates'] for r in rows)} updates); {len(nan)} had one with a NaN mean norm, "
                f"{sum(r['first_nan_norm'] == r['collapse'] for r in nan)} of them first in their collapse update.")
    text = table(rows) + "\n" + summary + "\n"
    print(text, end="")
    if a.out:
        cmd = f"{a.sweep}" + (f" --trace {a.trace}" if a.trace else "") + (f" --kept {a.kept}" if a.kept else "")
        a.out.write_text(f"# fp16 stalls: `python experiments/mujoco_gelu_amp/fp16_stalls.py {cmd}`\n\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
