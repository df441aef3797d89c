"""Read run directories written by the trainer. No trainer imports: files only.

Contract relied on (see DESIGN.md section 4 and issue 4):

- ``run.json``: status, reason, seed, env, gelu, precision, compile, started_at, ended_at,
  total_timesteps, global_step, nonfinite_events (others are kept but not needed).
- ``metrics.jsonl``: one object per PPO update, always with ``global_step``; health keys
  approx_kl, clipfrac, explained_variance, value_loss, grad_norm, loss_scale (fp16), nonfinite_grad_steps.
- ``episodes.jsonl``: one object per finished training episode: global_step, return, length.

The format is ``esper_exp.runformat`` (statuses, cell label, the strict reader; non-finite values written as
"NaN" / "Infinity" strings come back as floats). A run whose files fail ``runformat.check_run_files`` (a bad or
cut line, missing or repeated updates, a finished run.json whose update count differs from metrics.jsonl) is
*damaged*: ``Run.damage`` holds the one-line reason and only what could be read is loaded. ``load_sweep`` keeps
damaged runs out of ``Sweep.runs`` (so out of every statistic) unless ``include_damaged``; either way they are
listed in ``Sweep.damaged``.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from esper_exp.runformat import (
    STATUSES,
    BadRunFile,
    cell_label,
    check_run_files,
    decode_nonfinite,
    read_json,
    stalled,
)

REQUIRED_RUN_FIELDS = ("status", "seed", "env", "gelu", "precision")
HEALTH_KEYS = ("approx_kl", "clipfrac", "explained_variance", "value_loss", "grad_norm", "loss_scale",
               "nonfinite_grad_steps")
# metrics whose non-finite value means the update itself went non-finite
LOSS_KEYS = ("policy_loss", "value_loss", "entropy", "approx_kl", "grad_norm")


def parse_cell(cell: str) -> dict:
    """Inverse of cell_label: gelu, precision, compiled (bool), perturb ("none" when absent)."""
    parts = cell.split("/")
    tags = parts[2:]
    perturb = next((t[len("perturb-"):] for t in tags if t.startswith("perturb-")), "none")
    return {"gelu": parts[0], "precision": parts[1] if len(parts) > 1 else "",
            "compiled": "compiled" in tags, "perturb": perturb}


def base_cell(cell: str) -> str:
    """The cell without its perturbation tag (a control's unperturbed counterpart)."""
    c = parse_cell(cell)
    return cell_label(c["gelu"], c["precision"], c["compiled"])


@dataclass
class Run:
    path: Path
    info: dict
    episodes_step: np.ndarray  # int64, global_step of each finished episode, sorted
    episodes_return: np.ndarray  # float64
    metrics: dict[str, np.ndarray]  # key -> float64 array (NaN where absent), aligned with "global_step"
    bad_lines: int = 0
    dropped_episodes: int = 0  # episodes with a non-finite return (kept out of the curves)
    # per metric key: True where that update's line lacked the key or held null
    absent: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    damage: str | None = None  # why the run's files are damaged (runformat.check_run_files), None if sound

    @property
    def env(self) -> str:
        return str(self.info["env"])

    @property
    def seed(self) -> int:
        return int(self.info["seed"])

    @property
    def status(self) -> str:
        return str(self.info["status"])

    @property
    def compile(self) -> bool:
        return bool(self.info.get("compile", False))

    @property
    def perturb(self) -> str:
        """Noise-floor control kind (run.json "perturb", else the config's drift.perturb): none|ulp|large."""
        p = self.info.get("perturb")
        if p is None:
            p = ((self.info.get("config") or {}).get("drift") or {}).get("perturb")
        return str(p or "none")

    @property
    def cell(self) -> str:
        return cell_label(self.info["gelu"], self.info["precision"], self.compile, self.perturb)

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.env, self.cell, self.seed)

    def nonfinite_summary(self) -> dict:
        """Every sign of a non-finite event this run left behind."""
        events = self.info.get("nonfinite_events") or 0
        skipped = self.metrics.get("nonfinite_grad_steps")
        skipped_max = 0
        if skipped is not None and np.isfinite(skipped).any():
            skipped_max = int(np.nanmax(np.where(np.isfinite(skipped), skipped, np.nan)))
        bad_updates = 0
        if self.metrics.get("global_step") is not None:
            n = len(self.metrics["global_step"])
            bad = np.zeros(n, dtype=bool)
            for k in LOSS_KEYS:
                v = self.metrics.get(k)
                if v is not None:
                    present = ~self.absent[k]
                    bad |= present & ~np.isfinite(v)
            bad_updates = int(bad.sum())
        stalled = self.stalled_updates()
        return {
            "nonfinite_events": int(events),
            "skipped_steps": skipped_max,
            "nonfinite_metric_updates": bad_updates,
            "nonfinite_episode_returns": int(self.dropped_episodes),
            "stalled_updates": stalled,
            "flagged": bool(events or skipped_max or bad_updates or self.dropped_episodes or stalled),
        }

    def stalled_updates(self) -> int:
        """Updates in which every minibatch step was skipped (the fp16 loss scaler found non-finite gradients at
        each one): the policy did not change. The per-update count is the rise of the cumulative
        ``nonfinite_grad_steps``; the steps attempted are ``epochs`` x the config's ``ppo.num_minibatches``. Without
        those, the updates that ended with a loss scale of 0 (from which no step can succeed)."""
        m = self.metrics
        mbs = ((self.info.get("config") or {}).get("ppo") or {}).get("num_minibatches")
        if mbs and "nonfinite_grad_steps" in m and "epochs" in m:
            cum = np.nan_to_num(m["nonfinite_grad_steps"], nan=0.0)
            per_update = np.diff(np.concatenate([[0.0], cum]))
            return int(stalled(per_update, np.nan_to_num(m["epochs"], nan=0.0), int(mbs)).sum())
        scale = m.get("loss_scale")
        return int((scale == 0).sum()) if scale is not None else 0


