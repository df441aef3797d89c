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

The pilot is the study's first ``n`` seeds (``--pilot-n``, 10): the first ``n`` of the sweep's registered ``seed``
list (multirun.yaml; ``range(1,31)`` gives 1..10), else the ``n`` smallest seeds among its runs. Runs of later seeds
(the study going on in the same sweep directory) are left out and counted, so the pilot's number does not move once
its own runs are in; a pilot seed of an env x cell with no run directory yet also makes it PROVISIONAL.
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


def _registered_param(sweep_dir: Path, name: str) -> str | None:
    """The value of the sweep's ``name`` sweeper parameter (multirun.yaml), or None where it has none."""
    path = Path(sweep_dir) / "multirun.yaml"
    try:
        params = OmegaConf.to_container(OmegaConf.load(path).hydra.sweeper.params or {})
    except Exception:  # noqa: BLE001 - no multirun.yaml, or not Hydra's: nothing registered to compare with
        return None
    value = params.get(name) if isinstance(params, dict) else None
    return None if value is None else str(value)


def registered_envs(sweep_dir: Path) -> list[str] | None:
    """The env names of the sweep's ``env`` sweeper parameter (multirun.yaml), or None where it has none."""
    value = _registered_param(sweep_dir, "env")
    return sorted({v.strip() for v in value.split(",") if v.strip()}) if value else None


def registered_seeds(sweep_dir: Path) -> list[int] | None:
    """The seeds of the sweep's ``seed`` sweeper parameter in their registered order (Hydra's syntax:
    ``range(1,31)``, ``1,2,3``), or None where it has none or it is not a list of integers."""
    value = _registered_param(sweep_dir, "seed")
    if not value:
        return None
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        ov = OverridesParser.create().parse_overrides([f"seed={value}"])[0]
        seeds = list(ov.sweep_iterator()) if ov.is_sweep_override() else [ov.value()]
    except Exception:  # noqa: BLE001 - not Hydra's syntax: nothing registered
        return None
    return [int(s) for s in seeds] if all(isinstance(s, int) for s in seeds) else None


def pilot_seeds(sweep: Sweep, n: int) -> tuple[list[int], str]:
    """The pilot's seeds (the first ``n`` registered, else the ``n`` smallest seen) and where they came from."""
    registered = registered_seeds(sweep.root)
    if registered:
        return registered[:n], f"the first {n} of the registered seed list"
    seen = sorted({r.seed for r in sweep.runs})
    return seen[:n], f"the {n} smallest seeds of the sweep's runs (no registered seed list)"


def pilot(sweep: Sweep, rule: Rule, o: dict, sd_max: float, base: int, n_pilot: int = 10) -> dict:
    """{"groups": [{env, cell, n, sd}], "sd", "worst", "seeds"} of the normalised primary endpoint's SDs over the
    pilot's seeds (``pilot_seeds``)."""
    key = ENDPOINT_KEY[rule.endpoint]
    seeds, seeds_from = pilot_seeds(sweep, n_pilot)
    groups, unfinished, unlaunched, failed, later = [], {}, {}, [], 0
    for env in sweep.envs():
        if env not in rule.anchors:
            raise AnalysisError(f"env {env} has no anchors in the stored rule: the pilot's SD is on the normalised "
                                "scale")
        cells = sweep.cells(env)
        every = {c: sweep.runs_of(env, c, status=None) for c in cells}
        runs = {c: [r for r in every[c] if r.seed in seeds] for c in cells}
        later += sum(len(every[c]) - len(runs[c]) for c in cells)
        out = O.env_outcomes(env, cells, runs, rule, o)
        pending = sum(r.status in ("running", "interrupted") for c in cells for r in runs[c])
        if pending:
            unfinished[env] = pending
        absent = sum(len(seeds) - len(runs[c]) for c in cells)
        if absent:
            unlaunched[env] = absent
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
            "unlaunched_runs": unlaunched, "failed_runs": failed,
            "pilot_seeds": seeds, "pilot_seeds_from": seeds_from, "runs_of_later_seeds": later,
            "complete": not missing and not unfinished and not unlaunched, "endpoint": key,
            "sd_max": sd_max, "base_seeds": base, "groups": groups, "sd": worst["sd"],
            "worst": f"{worst['env']} {worst['cell']}", "seeds": seed_count(worst["sd"], sd_max, base),
            "groups_without_sd": [f"{g['env']} {g['cell']}" for g in groups if not math.isfinite(g["sd"])]}


def incomplete_reason(res: dict) -> str:
    """Why a pilot is PROVISIONAL, in words ("" when it is complete)."""
    parts = [f"no runs of {', '.join(res['missing_envs'])}"] if res["missing_envs"] else []
    parts += [f"{n} run(s) of {env} not finished" for env, n in sorted(res["unfinished_runs"].items())]
    parts += [f"{n} pilot run(s) of {env} not launched" for env, n in sorted(res["unlaunched_runs"].items())]
    return "; ".join(parts)


def _seed_list(seeds: list[int]) -> str:
    if seeds and seeds == list(range(seeds[0], seeds[-1] + 1)):
        return f"{seeds[0]}-{seeds[-1]}"
    return ", ".join(map(str, seeds))


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
              f"Pilot seeds: {_seed_list(res['pilot_seeds'])} ({res['pilot_seeds_from']}); runs of later seeds "
              f"in the sweep, left out: {res['runs_of_later_seeds']}.",
              "",
              _table(["env", "cell", "runs", "SD"], rows)]
    if res["failed_runs"]:
        lines += ["", "Failed runs (finished, left out of the SDs): " + ", ".join(res["failed_runs"])]
    if res["groups_without_sd"]:
        lines += ["", "Groups with fewer than two completed runs (no SD): " + ", ".join(res["groups_without_sd"])]
    path = out / "pilot.md"
    path.write_text("\n".join(lines) + "\n")
    return path
