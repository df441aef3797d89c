"""The pre-registered decision rule (issue 10): vocabulary, defaults, checks. Pure Python, no dependencies.

The rule is declared in the experiment config under ``analysis:`` (typed by ``AnalysisConfig`` in
esper_exp/config.py, which takes its allowed names and defaults from here) *before* the runs, so it is stored in
every run.json's resolved config and is part of the sweep's identity (the config hash). esper-report reads it back
from the runs (:func:`rule_from_runs`); a command-line override is possible but is labelled "not pre-registered"
in the report.

Fields:

- ``endpoint``: ``auc`` (default): normalised area under the training-return curve,
  ``(AUC - random) / (reference - random)``, AUC being the step-averaged windowed episodic return;
  ``final_return``: the mean of the last 100 training episodes, normalised the same way.
- ``anchors``: per env name, the ``random`` and ``reference`` returns of the normalisation, fixed here from the
  literature, never from the data being judged.
- ``contrasts``: families ``tanh_vs_exact`` (tanh/p - exact/p within each precision p) and ``dtype_vs_fp32``
  (g/p - g/fp32 for each GELU variant g and precision p != fp32), or explicit ``"CELL_A - CELL_B"`` pairs
  (cells as ``gelu/precision[/compiled]``).
- ``delta``: equivalence margin on the normalised scale (0.10 = a tenth of the random-to-reference gap).
- ``alpha``: **equivalent** when the (1 - 2 alpha) CI of the IQM difference lies inside (-delta, +delta) (TOST at
  alpha); **different** when the Holm-corrected (1 - alpha) CI excludes 0; otherwise **inconclusive**.
- ``reference``: the reference cell (probability of improvement, collapse rate, difference curves).
- ``paired``: seed k is the same env seeds, init, action noise and minibatch order in every cell, so contrasts
  resample seeds jointly (paired bootstrap); ``false`` resamples each cell on its own.
- ``grid``, ``window``, ``last``: the endpoint's definition. The curve is taken at ``grid`` points of the common step
  range, each the mean of the last ``window`` episodes that ended by then (AUC: their step-average); the final return
  is the mean of the last ``last`` episodes. They change the endpoint's value, so they are part of the rule:
  esper-report's ``--grid`` / ``--window`` / ``--last`` are overrides like ``--rule grid=...`` (labelled NOT
  pre-registered when they differ from the stored values). Keys added after runs existed (these three) hash as if
  absent while at their defaults (``ADDED_DEFAULTS``, used by esper_exp.tracking.config_hash), so older runs keep
  their identity, and a stored rule without them means the defaults.

Fixed in code (not configurable): fewer than MIN_SEEDS paired seeds give "inconclusive"; intervals are expanded
percentile intervals (stats.py); the drift probe's negligibility threshold is NEGLIGIBLE_RATIO.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

ENDPOINTS = ("auc", "final_return")
# Fixed parts of the rule (not configurable): fewer paired seeds than MIN_SEEDS give "inconclusive" whatever the
# interval says (at 3 seeds the bootstrap has 10 distinct resamples and cannot estimate its own tails); the shadow
# probe calls numerics negligible when the median applied-update ratio stays below NEGLIGIBLE_RATIO in every third.
MIN_SEEDS = 5
NEGLIGIBLE_RATIO = 0.1
VERDICTS = ("equivalent", "different", "inconclusive")
CONTRAST_FAMILIES = ("tanh_vs_exact", "dtype_vs_fp32")

# Anchors, fixed before any run of this project. random: the return of a uniformly random policy (CartPole-v1:
# mean episode length of random actions, ~22; MuJoCo: the D4RL random-policy scores, Fu et al. 2020).
# reference: CartPole's ceiling (500); MuJoCo: CleanRL's published PPO returns at 1M steps (v4 envs, mean of
# 3 seeds; docs.cleanrl.dev, ppo_continuous_action).
DEFAULT_ANCHORS = {
    "cartpole": {"random": 22.0, "reference": 500.0},
    "halfcheetah": {"random": -280.2, "reference": 1442.0},
    "hopper": {"random": -20.3, "reference": 2383.0},
    "walker2d": {"random": 1.6, "reference": 2288.0},
}

DEFAULT_RULE = {
    "endpoint": "auc",
    "reference": "exact/fp32",
    "contrasts": list(CONTRAST_FAMILIES),
    "delta": 0.10,
    "alpha": 0.05,
    "paired": True,
    "anchors": DEFAULT_ANCHORS,
    "grid": 100,
    "window": 20,
    "last": 100,
}
# rule keys added after runs stored rules without them: {key: default} (see the module docstring)
ADDED_DEFAULTS = {k: DEFAULT_RULE[k] for k in ("grid", "window", "last")}

_CELL = r"[A-Za-z0-9_]+/[A-Za-z0-9_]+(?:/compiled)?"
_PAIR = re.compile(rf"^\s*({_CELL})\s+-\s+({_CELL})\s*$")


ENDPOINT_KEY = {"auc": "auc_norm", "final_return": "final_norm"}  # endpoint -> its normalised per-run score


def parse_contrast(spec: str):
    """A family name, or the (cell_a, cell_b) of an explicit 'CELL_A - CELL_B'; None when malformed."""
    if spec in CONTRAST_FAMILIES:
        return spec
    m = _PAIR.match(str(spec))
    return (m.group(1), m.group(2)) if m else None


def rule_errors(rule: dict) -> list[str]:
    """Every problem with a rule given as a plain dict (empty: usable). One line each, naming what is allowed."""
    errs = []
    if rule.get("endpoint") not in ENDPOINTS:
        errs.append(f"analysis.endpoint={rule.get('endpoint')!r} is not allowed; allowed: {', '.join(ENDPOINTS)}")
    d = rule.get("delta")
    if not isinstance(d, (int, float)) or not d > 0:
        errs.append(f"analysis.delta={d!r} is not allowed; allowed: a number > 0 (normalised scale)")
    a = rule.get("alpha")
    if not isinstance(a, (int, float)) or not 0 < a < 0.5:
        errs.append(f"analysis.alpha={a!r} is not allowed; allowed: a number in (0, 0.5)")
    cs = rule.get("contrasts")
    if not isinstance(cs, (list, tuple)) or not cs:
        errs.append(f"analysis.contrasts={cs!r} is not allowed; allowed: a non-empty list")
    else:
        for c in cs:
            if parse_contrast(c) is None:
                errs.append(f"analysis.contrasts entry {c!r} is not allowed; allowed: "
                            f"{', '.join(CONTRAST_FAMILIES)} or 'gelu/precision - gelu/precision'")
    ref = rule.get("reference")
    if not isinstance(ref, str) or not re.fullmatch(_CELL, ref):
        errs.append(f"analysis.reference={ref!r} is not allowed; allowed: a cell as gelu/precision[/compiled]")
    for key, least in (("grid", 2), ("window", 1), ("last", 1)):
        v = rule.get(key)
        if isinstance(v, bool) or not isinstance(v, int) or v < least:
            errs.append(f"analysis.{key}={v!r} is not allowed; allowed: an integer >= {least}")
    for env, an in (rule.get("anchors") or {}).items():
        try:
            lo, hi = float(an["random"]), float(an["reference"])
        except (KeyError, TypeError, ValueError):
            errs.append(f"analysis.anchors.{env}={an!r} is not allowed; allowed: {{random: number, reference: number}}")
            continue
        if not hi > lo:
            errs.append(f"analysis.anchors.{env}: reference={hi} must be greater than random={lo}")
    return errs


@dataclass(frozen=True)
class Rule:
    endpoint: str = DEFAULT_RULE["endpoint"]
    reference: str = DEFAULT_RULE["reference"]
    contrasts: tuple = tuple(DEFAULT_RULE["contrasts"])
    delta: float = DEFAULT_RULE["delta"]
    alpha: float = DEFAULT_RULE["alpha"]
    paired: bool = DEFAULT_RULE["paired"]
    anchors: dict = field(default_factory=lambda: {k: dict(v) for k, v in DEFAULT_ANCHORS.items()})
    grid: int = DEFAULT_RULE["grid"]
    window: int = DEFAULT_RULE["window"]
    last: int = DEFAULT_RULE["last"]

    @classmethod
    def from_dict(cls, d: dict) -> Rule:
        """Missing keys take the defaults; raises ValueError with every problem, one per line."""
        full = {**DEFAULT_RULE, **{k: v for k, v in (d or {}).items() if k in DEFAULT_RULE}}
        errs = rule_errors(full)
        if errs:
            raise ValueError("; ".join(errs))
        return cls(endpoint=full["endpoint"], reference=full["reference"], contrasts=tuple(full["contrasts"]),
                   delta=float(full["delta"]), alpha=float(full["alpha"]), paired=bool(full["paired"]),
                   anchors={k: {"random": float(v["random"]), "reference": float(v["reference"])}
                            for k, v in (full["anchors"] or {}).items()},
                   grid=full["grid"], window=full["window"], last=full["last"])

    def as_dict(self) -> dict:
        return {"endpoint": self.endpoint, "reference": self.reference, "contrasts": list(self.contrasts),
                "delta": self.delta, "alpha": self.alpha, "paired": self.paired, "anchors": self.anchors,
                "grid": self.grid, "window": self.window, "last": self.last}

    def normalise(self, env: str, x):
        """(x - random) / (reference - random) with this env's anchors; KeyError if it has none."""
        a = self.anchors[env]
        return (x - a["random"]) / (a["reference"] - a["random"])


def rule_from_runs(infos) -> tuple[dict | None, list[str]]:
    """The rule stored in the runs' resolved configs (run.json "config" -> "analysis").

    Returns (rule dict or None when no run stores one, problems). Runs that disagree are a problem: a sweep has
    one rule. Runs written before the rule existed store none; they are ignored when others store one.
    """
    found = {}
    for info in infos:
        r = ((info.get("config") or {}).get("analysis"))
        if r is not None:
            r = {**ADDED_DEFAULTS, **r}  # a rule stored before these keys existed means their defaults
            key = repr(sorted((k, repr(v)) for k, v in r.items()))
            found.setdefault(key, r)
    if not found:
        return None, []
    if len(found) > 1:
        return next(iter(found.values())), [f"the runs store {len(found)} different decision rules; the first "
                                            f"is used: judge one sweep with one rule"]
    return next(iter(found.values())), []