class RunReadError(Exception):
    pass


def _salvage_jsonl(path: Path) -> tuple[list[dict], int]:
    """What can be read of a file that failed the strict check (only for a run already flagged damaged):
    the records that parse, and how many lines did not."""
    rows, bad = [], 0
    if not path.exists():
        return rows, 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                bad += 1
                continue
            if isinstance(obj, dict):
                rows.append(decode_nonfinite(obj))
            else:
                bad += 1
    return rows, bad


def _to_float(v) -> float:
    if v is None:
        return math.nan
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def load_run(run_dir: str | os.PathLike) -> Run:
    """Load one run directory. Raises RunReadError if run.json is unusable."""
    run_dir = Path(run_dir)
    try:
        info = read_json(run_dir / "run.json")
    except BadRunFile as e:
        raise RunReadError(f"run.json unreadable: {e}") from None
    if not isinstance(info, dict):
        raise RunReadError("run.json is not a JSON object")
    missing = [k for k in REQUIRED_RUN_FIELDS if info.get(k) is None]
    if missing:
        raise RunReadError(f"run.json lacks {', '.join(missing)}")
    if info["status"] not in STATUSES:
        raise RunReadError(f"run.json status {info['status']!r} not one of {', '.join(STATUSES)}")

    damage, bad_ep, bad_m = None, 0, 0
    try:
        m_rows, ep_rows = check_run_files(run_dir, info)
    except BadRunFile as e:
        damage = str(e)
        m_rows, bad_m = _salvage_jsonl(run_dir / "metrics.jsonl")
        ep_rows, bad_ep = _salvage_jsonl(run_dir / "episodes.jsonl")
    steps, rets = [], []
    for r in ep_rows:
        if "global_step" in r and "return" in r:
            steps.append(int(r["global_step"]))
            rets.append(_to_float(r["return"]))
        else:
            bad_ep += 1
    steps_a = np.asarray(steps, dtype=np.int64)
    rets_a = np.asarray(rets, dtype=np.float64)
    order = np.argsort(steps_a, kind="stable")
    steps_a, rets_a = steps_a[order], rets_a[order]
    finite = np.isfinite(rets_a)
    dropped = int((~finite).sum())
    steps_a, rets_a = steps_a[finite], rets_a[finite]

    m_rows = [r for r in m_rows if "global_step" in r]
    m_rows.sort(key=lambda r: r["global_step"])
    metrics: dict[str, np.ndarray] = {}
    absent: dict[str, np.ndarray] = {}
    keys = set()
    for r in m_rows:
        keys.update(k for k, v in r.items() if isinstance(v, (int, float)) or v is None)
    for k in sorted(keys):
        vals = [r.get(k) for r in m_rows]
        absent[k] = np.array([v is None for v in vals], dtype=bool)
        metrics[k] = np.array([_to_float(v) for v in vals], dtype=np.float64)
    run = Run(path=run_dir, info=info, episodes_step=steps_a, episodes_return=rets_a,
              metrics=metrics, bad_lines=bad_ep + bad_m, dropped_episodes=dropped,
              absent=absent, damage=damage)
    return run


