"""The decision rule applied (issue 10): contrasts between cells, their intervals, TOST, Holm, verdicts.

For each contrast A - B (e.g. tanh/bf16 - exact/bf16) and scope (all envs pooled with a stratified bootstrap over
env x seed, and each env alone), on the rule's normalised endpoint:

- estimate: IQM(A) - IQM(B) over the runs (paired: over the seeds both cells have);
- 90 % CI (1 - 2 alpha) and Holm-corrected 95 % CI (1 - alpha over the family of the scope's contrasts), both
  expanded percentile intervals of a paired (or, unpaired, independent) stratified bootstrap;
- verdict: **equivalent** when the 90 % CI lies inside (-delta, +delta) (two one-sided tests at alpha);
  **different** when the Holm-corrected CI excludes 0; **inconclusive** otherwise, and always with fewer than
  MIN_SEEDS seeds. A difference that is both detected and inside the margin is "equivalent" (flagged).

Nothing here reads files; report.py feeds it scores.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import stats as S
from .load import cell_label, parse_cell
from .rule import CONTRAST_FAMILIES, MIN_SEEDS, Rule, parse_contrast


@dataclass(frozen=True)
class Contrast:
    a: str  # cell, e.g. tanh/bf16
    b: str  # cell it is compared with, e.g. exact/bf16
    family: str  # tanh_vs_exact | dtype_vs_fp32 | explicit

    @property
    def name(self) -> str:
        return f"{self.a} - {self.b}"


def resolve_contrasts(rule: Rule, cells) -> list[Contrast]:
    """The rule's contrasts among ``cells`` (noise-floor control cells never take part), in rule order."""
    plain = [c for c in cells if parse_cell(c)["perturb"] == "none"]
    have = set(plain)
    out: list[Contrast] = []
    for spec in rule.contrasts:
        p = parse_contrast(spec)
        if p == "tanh_vs_exact":
            for c in plain:
                pc = parse_cell(c)
                b = cell_label("exact", pc["precision"], pc["compiled"])
                if pc["gelu"] == "tanh" and b in have:
                    out.append(Contrast(c, b, p))
        elif p == "dtype_vs_fp32":
            for c in plain:
                pc = parse_cell(c)
                b = cell_label(pc["gelu"], "fp32", pc["compiled"])
                if pc["precision"] != "fp32" and b in have:
                    out.append(Contrast(c, b, p))
        elif isinstance(p, tuple) and p[0] in have and p[1] in have:
            out.append(Contrast(p[0], p[1], "explicit"))
    seen, uniq = set(), []
    for c in out:
        if (c.a, c.b) not in seen:
            seen.add((c.a, c.b))
            uniq.append(c)
    return uniq


def strata(scores: dict, contrast: Contrast, envs, paired: bool):
    """Per-env score arrays of the two cells. scores: {env: {cell: {seed: score}}} (finite scores only).
    Paired: the seeds both cells have, aligned; unpaired: each cell's own seeds. Envs where either cell has no
    run are left out. Returns (strata_a, strata_b, info)."""
    sa, sb, info = [], [], {"envs": [], "seeds": {}, "unpaired_runs_left_out": 0}
    for env in envs:
        a = {s: v for s, v in scores.get(env, {}).get(contrast.a, {}).items() if np.isfinite(v)}
        b = {s: v for s, v in scores.get(env, {}).get(contrast.b, {}).items() if np.isfinite(v)}
        if not a or not b:
            continue
        if paired:
            common = sorted(set(a) & set(b))
            if not common:
                continue
            info["unpaired_runs_left_out"] += len(a) + len(b) - 2 * len(common)
            sa.append(np.array([a[s] for s in common]))
            sb.append(np.array([b[s] for s in common]))
            info["seeds"][env] = common
        else:
            sa.append(np.array([a[s] for s in sorted(a)]))
            sb.append(np.array([b[s] for s in sorted(b)]))
            info["seeds"][env] = sorted(set(a) | set(b))
        info["envs"].append(env)
    return sa, sb, info


def estimate(sa, sb, paired: bool, rule: Rule, reps: int, seed: int, power: float = 0.8) -> dict:
    """Everything the decision and resolution tables need for one contrast in one scope (no verdict yet)."""
    nan = float("nan")
    n_units = int(sum(len(x) for x in sa)) if sa else 0
    n_b = int(sum(len(x) for x in sb)) if sb else 0
    row = {"n": n_units, "n_b": n_b, "paired": paired, "estimate": nan, "ci90": (nan, nan), "ci95": (nan, nan),
           "p": nan, "se": nan, "se_unpaired": nan, "mde": nan, "smallest_margin": nan, "poi": nan,
           "poi_ci": (nan, nan), "pairing_corr": nan, "zero_spread": False, "reps": np.array([])}
    if not sa:
        return row
    n = min(n_units, n_b)
    b = S.contrast_bootstrap(sa, sb, paired, reps, seed)
    row["estimate"], row["reps"] = b["point"], b["reps"]
    a_all, b_all = np.concatenate(sa), np.concatenate(sb)
    row["zero_spread"] = bool(np.ptp(a_all) == 0 and np.ptp(b_all) == 0)
    if paired:
        row["pairing_corr"] = S.pairing_correlation(a_all, b_all)
    if b["reps"].size:
        r = b["reps"]
        row["ci90"] = S.percentile_interval(r, 1 - 2 * rule.alpha, n)
        row["ci95"] = S.percentile_interval(r, 1 - rule.alpha, n)
        row["p"] = S.bootstrap_p(r, n)
        row["se"] = float(np.std(r, ddof=1))
        # power of the test actually used: the expanded (1 - alpha) interval excludes 0
        row["mde"] = S.minimum_detectable_effect(r - b["point"], power, 2 * S.expanded_tail(rule.alpha / 2, n))
        lo, hi = row["ci90"]
        row["smallest_margin"] = float(max(abs(lo), abs(hi)))
        if paired:  # the same contrast resampled as if unpaired: what pairing buys
            u = S.contrast_bootstrap(sa, sb, False, reps, seed + 1)
            row["se_unpaired"] = float(np.std(u["reps"], ddof=1))
        else:
            row["se_unpaired"] = row["se"]
        pi = S.contrast_bootstrap(sa, sb, paired, reps, seed + 2, statistic=S.probability_of_improvement)
        row["poi"] = pi["point"]
        row["poi_ci"] = S.percentile_interval(pi["reps"], 1 - rule.alpha, n)
    return row


