"""Sweep summary: a Hydra callback that ends every multirun with completed / failed / interrupted / skipped.

Registered in ``configs/hydra/default.yaml`` (``hydra.callbacks.sweep_summary``). It reads run directories only
(``run.json``, plus the modification times of ``run.json`` and of the ``.hydra/`` files Hydra writes when it
launches a job), never live objects or launcher results, so it works the same for every launcher (basic, joblib,
submitit local or slurm) and can be re-run on any sweep directory later::

    python -m esper_exp.sweep outputs/sweeps/<sweep name>      # summary of everything in that directory

Which jobs belong to this invocation: Hydra rewrites ``<job dir>/.hydra/hydra.yaml`` each time it launches a job,
so a job dir whose ``.hydra/hydra.yaml`` changed since ``on_multirun_start`` was launched now. Such a job is

- ``completed`` / ``failed`` / ``interrupted``: its ``run.json`` was (re)written during the sweep; status and reason
  are read from it. ``running`` left at the end means the job process died without writing its status (killed,
  out of memory, node lost): reported as ``interrupted`` with that reason.
- ``skipped``: its ``run.json`` was not touched during the sweep, says ``completed``, and holds the hash of the config
  Hydra composed for the job: ``esper_exp.train.run`` found the finished run and skipped it.
- ``failed`` with reason "no run.json written": the job stopped before the run started (config error; the job's
  log says why), including a directory that holds a completed run of another config (train.run refuses it).

Run directories of the sweep that were not launched now (e.g. other seeds of an extended sweep) are counted
separately as ``other``. Snapshots compare (mtime_ns, size) of files, so clock skew between nodes does not matter.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from esper_exp.runformat import FINISHED, file_stamp, read_run_json, write_json_atomic
from esper_exp.tracking import config_hash, now

CATEGORIES = (*FINISHED, "skipped")
# the summary of the last multirun in this process (esper-train's exit code reads it) and the callback of a live one
LAST_SUMMARY: dict[str, Any] | None = None
_ACTIVE: SweepSummary | None = None
_IGNORED_PARTS = {"attempts", ".submitit", "wandb", ".hydra"}


def job_dirs(sweep_dir: Path) -> list[Path]:
    """Job directories of a sweep: those holding a run.json or a Hydra .hydra/hydra.yaml (not attempts/, ...)."""
    sweep_dir = Path(sweep_dir)
    found: set[Path] = set()
    if not sweep_dir.is_dir():
        return []
    for pattern in ("run.json", ".hydra/hydra.yaml"):
        for p in sweep_dir.rglob(pattern):
            job = p.parent if pattern == "run.json" else p.parent.parent
            rel = job.relative_to(sweep_dir).parts
            if job != sweep_dir and not (_IGNORED_PARTS & set(rel)):
                found.add(job)
    return sorted(found)


def snapshot(sweep_dir: Path) -> dict[str, dict[str, Any]]:
    return {str(d): {"run_json": file_stamp(d / "run.json"), "hydra": file_stamp(d / ".hydra" / "hydra.yaml")}
            for d in job_dirs(sweep_dir)}


def _job_config_hash(job: Path) -> str | None:
    """Hash of the config Hydra composed for this job (.hydra/config.yaml), as train.run computes it."""
    path = job / ".hydra" / "config.yaml"
    if not path.exists():
        return None
    try:
        import esper_exp.train  # noqa: F401  (registers the resolvers the config may use)

        return config_hash(OmegaConf.to_container(OmegaConf.load(path), resolve=True))
    except Exception:
        return None


def _alive(info: dict) -> bool:
    """Whether the process that wrote this run.json is still alive on this host."""
    import platform

    pid = info.get("pid")
    if not pid or info.get("host") != platform.node() or pid == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def classify(job: Path, before: dict[str, Any] | None) -> dict[str, Any]:
    """One job's entry: category (completed/failed/interrupted/skipped/other) plus what run.json says."""
    before = before or {"run_json": None, "hydra": None}
    info = read_run_json(job)
    launched = file_stamp(job / ".hydra" / "hydra.yaml") not in (None, before["hydra"])
    written = info is not None and file_stamp(job / "run.json") != before["run_json"]
    entry: dict[str, Any] = {"dir": str(job), "status": info.get("status") if info else None,
                             "reason": info.get("reason") if info else None}
    if info:
        entry.update({k: info.get(k) for k in ("cell", "seed", "global_step", "total_timesteps", "config_hash",
                                               "started_at", "ended_at")})
        if info.get("resumed_at"):
            entry["resumed"] = True
    if not launched and not written:
        entry["category"] = "other"
        return entry
    if written:
        status = info.get("status")
        if status == "running" and _alive(info):
            entry.update(category="other", reason=f"still running in process {info['pid']} on this host "
                                                  "(another sweep or job writing to this directory)")
        elif status == "running":
            entry.update(category="interrupted",
                         reason="run.json still says running: the job process died without writing its status")
        elif status in FINISHED:
            entry["category"] = status
        else:
            entry.update(category="failed", reason=f"unknown status {status!r} in run.json")
        return entry
    if info and info.get("status") == "completed":
        job_hash = _job_config_hash(job)
        if job_hash is None or job_hash == info.get("config_hash"):
            entry["category"] = "skipped"
        else:
            entry.update(category="failed", reason=f"not run: the directory holds a completed run of another config "
                                                   f"(hash {info.get('config_hash')}, this job {job_hash})")
        return entry
    entry.update(category="failed", reason="no run.json written: the job stopped before the run started "
                                           "(config error or crash; see the job's log)")
    return entry