@dataclass
class Sweep:
    root: Path
    runs: list[Run]  # one per (env, cell, seed): the kept copy
    duplicates: list[tuple[Run, Run]]  # (dropped, kept)
    unreadable: list[tuple[Path, str]]
    damaged: list[Run] = field(default_factory=list)  # runs with damaged files (see Run.damage)
    include_damaged: bool = False  # True: the damaged runs are also in ``runs`` (what could be read of them)

    def envs(self) -> list[str]:
        return sorted({r.env for r in self.runs})

    def cells(self, env: str) -> list[str]:
        return sort_cells({r.cell for r in self.runs if r.env == env})

    def runs_of(self, env: str, cell: str, status: str | None = "completed") -> list[Run]:
        out = [r for r in self.runs if r.env == env and r.cell == cell
               and (status is None or r.status == status)]
        return sorted(out, key=lambda r: r.seed)

    def missing(self, env: str) -> list[tuple[str, int]]:
        """(cell, seed) pairs with no run directory at all, judged against the full grid.

        The expected grid, per compile flag, is every observed GELU variant x precision of this
        env under that flag, times every seed seen in the env (a sweep cannot name cells nobody
        launched; compiled runs are often a deliberate subset, so they form their own grid).
        Perturbed (noise-floor control) cells are not crossed with the grid: a control cell that
        exists is expected to hold every seed, and no other cell is expected to have a control.
        """
        runs = [r for r in self.runs if r.env == env]
        seeds = {r.seed for r in runs}
        have = {(r.cell, r.seed) for r in runs} | {(r.cell, r.seed) for r in self.damaged if r.env == env}
        out = []
        for cl in {r.cell for r in runs if r.perturb != "none"}:
            out += [(cl, s) for s in seeds if (cl, s) not in have]
        plain = [r for r in runs if r.perturb == "none"]
        for c in {r.compile for r in plain}:
            sub = [r for r in plain if r.compile == c]
            for g in {r.info["gelu"] for r in sub}:
                for p in {r.info["precision"] for r in sub}:
                    for s in seeds:
                        cl = cell_label(g, p, c)
                        if (cl, s) not in have:
                            out.append((cl, s))
        return sorted(out, key=lambda cs: (cell_sort_key(cs[0]), cs[1]))


_PREC_ORDER = {"fp32": 0, "bf16": 1, "fp16": 2}
_GELU_ORDER = {"exact": 0, "tanh": 1}


def cell_sort_key(cell: str):
    """Plain cells first, then compiled ones, then noise-floor controls; precision, then GELU."""
    c = parse_cell(cell)
    g, p = c["gelu"], c["precision"]
    return (c["perturb"] != "none", c["compiled"], c["perturb"], _PREC_ORDER.get(p, 9), p,
            _GELU_ORDER.get(g, 9), g, cell)


def sort_cells(cells) -> list[str]:
    return sorted(cells, key=cell_sort_key)


def find_run_dirs(root: str | os.PathLike) -> list[Path]:
    """Every directory under root (root included) that holds a run.json."""
    root = Path(root)
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in ("wandb", ".hydra", "__pycache__"))
        if "run.json" in filenames:
            found.append(Path(dirpath))
    return found


def _preference(run: Run) -> tuple:
    """Higher is better: completed first, then the latest end (or start) time."""
    return (run.status == "completed", str(run.info.get("ended_at") or ""),
            str(run.info.get("started_at") or ""), str(run.path))


def load_sweep_or_raise(sweep_dir: str | os.PathLike, error: type[Exception],
                        include_damaged: bool = False) -> Sweep:
    """load_sweep for a user-given path: raise ``error`` with one clear line if it is no sweep with runs."""
    root = Path(sweep_dir)
    if not root.is_dir():
        raise error(f"sweep dir '{sweep_dir}' is not a directory")
    sweep = load_sweep(root, include_damaged=include_damaged)
    if not sweep.runs and sweep.damaged:
        raise error(f"every run under '{sweep_dir}' is damaged ({len(sweep.damaged)}; first: "
                    f"{sweep.damaged[0].damage}); --include-damaged uses what can be read")
    if not sweep.runs:
        extra = f" ({len(sweep.unreadable)} unreadable: {sweep.unreadable[0][1]})" if sweep.unreadable else ""
        raise error(f"no run directories (run.json) found under '{sweep_dir}'{extra}")
    return sweep


def load_sweep(root: str | os.PathLike, include_damaged: bool = False) -> Sweep:
    """Every run under root. Damaged runs are listed in ``damaged`` and left out of ``runs`` (and so out of
    every statistic) unless ``include_damaged``."""
    root = Path(root)
    runs, unreadable, damaged = [], [], []
    for d in find_run_dirs(root):
        try:
            r = load_run(d)
        except RunReadError as e:
            unreadable.append((d, str(e)))
            continue
        if r.damage is not None:
            damaged.append(r)
            if not include_damaged:
                continue
        runs.append(r)
    by_key: dict[tuple, list[Run]] = {}
    for r in runs:
        by_key.setdefault(r.key, []).append(r)
    kept, dups = [], []
    for key, group in by_key.items():
        group = sorted(group, key=_preference, reverse=True)
        kept.append(group[0])
        dups.extend((g, group[0]) for g in group[1:])
    kept.sort(key=lambda r: (r.env, cell_sort_key(r.cell), r.seed))
    damaged.sort(key=lambda r: (r.env, cell_sort_key(r.cell), r.seed, str(r.path)))
    return Sweep(root=root, runs=kept, duplicates=dups, unreadable=unreadable, damaged=damaged,
                 include_damaged=include_damaged)
