"""Where, and with what, a sweep's runs ran: from their run.json files, one row per distinct combination of device,
driver and CUDA, software versions, numerics flags, commit and (where recorded) code trees, with its run count and
dates.

A study run over many sessions and boxes is read as one sample only if these are uniform, or if where they differ is
stated: :func:`provenance` gives the rows, :func:`varying` the fields that differ. What a run.json holds is the launch
that last wrote it (a resumed run: the resume's commit, device and versions; ``started_at`` stays its first start),
and the launches before a resume appear only where they differed (run.json's ``git_before_resume``, recorded since
2026-11-24, and ``cuda_before_resume``); the runs' train.log lists every launch.
"""

from __future__ import annotations

from .load import Run

# (column, how it is read from run.json); None where a run has no such record (a CPU run has no "cuda" block)
FIELDS = {
    "device": lambda i: i.get("device"),
    "driver": lambda i: (i.get("cuda") or {}).get("driver"),
    "cuda": lambda i: (i.get("cuda") or {}).get("cuda_runtime"),
    "torch": lambda i: (i.get("versions") or {}).get("torch"),
    "python": lambda i: (i.get("versions") or {}).get("python"),
    "numpy": lambda i: (i.get("versions") or {}).get("numpy"),
    "gymnasium": lambda i: (i.get("versions") or {}).get("gymnasium"),
    "mujoco": lambda i: (i.get("versions") or {}).get("mujoco"),
    "deterministic": lambda i: _deterministic(i),
    "tf32": lambda i: _tf32(i),
    "commit": lambda i: _commit(i.get("git_sha")),
    "uncommitted_changes": lambda i: _changes(i.get("git_changes")),
    # the launches before a resume, where they differed (tracking.Tracker): their commits, and whether the CUDA
    # numerics (GPU, software, flags, group layout) differed; None where not recorded (no such resume, or a
    # run.json from before 2026-11-24, which recorded no earlier commits)
    "earlier_commits": lambda i: ("; ".join(_commit(b.get("git_sha")) or "?" for b in i["git_before_resume"])
                                  if i.get("git_before_resume") else None),
    "cuda_changed_on_resume": lambda i: bool(i.get("cuda_before_resume")),
}


# where any run records it (run.json's ``code_trees``, since 2026-11-24, session 19), a column after the commit's:
# the code's git tree ids, computed from its files, which name the code even where a checkout's .git lagged its files
CODE = ("code", lambda i: _trees(i.get("code_trees")))
_ROW_KEYS = ("runs", "first_started", "last_ended")


def fields(runs: list[Run]) -> dict:
    """The columns for these runs: :data:`FIELDS`, with :data:`CODE` after ``uncommitted_changes`` where any run
    records code trees (so the reports of runs from before keep their table)."""
    if not any(r.info.get("code_trees") for r in runs):
        return FIELDS
    out = {}
    for k, f in FIELDS.items():
        out[k] = f
        if k == "uncommitted_changes":
            out[CODE[0]] = CODE[1]
    return out


def columns(rows: list[dict]) -> list[str]:
    """The field columns of :func:`provenance`'s rows (FIELDS where there are no rows)."""
    return [k for k in rows[0] if k not in _ROW_KEYS] if rows else list(FIELDS)


def _trees(trees):
    """'configs 9f375ad6ed9c, esper_exp e5ab02516c83, ...' (12 hex digits each); None where not recorded."""
    return ", ".join(f"{d} {str(h)[:12]}" for d, h in sorted(trees.items())) if trees else None


def _commit(sha):
    """The commit's first 12 hex digits, keeping run.json's "-dirty" mark (the launch's tree differed from it)."""
    if not sha:
        return None
    sha = str(sha)
    return sha[:12] + ("-dirty" if sha.endswith("-dirty") else "")


def _flag(info: dict, name: str):
    return ((info.get("cuda") or {}).get("flags") or {}).get(name)


def _deterministic(info: dict):
    """On CUDA the flag the run set (torch.are_deterministic_algorithms_enabled, recorded in run.json's cuda block);
    elsewhere the config's ``deterministic``."""
    flag = _flag(info, "deterministic_algorithms")
    return flag if flag is not None else (info.get("config") or {}).get("deterministic")


def _tf32(info: dict):
    flags = [_flag(info, "matmul_allow_tf32"), _flag(info, "cudnn_allow_tf32")]
    return None if all(f is None for f in flags) else any(bool(f) for f in flags)


def _changes(value):
    """run.json's git_changes (``git status --porcelain`` lines of the launch's tree): the changed paths joined by
    "; ", "none" for a clean tree, None where not recorded (run.json files before 2026-11-23's d3c96f6)."""
    if value is None:
        return None
    return "; ".join(sorted(str(v).strip() for v in value)) or "none"


def provenance(runs: list[Run]) -> list[dict]:
    """One row per distinct combination of :data:`FIELDS`, most runs first: the fields, ``runs``, and the earliest
    ``started_at`` and latest ``ended_at`` of those runs (ISO strings; None where no run has one)."""
    rows: dict[tuple, dict] = {}
    cols = fields(runs)
    for r in runs:
        values = {k: f(r.info) for k, f in cols.items()}
        row = rows.setdefault(tuple(values.values()), {**values, "runs": 0, "first_started": None, "last_ended": None})
        row["runs"] += 1
        s, e = r.info.get("started_at"), r.info.get("ended_at")
        if s and (row["first_started"] is None or str(s) < row["first_started"]):
            row["first_started"] = str(s)
        if e and (row["last_ended"] is None or str(e) > row["last_ended"]):
            row["last_ended"] = str(e)
    return sorted(rows.values(), key=lambda row: (-row["runs"], [str(row[k]) for k in cols]))


def varying(rows: list[dict]) -> list[str]:
    """The fields whose value is not the same in every row."""
    return [k for k in columns(rows) if len({repr(row[k]) for row in rows}) > 1]
