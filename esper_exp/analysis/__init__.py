"""Sweep analysis (esper-report). Reads run directories only; never imports the trainer.

load.py    run.json / metrics.jsonl / episodes.jsonl -> Run, Sweep (duplicates, missing, unreadable)
stats.py   IQM, final return, curves on a step grid, bootstrap CIs, probability of improvement, MDE
figures.py convergence curves, paired differences, training health (matplotlib, Agg)
report.py  the esper-report CLI: report.md + PNGs + CSV/JSON
"""
