r"""Operating characteristics of the registered decision rule at the study's seed count, by simulation (pre-data).

How often would the primary study's rule (configs/experiment/mujoco_gelu_amp.yaml, `analysis:`) say equivalent /
different / inconclusive, per scope, if the truth were a given GELU effect? Scores are drawn per env, cell and seed
as normalised AUCs: Normal(0.7, sd_env) with sd_env the largest SD the pilot measured in that env (pilot/pilot.json;
no contrast of the study's data is used), a planted effect added to both tanh cells in every env (the precision
effect is zero), and a per-seed component shared by the four cells of a seed giving the pairing correlation rho.
Each simulated study is judged by the same code esper-report uses (esper_exp.analysis.decision.judge_all).

    python experiments/mujoco_gelu_amp/operating/operating.py --sims 300 --reps 1000 \
        --out experiments/mujoco_gelu_amp/operating

Writes operating.csv (one row per rho, effect, scope, contrast: counts and shares of each verdict) and operating.md.
Limits: normal scores (real normalised AUCs may be skewed or bimodal; the IQM resists some of that), one SD per env
from 10-seed pilot groups, a bootstrap of `--reps` resamples per contrast rather than the report's 20,000.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from esper_exp.analysis.decision import judge_all
from esper_exp.analysis.rule import Rule

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
CELLS = ["exact/fp32", "tanh/fp32", "exact/bf16", "tanh/bf16"]
VERDICTS = ("equivalent", "different", "inconclusive")


def registered_rule() -> dict:
    """The primary study's stored decision rule (the config's `analysis:` block), as the runs store it."""
    return OmegaConf.to_container(OmegaConf.load(ROOT / "configs/experiment/mujoco_gelu_amp.yaml").analysis)


def pilot_sds(path: Path) -> dict[str, float]:
    """The largest pilot SD per env (the pilot's own rule reads the largest too)."""
    sds: dict[str, float] = {}
    for g in json.loads(path.read_text())["groups"]:
        sds[g["env"]] = max(sds.get(g["env"], 0.0), float(g["sd"]))
    return sds


def draw(rng, sds: dict[str, float], seeds: int, effect: float, rho: float) -> dict:
    """{env: {cell: {seed: score}}}: total SD sd_env, a share rho of its variance common to a seed's four cells."""
    scores = {}
    for env, sd in sds.items():
        shared = rng.normal(0.0, sd * np.sqrt(rho), seeds)
        scores[env] = {}
        for cell in CELLS:
            own = rng.normal(0.0, sd * np.sqrt(1.0 - rho), seeds)
            x = 0.7 + shared + own + (effect if cell.startswith("tanh/") else 0.0)
            scores[env][cell] = {s + 1: float(v) for s, v in enumerate(x)}
    return scores


def simulate(rule: Rule, sds: dict[str, float], seeds: int, effects, rhos, sims: int, reps: int,
             seed: int) -> dict[tuple, Counter]:
    """{(rho, effect, scope, contrast): Counter of verdicts over ``sims`` simulated studies}."""
    rng = np.random.default_rng(seed)
    cells = {env: CELLS for env in sds}
    counts: dict[tuple, Counter] = {}
    for rho in rhos:
        for effect in effects:
            for i in range(sims):
                for r in judge_all(draw(rng, sds, seeds, effect, rho), cells, rule, reps, seed + i):
                    counts.setdefault((rho, effect, r["scope"], r["contrast"]), Counter())[r["verdict"]] += 1
    return counts


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sims", type=int, default=300)
    ap.add_argument("--reps", type=int, default=1000)
    ap.add_argument("--seeds", type=int, default=40, help="paired seeds per env and cell (the study's: 40)")
    ap.add_argument("--effects", default="0,0.05,0.1,0.2", help="planted tanh effects, normalised AUC")
    ap.add_argument("--rhos", default="0,0.5", help="pairing correlations")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    for name in ("sims", "reps", "seeds"):
        if getattr(a, name) < 1:
            print(f"operating.py: --{name} {getattr(a, name)}: must be a positive integer", file=sys.stderr)
            return 2
    try:
        effects = [float(x) for x in a.effects.split(",")]
        rhos = [float(x) for x in a.rhos.split(",")]
    except ValueError as e:
        print(f"operating.py: --effects / --rhos: comma-separated numbers expected ({e})", file=sys.stderr)
        return 2
    if any(not 0.0 <= r < 1.0 for r in rhos):
        print(f"operating.py: --rhos {a.rhos}: each must be in [0, 1)", file=sys.stderr)
        return 2
    rule = Rule.from_dict(registered_rule())
    sds = pilot_sds(ROOT / "experiments/mujoco_gelu_amp/pilot/pilot.json")
    t0 = time.time()
    counts = simulate(rule, sds, a.seeds, effects, rhos, a.sims, a.reps, a.seed)
    a.out.mkdir(parents=True, exist_ok=True)
    fields = ["rho", "effect", "scope", "contrast", "sims"] + [f"{v}_share" for v in VERDICTS]
    with open(a.out / "operating.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for (rho, effect, scope, contrast), c in counts.items():
            w.writerow({"rho": rho, "effect": effect, "scope": scope, "contrast": contrast, "sims": a.sims,
                        **{f"{v}_share": c[v] / a.sims for v in VERDICTS}})
    lines = ["Pilot SDs used (largest per env): " + ", ".join(f"{e} {s:.3f}" for e, s in sds.items()),
             f"{a.sims} simulated studies per row, {a.seeds} paired seeds per env and cell, {a.reps} bootstrap "
             f"resamples per contrast, rule delta {rule.delta:g}, alpha {rule.alpha:g}; {time.time() - t0:.0f} s.", "",
             "| rho | tanh effect | scope | contrast | equivalent | different | inconclusive |",
             "|---:|---:|---|---|---:|---:|---:|"]
    for (rho, effect, scope, contrast), c in counts.items():
        if contrast in ("tanh/fp32 - exact/fp32", "exact/bf16 - exact/fp32"):
            lines.append(f"| {rho:g} | {effect:g} | {scope} | {contrast} | "
                         + " | ".join(f"{c[v] / a.sims:.2f}" for v in VERDICTS) + " |")
    (a.out / "operating.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
