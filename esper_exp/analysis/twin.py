"""Two sweeps of the same cells, compared cell by cell: ``esper-report SWEEP --vs OTHER`` (issue 13's exploratory
arms, e.g. the CPU-numerics twin of the primary cells: do CPU and CUDA agree?).

For every env and GELU x precision cell that both sweeps hold, the contrast "OTHER's cell - SWEEP's cell" is judged
(or, with ``--pair OTHER_CELL=THIS_CELL``, only the named pairs: an arm whose cells the primary lacks, e.g. the fp16
arm's exact/fp16 against the primary's exact/fp32) by SWEEP's stored decision rule (endpoint, margin delta, alpha,
pairing, anchors), with the same estimator, intervals, Holm correction and verdict as esper-report's own contrasts
(analysis/decision.py): one Holm family pooled over the envs (bootstrap stratified over env x seed) and one per env.
Paired by seed when the rule pairs (seed k of both sweeps starts from the same weights, env seeds and noise). Each
sweep's runs are scored on that sweep's own curve grid.
"""

from __future__ import annotations

import json
from pathlib import Path

from . import decision as Dc
from . import outcomes as O
from .cli import AnalysisError
from .load import Sweep
from .output import jsonable as _jsonable
from .output import table as _table
from .rule import ENDPOINT_KEY, Rule

A, B = "A", "B"


def compare(sweep: Sweep, other: Sweep, rule: Rule, o: dict, pairs: list[tuple[str, str]] | None = None) -> dict:
    """``pairs``: (OTHER's cell, SWEEP's cell) to compare; default every cell both hold, each with itself."""
    key = ENDPOINT_KEY[rule.endpoint]
    envs = [e for e in sweep.envs() if e in other.envs()]
    if not envs:
        raise AnalysisError(f"the sweeps share no env ({', '.join(sweep.envs())} vs {', '.join(other.envs())})")
    scores, contrasts = {}, {}
    for env in envs:
        if pairs is None:
            want = [(c, c) for c in sweep.cells(env) if c in set(other.cells(env))]
        else:
            want = [(oc, c) for oc, c in pairs if c in sweep.cells(env) and oc in other.cells(env)]
        scores[env] = {}
        for tag, sw, cells in ((A, sweep, sorted({c for _, c in want})), (B, other, sorted({oc for oc, _ in want}))):
            out = O.env_outcomes(env, cells, {c: sw.runs_of(env, c, status=None) for c in cells}, rule, o)
            for c, by_seed in O.scores(out, key).items():
                scores[env][f"{tag}:{c}"] = by_seed
        for oc, c in want:
            contrasts.setdefault((oc, c), Dc.Contrast(f"{B}:{oc}", f"{A}:{c}", "explicit"))
    if pairs is not None:
        absent = [f"{oc}={c}" for oc, c in pairs if (oc, c) not in contrasts]
        if absent:
            have = {e: (sorted(other.cells(e)), sorted(sweep.cells(e))) for e in envs}
            raise AnalysisError(f"--pair {', '.join(absent)}: no env holds both cells (other sweep's cells / this "
                                f"sweep's, per env: " + "; ".join(f"{e}: {', '.join(a)} / {', '.join(b)}"
                                                                   for e, (a, b) in have.items()) + ")")
    if not contrasts:
        raise AnalysisError("the sweeps share no GELU x precision cell in any env")
    cs = list(contrasts.values())
    rows = Dc.judge_scope(scores, envs, cs, rule, o["reps"], o["seed"], o["power"], scope="all")
    for env in envs if len(envs) > 1 else []:
        rows += Dc.judge_scope(scores, [env], cs, rule, o["reps"], o["seed"], o["power"], scope=env)
    keep = ("scope", "a", "b", "envs", "n", "n_b", "estimate", "ci90", "ci_holm", "p_holm", "verdict", "why",
            "unpaired_runs_left_out")
    return {"endpoint": key, "delta": rule.delta, "paired": rule.paired, "sweep": str(sweep.root),
            "other": str(other.root), "rows": [{k: r[k] for k in keep} for r in rows]}


def _cells(row: dict) -> str:
    """A row's cell, or "other's - this one's" where a --pair named two different cells."""
    a, b = row["a"].split(":", 1)[1], row["b"].split(":", 1)[1]
    return b if a == b else f"{a} - {b}"


def write_twin(res: dict, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / "twin.json").write_text(json.dumps(_jsonable(res), indent=1, allow_nan=False))
    rows = [[r["scope"], _cells(r), str(r["n"]), f"{r['estimate']:+.4f}",
             f"[{r['ci90'][0]:+.4f}, {r['ci90'][1]:+.4f}]", r["verdict"], r["why"]] for r in res["rows"]]
    lines = [f"# {res['other']} vs {res['sweep']}, cell by cell", "",
             f"Contrast: the other sweep's cell minus this sweep's (where they differ: other's - this one's), "
             f"{res['endpoint']} (IQM difference), margin "
             f"delta = {res['delta']}, {'paired by seed' if res['paired'] else 'unpaired'}; rule: "
             f"{res.get('rule_source', 'this sweep stored rule')}.", "",
             _table(["scope", "cell", "seeds", "estimate", "90% CI", "verdict", "why"], rows)]
    path = out / "twin.md"
    path.write_text("\n".join(lines) + "\n")
    return path