def summarize(sweep_dir: Path, before: dict[str, dict[str, Any]] | None = None,
              started_at: str | None = None) -> dict[str, Any]:
    """Summary of a sweep directory. ``before`` = snapshot taken at sweep start; None counts every job as launched."""
    sweep_dir = Path(sweep_dir)
    jobs = []
    for job in job_dirs(sweep_dir):
        if before is None:
            entry = classify(job, None)
            if entry["category"] == "other":  # no snapshot: take run.json at its word
                entry["category"] = entry["status"] if entry["status"] in CATEGORIES else "failed"
            jobs.append(entry)
        else:
            jobs.append(classify(job, before.get(str(job))))
    for j in jobs:
        j["job"] = str(Path(j["dir"]).relative_to(sweep_dir))
    counts = {c: sum(j["category"] == c for j in jobs) for c in (*CATEGORIES, "other")}
    return {"sweep_dir": str(sweep_dir), "started_at": started_at, "ended_at": now(),
            "launched": sum(j["category"] != "other" for j in jobs), "counts": counts,
            "env_steps": sum(int(j.get("global_step") or 0) for j in jobs if j["category"] in ("completed", "failed",
                                                                                             "interrupted")),
            "jobs": jobs}


def render(summary: dict[str, Any]) -> str:
    c = summary["counts"]
    lines = [f"# Sweep summary: {summary['sweep_dir']}", "",
             f"{summary['launched']} {'jobs launched' if summary.get('started_at') else 'run dirs'}: {c['completed']} completed, {c['failed']} failed, "
             f"{c['interrupted']} interrupted, {c['skipped']} skipped (already completed)"
             + (f"; {c['other']} other run dirs in the sweep dir not launched now" if c["other"] else ""), ""]
    if summary.get("started_at"):
        lines += [f"started {summary['started_at']}, ended {summary['ended_at']}", ""]
    if summary.get("interrupted_by"):
        lines += [f"stopped by {summary['interrupted_by']}: jobs not started are not listed; re-run the same command "
                  "to finish the sweep", ""]
    bad = [j for j in summary["jobs"] if j["category"] in ("failed", "interrupted")]
    if bad:
        lines += ["| job | category | reason |", "|---|---|---|"]
        lines += [f"| {j['job']} | {j['category']} | {str(j['reason']).replace('|', '/')} |" for j in bad]
        lines.append("")
    return "\n".join(lines)


def write_summary(sweep_dir: Path, summary: dict[str, Any]) -> None:
    sweep_dir = Path(sweep_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(sweep_dir / "summary.json", summary)
    (sweep_dir / "summary.md").write_text(render(summary))


class SweepSummary(Callback):
    """Hydra callback: snapshot the sweep dir at multirun start; summarize, print and write it at the end."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._before: dict[str, dict[str, Any]] | None = None
        self._started_at: str | None = None
        self._sweep_dir: Path | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        global _ACTIVE, LAST_SUMMARY
        LAST_SUMMARY = None
        if self.enabled:
            self._started_at = now()
            self._sweep_dir = Path(str(config.hydra.sweep.dir))
            self._before = snapshot(self._sweep_dir)
            _ACTIVE = self

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.enabled:
            self.finish(Path(str(config.hydra.sweep.dir)))

    def finish(self, sweep_dir: Path, interrupted: str | None = None) -> dict[str, Any]:
        """Summarize, write and print; ``interrupted``: the signal that stopped the sweep (jobs never started are
        not in the summary; re-running the command runs them)."""
        global _ACTIVE, LAST_SUMMARY
        _ACTIVE = None
        summary = summarize(sweep_dir, self._before or {}, self._started_at)
        if interrupted:
            summary["interrupted_by"] = interrupted
        write_summary(sweep_dir, summary)
        LAST_SUMMARY = summary
        print(render(summary).replace("# Sweep summary: ", "sweep summary: "), flush=True)
        print(f"(written to {sweep_dir / 'summary.md'} and summary.json)", flush=True)
        return summary


def finish_interrupted(signal_name: str) -> dict[str, Any] | None:
    """Write the summary of a multirun stopped by a signal (Hydra calls no on_multirun_end then); None if no
    multirun with a summary is live in this process."""
    if _ACTIVE is None:
        return None
    return _ACTIVE.finish(_ACTIVE._sweep_dir, interrupted=signal_name)


def failed_jobs(summary: dict[str, Any] | None) -> int:
    """Jobs of a summary that failed or were interrupted (non-zero: esper-train exits 1)."""
    if not summary:
        return 0
    return summary["counts"]["failed"] + summary["counts"]["interrupted"]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0].startswith("-"):
        print("usage: python -m esper_exp.sweep <sweep dir>   (summary of every run dir in it)", file=sys.stderr)
        return 2
    sweep_dir = Path(argv[0])
    if not job_dirs(sweep_dir):
        print(f"error: no run directories under {sweep_dir}", file=sys.stderr)
        return 2
    summary = summarize(sweep_dir)
    print(render(summary))
    return 0 if failed_jobs(summary) == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