def decide(rows: list[dict], rule: Rule) -> list[dict]:
    """Holm over the rows (one family: one scope's contrasts), then a verdict per row. Adds ci_holm,
    holm_level, p_holm, equivalent, different, verdict, why. Rows with fewer than MIN_SEEDS are not tested."""
    testable = [r["n"] >= MIN_SEEDS and min(r["n"], r.get("n_b", r["n"])) >= MIN_SEEDS and r["reps"].size
                for r in rows]
    p = np.array([r["p"] if t else np.nan for r, t in zip(rows, testable)])
    adj, _, level = S.holm(p, rule.alpha)
    for r, t, pa, lv in zip(rows, testable, adj, level):
        nan = float("nan")
        r["p_holm"], r["holm_level"], r["family_size"] = float(pa), float(lv), int(np.isfinite(p).sum())
        r["ci_holm"] = S.percentile_interval(r["reps"], lv, min(r["n"], r["n_b"])) if t else (nan, nan)
        lo90, hi90 = r["ci90"]
        lo, hi = r["ci_holm"]
        r["equivalent"] = bool(t and -rule.delta < lo90 and hi90 < rule.delta)
        r["different"] = bool(t and (lo > 0 or hi < 0))
        if not t:
            r["verdict"] = "inconclusive"
            r["why"] = (f"{min(r['n'], r['n_b'])} seeds: fewer than {MIN_SEEDS}, too few for a bootstrap verdict"
                        if r["reps"].size or r["n"] else "no runs to compare")
        elif r["equivalent"]:
            r["verdict"] = "equivalent"
            r["why"] = (f"90% CI [{lo90:+.3g}, {hi90:+.3g}] inside (-{rule.delta:g}, +{rule.delta:g})"
                        + ("; a difference inside the margin is detected (Holm CI excludes 0)"
                           if r["different"] else ""))
        elif r["different"]:
            r["verdict"] = "different"
            r["why"] = f"Holm-corrected {lv:.2%} CI [{lo:+.3g}, {hi:+.3g}] excludes 0"
        else:
            r["verdict"] = "inconclusive"
            r["why"] = (f"90% CI [{lo90:+.3g}, {hi90:+.3g}] not inside (-{rule.delta:g}, +{rule.delta:g}) and "
                        f"Holm CI [{lo:+.3g}, {hi:+.3g}] contains 0")
        if r.get("zero_spread"):
            r["why"] += "; every run of both cells scored the same (a ceiling, not measured noise)"
    return rows


def judge_scope(scores: dict, envs, contrasts: list[Contrast], rule: Rule, reps: int, seed: int,
                power: float = 0.8, scope: str = "all") -> list[dict]:
    """Estimate and decide every contrast in one scope (one Holm family)."""
    rows = []
    for c in contrasts:
        sa, sb, info = strata(scores, c, envs, rule.paired)
        r = estimate(sa, sb, rule.paired, rule, reps, S.derive_seed(seed, scope, c.name), power)
        r.update({"scope": scope, "contrast": c.name, "a": c.a, "b": c.b, "family": c.family,
                  "envs": info["envs"], "unpaired_runs_left_out": info["unpaired_runs_left_out"]})
        rows.append(r)
    return decide(rows, rule)


SECONDARY_SEED_OFFSET = 7  # the secondary endpoint's bootstrap seed: the report's --seed + this


def csv_row(r: dict) -> dict:
    """A decision row as decision.csv and summary.json hold it (no bootstrap replicates)."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in r.items() if k != "reps"}


def scopes_of(judged: list[str]) -> list[str]:
    """A sweep's scopes (each one Holm family): "all envs" when more than one env is judged, then each env."""
    return (["all envs"] if len(judged) > 1 else []) + list(judged)


def judge_all(scores: dict, cells: dict, rule: Rule, reps: int, seed: int, power: float = 0.8) -> list[dict]:
    """Every contrast of every scope (:func:`scopes_of` over the envs of ``scores``, {env: {cell: {seed: value}}}),
    each env's contrasts among its ``cells`` ({env: [cell, ...]}), "all envs" among the cells every env has."""
    judged = list(scores)
    rows = []
    for scope in scopes_of(judged):
        envs_in = judged if scope == "all envs" else [scope]
        in_scope = (sorted(set.intersection(*[set(cells[e]) for e in envs_in])) if scope == "all envs"
                    else cells[scope])
        rows += judge_scope(scores, envs_in, resolve_contrasts(rule, in_scope), rule, reps, seed, power, scope)
    return rows


# the families a verdict sentence names, for the report
FAMILY_TEXT = {"tanh_vs_exact": "tanh vs exact GELU, same precision",
               "dtype_vs_fp32": "precision vs fp32, same GELU", "explicit": "explicit contrast"}
assert set(CONTRAST_FAMILIES) <= set(FAMILY_TEXT)
