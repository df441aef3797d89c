"""Drift output: figures, CSV/JSON and the markdown of the drift section (esper-report) or drift.md (esper-drift).
Numbers come from drift_verdicts; nothing is computed here beyond formatting."""

from __future__ import annotations

import json
from pathlib import Path

from . import drift_metrics as M
from . import drift_verdicts as V
from . import figures
from .load import Sweep
from .output import fmt as _f
from .output import jsonable as _jsonable
from .output import table as _table
from .output import write_csv as _write_csv
from .rule import MIN_SEEDS, NEGLIGIBLE_RATIO

DEFAULTS = {"reference": "exact/fp32", "reps": 5000, "seed": 0, "metric": "tv", "figures": True}


def sweep_has_drift(sweep: Sweep) -> bool:
    return any(M.has_drift_files(r) for r in sweep.runs)


def analyse(sweep: Sweep, reference: str, control: str | None, o: dict) -> list[dict]:
    return [V.analyse_env(sweep, env, reference, control, o) for env in sweep.envs()]


def pair_table(p: dict) -> str:
    head = ["update", "step", "TV", "disagreement", "output RMS", "param rel dist", "value RMS", "return A-B"]
    rows = [[r["update"], int(r["global_step"]), "0 (identical)" if r["identical"] else _f(r["tv"]),
             _f(r["disagreement"]), _f(r["out_rms"]), _f(r["param_rel"]), _f(r["value_rms"]), _f(r["return_diff"])]
            for r in p["rows"]]
    return _table(head, rows)


def write_files(results: list[dict], out: Path, reference: str, o: dict) -> None:
    rows_pairs, rows_curves = [], []
    for r in results:
        for c, pairs in r["pairs"].items():
            for s, p in pairs.items():
                rows_pairs += [{"env": r["env"], "cell": c, "seed": s, **row} for row in p["rows"]]
        for c, cur in r["curves"].items():
            for i, u in enumerate(cur["updates"]):
                rows_curves.append({"env": r["env"], "cell": c, "update": u, "step": cur["steps"][i], "n": cur["n"],
                                    **{f"{m}_{k}": cur[m][k][i] for m in M.METRICS for k in ("median", "lo", "hi")}})
    _write_csv(out / "drift_pairs.csv", rows_pairs)
    _write_csv(out / "drift_curves.csv", rows_curves)
    _write_csv(out / "drift_floor.csv", [v for r in results for v in r["floor"]])
    _write_csv(out / "drift_probe.csv", [v for r in results for v in r["probe"]])
    _write_csv(out / "drift_legacy_probe.csv", [v for r in results for v in r["legacy_probe"]])
    summary = {"reference": reference, "settings": o, "negligible_ratio": NEGLIGIBLE_RATIO, "min_seeds": MIN_SEEDS,
               "envs": [{k: r.get(k) for k in ("env", "controls", "floor", "floor_summary", "probe", "legacy_probe",
                                              "determinism", "skipped", "legacy", "offset0", "total")}
                        for r in results]}
    (out / "drift_summary.json").write_text(json.dumps(_jsonable(summary), indent=1, allow_nan=False) + "\n")


