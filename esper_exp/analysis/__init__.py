"""Sweep analysis (esper-report, esper-drift). Reads run directories only; never imports the trainer.

rule.py            the pre-registered decision rule: vocabulary, defaults, checks (also used by config.py)
load.py            run.json / metrics.jsonl / episodes.jsonl -> Run, Sweep (duplicates, missing, unreadable,
                   damaged); the format and its strict reader are esper_exp/runformat.py
stats.py           IQM, PoI, curves, stratified / paired bootstrap, expanded percentile intervals, Holm, profiles
outcomes.py        per-run curves and endpoints (normalised AUC, final return, time to threshold), health curves
decision.py        contrasts, TOST equivalence, Holm-corrected difference, verdicts
report.py          the esper-report CLI: report.md + PNGs + CSV/JSON
drift_metrics.py   snapshot / probe files (the trainer's record schema is in its docstring), bounded distances
drift_verdicts.py  per-third verdicts against noise floors, applied-update probe verdicts
drift_report.py    drift figures, CSV/JSON, markdown
drift.py           the esper-drift CLI
figures.py, output.py, cli.py   matplotlib figures; markdown/CSV/JSON writing; shared CLI options
"""
