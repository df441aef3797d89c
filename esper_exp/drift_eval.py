"""Pair the cells of a drift sweep on common on-policy states (trainer side; the analysis stays torch-free).

``python -m esper_exp.drift_eval SWEEP_DIR [--reference exact/fp32]``

Runs trained with ``drift.snapshot_every`` keep, per snapshot, their weights, observation statistics and a sample
of their own recent raw states (``<run dir>/drift/snapshot-<update>.pt``, esper_exp/probe.py). For every seed k of
every env in the sweep, this evaluates every run's snapshot weights of update u on the states of the **reference
cell's** run of seed k at update u (the reference's on-policy states; each run's own observation normalisation
applied, exact GELU in fp32, the same code as the training-time "self" records) and appends the schema-2 record,
``states.source = "<reference>/seed=<k>"``, to that run's snapshots.jsonl. Every cell of a seed is then evaluated
on the same states (equal ``sha`` at equal ``update``), which is what ``esper-drift`` pairs on.

Idempotent: a record whose (update, states sha) a run already holds is not written again (the reference run's own
"self" records are the reference set). A run directory in use by another process (its ``.lock``) is skipped and
said. Exit code 0, or 2 for bad input (no runs, no reference run).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from esper_exp import probe as P
from esper_exp.runformat import RunLock, RunLocked, cell_label, dumps, read_jsonl
from esper_exp.tracking import read_run_json


def find_runs(sweep_dir: Path) -> list[dict]:
    """Every run directory under ``sweep_dir`` (attempts/ excluded) with its env, cell label, seed and config."""
    runs = []
    for path in sorted(Path(sweep_dir).rglob("run.json")):
        d = path.parent
        if "attempts" in d.relative_to(sweep_dir).parts:
            continue
        info = read_run_json(d)
        cfg = (info or {}).get("config")
        if not cfg:
            continue
        runs.append({"dir": d, "env": cfg["env"]["name"], "seed": int(cfg["seed"]), "config": cfg,
                     "cell": cell_label(cfg["model"]["gelu"], cfg["precision"]["name"], bool(cfg["model"]["compile"]),
                                        (cfg.get("drift") or {}).get("perturb", "none"))})
    return runs


def _snapshot_updates(run_dir: Path) -> list[int]:
    d = Path(run_dir) / P.SNAPSHOT_DIR
    return sorted(int(p.stem.split("-", 1)[1]) for p in d.glob("snapshot-*.pt")) if d.is_dir() else []


def _held(run_dir: Path) -> set[tuple[int, str]]:
    f = Path(run_dir) / "snapshots.jsonl"
    if not f.exists():
        return set()
    return {(int(r["update"]), (r.get("states") or {}).get("sha")) for r in read_jsonl(f) if r.get("schema") == 2}


class _Evaluator:
    """One scratch policy and normalisation env per (env, model) config."""

    def __init__(self):
        self._cache: dict[str, tuple] = {}

    def __call__(self, config: dict, payload: dict, raw, source: str, sha: str) -> dict:
        key = dumps({"env": config["env"], "model": config["model"], "gamma": config["ppo"]["gamma"]}, sort_keys=True)
        if key not in self._cache:
            envs = P.one_env(config)
            self._cache[key] = (envs, P.scratch_policy(config["model"], envs.single_observation_space,
                                                       envs.single_action_space))
        envs, policy = self._cache[key]
        return P.evaluate(policy, payload, P.normalise(envs, payload, raw), source, sha)

    def close(self) -> None:
        for envs, _ in self._cache.values():
            envs.close()


def evaluate_sweep(sweep_dir: Path, reference: str = "exact/fp32", log=print) -> dict:
    """Write the reference-state records of every run of ``sweep_dir``; returns counts. ValueError: bad input."""
    runs = find_runs(sweep_dir)
    if not runs:
        raise ValueError(f"no run directories (run.json with a config) under {sweep_dir}")
    refs: dict[tuple[str, int], dict] = {}
    for r in runs:
        if r["cell"] == reference and _snapshot_updates(r["dir"]):
            refs.setdefault((r["env"], r["seed"]), r)  # a duplicate reference run is bitwise the same: the first
    if not refs:
        raise ValueError(f"no run of the reference cell {reference} with drift snapshots under {sweep_dir} "
                         "(train it with drift.snapshot_every=M)")
    counts = {"written": 0, "present": 0, "no_reference": 0, "locked": 0}
    evaluate = _Evaluator()
    try:
        for r in runs:
            updates = _snapshot_updates(r["dir"])
            ref = refs.get((r["env"], r["seed"]))
            if not updates:
                continue
            if ref is None:
                counts["no_reference"] += 1
                log(f"note: {r['dir']}: no {reference} run of seed {r['seed']} ({r['env']}) to take states from")
                continue
            try:
                lock = RunLock(r["dir"]).acquire()
            except RunLocked as e:
                counts["locked"] += 1
                log(f"note: {r['dir']}: skipped, {e}")
                continue
            try:
                held = _held(r["dir"])
                new = []
                for u in updates:
                    ref_file = P.snapshot_path(ref["dir"], u)
                    if not ref_file.exists():
                        continue
                    ref_payload = P.load_payload(ref_file)
                    sha = ref_payload["states_sha"]
                    if (u, sha) in held:
                        counts["present"] += 1
                        continue
                    payload = P.load_payload(P.snapshot_path(r["dir"], u))
                    new.append(evaluate(r["config"], payload, ref_payload["states"].numpy(),
                                        f"{reference}/seed={r['seed']}", sha))
                if new:
                    with open(Path(r["dir"]) / "snapshots.jsonl", "a") as f:
                        f.writelines(dumps(rec) + "\n" for rec in new)
                counts["written"] += len(new)
            finally:
                lock.release()
    finally:
        evaluate.close()
    return counts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m esper_exp.drift_eval", description=__doc__.split("\n\n")[0])
    ap.add_argument("sweep_dir", type=Path)
    ap.add_argument("--reference", default="exact/fp32", help="reference cell label (default exact/fp32)")
    a = ap.parse_args(argv)
    try:
        c = evaluate_sweep(a.sweep_dir, a.reference)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{a.sweep_dir}: {c['written']} records written on {a.reference} states, {c['present']} already present, "
          f"{c['no_reference']} runs without a reference run, {c['locked']} runs in use (skipped)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
