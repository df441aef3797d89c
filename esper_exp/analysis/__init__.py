"""Sweep analysis (esper-report). Reads run directories only; never imports the trainer.

load.py    run.json / metrics.jsonl / episodes.jsonl -> Run, Sweep (duplicates, missing, unreadable)
stats.py   IQM, final return, curves on a step grid, bootstrap CIs, probability of improvement, MDE
figures.py convergence curves, paired differences, training health (matplotlib, Agg)
report.py  the esper-report CLI: report.md + PNGs + CSV/JSON (+ a drift section when runs have drift files)
drift.py   the esper-drift CLI: paired divergence (snapshots.jsonl), shadow-probe summary (probe.jsonl),
           verdicts against the butterfly (perturb-ulp) control
"""
