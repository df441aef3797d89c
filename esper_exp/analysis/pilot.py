"""The pilot's seed-count rule of a pre-registered study (issue 13, experiments/mujoco_gelu_amp/README.md):
``esper-report SWEEP --pilot``.

From the pilot's runs it reads one number: per env x cell, the sample SD (ddof = 1) over seeds of the primary
endpoint on the normalised scale (``auc_norm``); SD = the largest of them. If SD > ``sd_max`` the seed count is
raised to ``10 * ceil(base / 10 * (SD / sd_max)^2)`` (which keeps the CI half-width, proportional to SD / sqrt(n), at
what ``base`` seeds give at SD = ``sd_max``); else it stays ``base``. The margin is never touched, and no contrast,
interval or decision is computed: the pilot must not be looked at for effects.

The rule is over every registered env x cell group. The registered envs are the sweep's own ``env`` sweeper
parameter (``multirun.yaml`` in the sweep directory, written by Hydra: the experiment config's list, which a
command-line ``env=...`` narrows for one command but does not change). A pilot run one env at a time, or carried
from one box to the next, therefore reads as PROVISIONAL while a registered env has no runs or a run is not finished
(``running`` / ``interrupted``: it will resume and enter an SD): its count is a lower bound (the largest SD can only
grow). A ``failed`` run is finished: it is left out of the SD, and listed.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from . import outcomes as O
from .cli import AnalysisError
from .load import Sweep
from .output import jsonable as _jsonable
from .output import table as _table
from .rule import ENDPOINT_KEY, Rule


def seed_count(sd: float, sd_max: float, base: int) -> int:
    """The pre-registered seed count for a pilot SD: ``base`` up to ``sd_max``, above it raised in steps of 10."""
    if not (math.isfinite(sd) and sd >= 0):
        raise AnalysisError(f"pilot SD must be a finite number >= 0, got {sd}")
    if sd <= sd_max:
        return base
    return 10 * math.ceil(base / 10 * (sd / sd_max) ** 2)


def registered_envs(sweep_dir: Path) -> list[str] | None:
    """The env names of the sweep's ``env`` sweeper parameter (multirun.yaml), or None where it has none."""
    path = Path(sweep_dir) / "multirun.yaml"
    try:
        params = OmegaConf.to_container(OmegaConf.load(path).hydra.sweeper.params or {})
    except Exception:  # noqa: BLE001 - no multirun.yaml, or not Hydra's: nothing registered to compare with
        return None
    value = params.get("env") if isinstance(params, dict) else None
    return sorted({v.strip() for v in str(value).split(",") if v.strip()}) if value else None


def pilot(sweep: Sweep, rule: Rule, o: dict, sd_max: float, base: int) -> dict:
    """{"groups": [{env, cell, n, sd}], "sd", "worst", "seeds"} of the normalised primary endpoint's SDs."""
    key = ENDPOINT_KEY[rule.endpoint]
    groups, unfinished, failed = [], {}, []
    for env in sweep.envs():
        if env not in rule.anchors:
            raise AnalysisError(f"env {env} has no anchors in the stored rule: the pilot's SD is on the normalised "
                                "scale")
        cells = sweep.cells(env)
        runs = {c: sweep.runs_of(env, c, status=None) for c in cells}
        out = O.env_outcomes(env, cells, runs, rule, o)
        pending = sum(r.status in ("running", "interrupted") for c in cells for r in runs[c])
        if pending:
            unfinished[env] = pending
        failed += [f"{env} {c} seed={r.seed}" for c in cells for r in runs[c] if r.status == "failed"]
        for c in cells:
            x = np.array([out["per_run"][(c, r.seed)][key] for r in out["used"][c]], dtype=float)
            x = x[np.isfinite(x)]
            groups.append({"env": env, "cell": c, "n": int(x.size),
                           "sd": float(np.std(x, ddof=1)) if x.size >= 2 else float("nan")})
    valid = [g for g in groups if math.isfinite(g["sd"])]
    if not valid:
        raise AnalysisError("no env x cell group of the pilot has two completed runs: no SD to read")
    worst = max(valid, key=lambda g: g["sd"])
    registered = registered_envs(sweep.root)
    missing = sorted(set(registered or []) - set(sweep.envs()))
    return {"registered_envs": registered, "missing_envs": missing, "unfinished_runs": unfinished,
            "failed_runs": failed,
            "complete": not missing and not unfinished, "endpoint": key,
            "sd_max": sd_max, "base_seeds": base, "groups": groups, "sd": worst["sd"],
            "worst": f"{worst['env']} {worst['cell']}", "seeds": seed_count(worst["sd"], sd_max, base),
            "groups_without_sd": [f"{g['env']} {g['cell']}" for g in groups if not math.isfinite(g["sd"])]}


def incomplete_reason(res: dict) -> str:
    """Why a pilot is PROVISIONAL, in words ("" when it is complete)."""
    parts = [f"no runs of {', '.join(res['missing_envs'])}"] if res["missing_envs"] else []
    parts += [f"{n} run(s) of {env} not finished" for env, n in sorted(res["unfinished_runs"].items())]
    return "; ".join(parts)


def write_pilot(res: dict, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / "pilot.json").write_text(json.dumps(_jsonable(res), indent=1, allow_nan=False))
    rows = [[g["env"], g["cell"], str(g["n"]), f"{g['sd']:.4f}"] for g in res["groups"]]
    raised = res["seeds"] != res["base_seeds"]
    lines = ["# Pilot: the seed count (no contrasts computed)", ""]
    if not res["complete"]:
        lines += [f"**PROVISIONAL ({incomplete_reason(res)}; registered envs: "
                  f"{', '.join(res['registered_envs'] or ['not recorded'])}).** The rule is over every env x cell "
                  "group: the count below is a lower bound until they are in (the largest SD can only grow).", ""]
    lines += [f"Endpoint {res['endpoint']}; the largest per-group SD is **{res['sd']:.4f}** ({res['worst']}); "
              f"limit {res['sd_max']}: the study runs **{'at least ' if not res['complete'] else ''}"
              f"{res['seeds']} seeds**" + (f" (raised from {res['base_seeds']})." if raised else " (as registered)."),
              "",
              _table(["env", "cell", "runs", "SD"], rows)]
    if res["failed_runs"]:
        lines += ["", "Failed runs (finished, left out of the SDs): " + ", ".join(res["failed_runs"])]
    if res["groups_without_sd"]:
        lines += ["", "Groups with fewer than two completed runs (no SD): " + ", ".join(res["groups_without_sd"])]
    path = out / "pilot.md"
    path.write_text("\n".join(lines) + "\n")
    return path