def section_lines(results: list[dict], out: Path, reference: str, o: dict, heading: str = "##") -> list[str]:
    h2, h3 = heading, heading + "#"
    metric = o.get("metric", "tv")
    L = [f"{h2} Drift: distance from the reference, per third of training, against noise floors", ""]
    L += [f"Each run is paired with the **{reference}** run of the same seed. Distance: mean over states of the "
          f"{'total variation between action distributions' if metric == 'tv' else metric} (bounded, exactly 0 "
          f"for identical policies; no floor constant). Per seed and third of training (update 0 excluded), the "
          f"mean distance; verdict statistic: cell minus control, paired by seed, mean over seeds with a bootstrap "
          f"CI ({o['reps']} resamples), Holm-corrected over the cells and thirds judged against one control: "
          f"**exceeds** / **below** the floor when that CI excludes 0, else **indistinguishable**; fewer than "
          f"{MIN_SEEDS} seeds: no verdict.", ""]
    for r in results:
        env = r["env"]
        L += [f"{h3} {env}", ""]
        bad = [d for d in r["determinism"] if not d["identical"]]
        if r["determinism"]:
            L += [f"**Determinism control**: {len(r['determinism'])} duplicate run(s) of one cell and seed, "
                  f"{len(bad)} not bitwise identical.", ""]
            L += [f"- **{d['verdict']}**" for d in bad] + ([""] if bad else [])
        else:
            L += ["**No determinism control** (a duplicate run of the reference, e.g. drift.perturb=duplicate): "
                  "whether identical runs stay identical on this machine is not shown by this sweep.", ""]
        if r["legacy"]:
            L += ["**Legacy snapshots**: evaluated on a random-policy probe set under each run's own autocast, not "
                  "in fp32 on on-policy states. At update 0 (identical parameters) the distance is evaluation "
                  "rounding, which every later snapshot of a bf16/fp16 cell also carries. Median TV at update 0: "
                  + ", ".join(f"{c} {_f(v)}" for c, v in r["offset0"].items()) + ".", ""]
        if not r["curves"]:
            L += [f"No divergence curves: no pair of runs with snapshots against {reference} "
                  f"({len(r['skipped'])} skipped).", ""]
        else:
            if o.get("figures", True):
                figures.plot_divergence(env, r["curves"], r["controls"][0] if r["controls"] else None,
                                        out / f"drift_divergence_{env}.png")
            L += [f"![divergence](drift_divergence_{env}.png)", "",
                  f"Distance from the reference run of the same seed: median over seeds, 95% bootstrap band of the "
                  f"median; grey band: the control {r['controls'][0] if r['controls'] else '(none)'}.", ""]
            if not r["controls"]:
                L += ["No noise-floor control cell (drift.perturb=ulp or persistent): no verdicts.", ""]
            else:
                if o.get("figures", True):
                    figures.plot_drift_thirds(env, r["floor"], f"Δ mean {metric}", out / f"drift_thirds_{env}.png")
                L += [_table(["control", "cell", "early", "middle", "late"],
                             [[s["control"], s["cell"], s.get("early", "—"), s.get("middle", "—"), s.get("late", "—")]
                              for s in r["floor_summary"]]), ""]
                L += [_table(["control", "cell", "third", "n", f"cell mean {metric}", f"control mean {metric}",
                              "difference [95% CI]", "Holm CI", "verdict"],
                             [[f_["control"], f_["cell"], f_["third"], f_["n"], _f(f_["cell_mean"], 3),
                               _f(f_["control_mean"], 3),
                               f"{_f(f_['diff'], 3)} [{_f(f_['lo'], 3)}, {_f(f_['hi'], 3)}]",
                               f"[{_f(f_['lo_holm'], 3)}, {_f(f_['hi_holm'], 3)}]", f_["verdict"]]
                              for f_ in r["floor"]]), ""]
                L += [f"![thirds](drift_thirds_{env}.png)", ""]
        L += [f"{h3}# Applied-update probe ({env})", ""]
        if r["probe"]:
            L += [f"Per probed optimizer step: |Δθ_run − Δθ_alt| / |Δθ(mb) − Δθ(mb')| (alt: the other GELU in the "
                  f"run's dtype, or fp32 with the run's GELU; mb, mb': two disjoint minibatches at the same "
                  f"parameters). Per run and third the median over steps; per cell the median over seeds [95% CI]; "
                  f"negligible when the CI lies below {NEGLIGIBLE_RATIO:g}.", ""]
            cells = list(dict.fromkeys(p["cell"] for p in r["probe"]))
            L += [_table(["cell", "GELU effect", "dtype effect"],
                         [[c, V.probe_cell_verdict([p for p in r["probe"] if p["cell"] == c], "gelu"),
                           V.probe_cell_verdict([p for p in r["probe"] if p["cell"] == c], "dtype")] for c in cells]),
                  ""]
            L += [_table(["cell", "effect", "third", "n", "median ratio [95% CI]", "status"],
                         [[p["cell"], p["kind"], p["third"], p["n"],
                           f"{_f(p['median'], 3)} [{_f(p['lo'], 3)}, {_f(p['hi'], 3)}]", p["status"]]
                          for p in r["probe"]]), ""]
            if r["probe_curves"]:
                if o.get("figures", True):
                    figures.plot_probe_ratio(env, r["probe_curves"], NEGLIGIBLE_RATIO, out / f"drift_probe_{env}.png")
                L += [f"![probe](drift_probe_{env}.png)", ""]
        else:
            L += ["No applied-update probe records (probe.jsonl schema 2): the runs were trained before the "
                  "trainer measured the applied update.", ""]
        if r["legacy_probe"]:
            L += ["Legacy gradient probe (raw loss gradient on the update's first minibatch against exact GELU in "
                  "fp32, before clipping and Adam; it mixes the dtype and GELU effects and does not measure the "
                  "applied update), median over seeds per third, descriptive only:", ""]
            L += [_table(["cell", "n", "grad rel L2 early / middle / late", "action KL early / middle / late"],
                         [[x["cell"], x["n"], " / ".join(_f(x.get(f"grad_rel_l2_{t}"), 3) for t in V.THIRDS),
                           " / ".join(_f(x.get(f"action_kl_{t}"), 3) for t in V.THIRDS)]
                          for x in r["legacy_probe"]]), ""]
        if r["skipped"]:
            L += ["Pairs skipped: " + "; ".join(f"{s['cell']} seed {s['seed']} ({s['why']})" for s in r["skipped"]),
                  ""]
    L += ["Drift files: drift_pairs.csv (every pair, every snapshot), drift_curves.csv, drift_floor.csv, "
          "drift_probe.csv, drift_legacy_probe.csv, drift_summary.json.", ""]
    return L


def drift_section(sweep: Sweep, reference: str, control: str | None, o: dict, out: Path,
                  heading: str = "##") -> list[str]:
    o = {**DEFAULTS, **{k: v for k, v in o.items() if v is not None}}
    out.mkdir(parents=True, exist_ok=True)
    results = analyse(sweep, reference, control, o)
    write_files(results, out, reference, o)
    return section_lines(results, out, reference, o, heading)


def any_determinism_failure(results: list[dict]) -> bool:
    return any(not d["identical"] for r in results for d in r["determinism"])

