"""Run tracking: run.json (status + fingerprint), metrics.jsonl, episodes.jsonl, and wandb.

Local files are the source of truth (analysis reads only them); wandb mirrors them, offline by
default so a run never needs a network (``wandb sync <run dir>/wandb/offline-run-*`` uploads later).
metrics.jsonl and episodes.jsonl are appended and flushed every PPO update, so a crash loses at most
one update. run.json is rewritten atomically (temp file + rename) on every status change.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from esper_exp.analysis.rule import ADDED_DEFAULTS as RULE_ADDED_DEFAULTS
from esper_exp.runformat import (
    STATUSES,
    cell_name,
    dumps,
    read_run_json,
    truncate_jsonl,
    write_json_atomic,
)

IDENTITY_EXCLUDE = ("tracking", "sweep_name", "env_workers", "env_spin_us")  # keys that do not change what a run computes
ADDED_DEFAULTS = {"analysis": RULE_ADDED_DEFAULTS}  # per section, keys added later: {key: default} (config_hash)


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def config_hash(config: dict) -> str:
    """Hash of the resolved config minus bookkeeping keys: equal hash = same computation. Keys added to a section
    after runs existed hash as if absent while at their defaults (``ADDED_DEFAULTS``), so older runs keep their
    identity."""
    ident = {k: v for k, v in config.items() if k not in IDENTITY_EXCLUDE}
    for section, defaults in ADDED_DEFAULTS.items():
        if isinstance(ident.get(section), dict):
            ident[section] = {k: v for k, v in ident[section].items() if k not in defaults or v != defaults[k]}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def git_state(where: Path | None = None, limit: int = 20) -> tuple[str | None, list[str]]:
    """(commit, changes) of the checkout this package runs from (or ``where``): the commit, with "-dirty" where
    tracked files differ from it, and those differences as ``git status --porcelain`` lines (the first ``limit``,
    then a count), so that a run's "-dirty" says what was different; (None, []) outside a git checkout."""
    here = where or Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        if sha.returncode != 0:
            return None, []
        changes = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                                 capture_output=True, text=True, timeout=5).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        return None, []
    changes = [c.rstrip() for c in changes if c.strip()]
    shown = changes[:limit] + ([f"... and {len(changes) - limit} more"] if len(changes) > limit else [])
    return sha.stdout.strip() + ("-dirty" if changes else ""), shown


@functools.lru_cache(maxsize=1)
def _code_state() -> tuple[str | None, tuple[str, ...]]:
    """git_state() of this package's checkout, read once per process: the code a process runs is what it imported
    at its start, and a group's members (60 and more) would otherwise each run git twice."""
    sha, changes = git_state()
    return sha, tuple(changes)


CODE_DIRS = ("esper_exp", "hydra_plugins", "configs")  # what a run computes with: the package, launcher, configs


def code_trees(where: Path | None = None) -> dict[str, str] | None:
    """The git tree id of each of :data:`CODE_DIRS` as this checkout's files are now (tracked files, uncommitted
    edits included; untracked files left out, as in ``git_state``): equal to ``git rev-parse <commit>:<dir>`` for every
    commit whose <dir> holds the same content, whatever commit the checkout's .git names. So the code a run ran is
    identified even where the git metadata lags the files (a lent GPU box's .git was its session's first commit while
    its files were newer: sessions 18-19). Computed from the files (git's blob and tree hashing; nothing is written
    into .git); None outside a git checkout."""
    here = where or Path(__file__).resolve().parent
    try:
        top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=here, capture_output=True, text=True,
                             timeout=5)
        if top.returncode != 0:
            return None
        root = Path(top.stdout.strip())
        listed = subprocess.run(["git", "ls-files", "-s", "-z", "--", *CODE_DIRS], cwd=root, capture_output=True,
                                timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    trees: dict[str, dict] = {}
    for entry in listed.stdout.split(b"\0"):
        if not entry:
            continue
        meta, path = entry.split(b"\t", 1)
        mode = meta.split(b" ")[0]
        file = root / os.fsdecode(path)
        if mode == b"160000" or not (file.is_file() or file.is_symlink()):  # a submodule, or deleted: not run
            continue
        try:
            data = os.fsencode(os.readlink(file)) if mode == b"120000" else file.read_bytes()
        except OSError:  # unreadable: the content is unknown, and a run must not fail for its record
            return None
        *dirs, name = path.split(b"/")
        node = trees
        for d in dirs:
            node = node.setdefault(d, {})
        node[name] = (mode, hashlib.sha1(b"blob %d\0" % len(data) + data).digest())
    return {d.decode(): _tree_sha(trees[d]).hex() for d in (c.encode() for c in CODE_DIRS) if d in trees}


def _tree_sha(node: dict) -> bytes:
    """git's tree object id of a directory {name: (mode, blob sha) | {subtree}} (entries in git's order: a
    subtree's name sorts as if it ended in "/")."""
    body = b""
    for name in sorted(node, key=lambda n: n + b"/" if isinstance(node[n], dict) else n):
        mode, sha = (b"40000", _tree_sha(node[name])) if isinstance(node[name], dict) else node[name]
        body += mode + b" " + name + b"\0" + sha
    return hashlib.sha1(b"tree %d\0" % len(body) + body).digest()


@functools.lru_cache(maxsize=1)
def _code_trees() -> dict[str, str] | None:
    """code_trees() of this package's checkout, once per process (as _code_state)."""
    return code_trees()


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for pkg in ("torch", "numpy", "gymnasium", "mujoco", "hydra-core", "wandb", "esper-exp"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def device_name(device) -> str:
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"cpu: {line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return f"cpu: {platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


LAYOUT_NOTE = ("on CUDA a member's numbers depend on its group's layout (the batched GEMMs over the group's members "
               "use other kernels than a run alone or a group of another size), so this run is identified by its "
               "config_hash together with group_size, member_index, the GPU, the software versions and the flags "
               "above: reproduce it by re-running the same group on the same GPU model and software")


def cuda_record(device, group: dict) -> dict:
    """run.json's ``cuda`` block (CUDA runs only; CPU runs have none): the numerics flags pinned by
    ``runtime.pin_cuda_numerics``, GPU, driver, CUDA / cuBLAS / cuDNN versions, and the group layout."""
    from esper_exp.runtime import cuda_fingerprint

    return {**cuda_fingerprint(device),
            "layout": {"group_size": group["size"], "member_index": group["member_index"], "note": LAYOUT_NOTE}}


def run_info(config: dict, run_dir: Path, device: str, group: dict | None = None) -> dict:
    """A new run.json (status running): what the run is (cell, seed, config and its hash), where and with what it
    runs. The Tracker writes it when a run starts; :func:`record_not_started` when a run never could."""
    sha, changes = _code_state()
    return {
        "status": "running",
        "reason": None,
        "seed": config["seed"],
        "env": config["env"]["name"],
        "env_id": config["env"]["id"],
        "gelu": config["model"]["gelu"],
        "precision": config["precision"]["name"],
        "compile": bool(config["model"]["compile"]),
        "perturb": config["drift"]["perturb"],
        "cell": cell_name(config),
        "config_hash": config_hash(config),
        "git_sha": sha,
        "git_changes": list(changes),  # what "-dirty" means: tracked files that differ from the commit
        "code_trees": _code_trees(),  # the code's content, whatever the commit above (code_trees())
        "versions": versions(),
        "device": device,
        "host": platform.node(),
        "pid": os.getpid(),  # with host: lets a sweep summary tell a live run from a dead one
        "started_at": now(),
        "ended_at": None,
        "total_timesteps": config["ppo"]["total_timesteps"],
        "global_step": 0,
        "update": 0,
        "nonfinite_events": 0,
        "wandb_run_dir": None,
        "group": group or {"size": 1, "member_index": 0, "members": [str(run_dir)]},
        "config": config,
    }


def record_not_started(run_dir: Path, config: dict, reason: str) -> None:
    """A run whose process died before the run started (e.g. a group process that crashed on start-up): a run.json
    saying failed and why, and the line in train.log, so the sweep summary and esper-report count it. Only where
    the directory holds no run.json (an earlier attempt's record, e.g. a resumable interrupted run, is kept)."""
    run_dir = Path(run_dir)
    if (run_dir / "run.json").exists():
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    info = run_info(config, run_dir, "none (not started)")
    info.update(status="failed", reason=reason, pid=None, started_at=None, ended_at=now())
    write_json_atomic(run_dir / "run.json", info)
    with open(run_dir / "train.log", "a", encoding="utf-8") as f:
        f.write(f"[{now()}] failed before it started: {reason}\n")


class Tracker:
    def __init__(self, run_dir: Path, config: dict, device, resume_at: tuple[int, int] | None = None,
                 group: dict | None = None):
        """resume_at = (update, global_step) of the checkpoint a resumed run continues from: records after it
        (written between that checkpoint and the interruption) are dropped, since the run recomputes them."""
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.config = config
        self.cell = cell_name(config)
        resumed = resume_at is not None
        if resumed:
            for name in ("probe.jsonl", "snapshots.jsonl"):
                truncate_jsonl(self.run_dir / name, lambda r: r["update"] <= resume_at[0])
            truncate_jsonl(self.run_dir / "metrics.jsonl", lambda r: r["update"] <= resume_at[0])
            truncate_jsonl(self.run_dir / "episodes.jsonl", lambda r: r["global_step"] <= resume_at[1])
        self._mode = "a" if resumed else "w"
        self._metrics = open(self.run_dir / "metrics.jsonl", self._mode)
        self._episodes = open(self.run_dir / "episodes.jsonl", self._mode)
        self._extra: dict[str, object] = {}  # probe.jsonl, snapshots.jsonl: opened on first use
        self.info = run_info(config, self.run_dir, device_name(device), group)
        if getattr(device, "type", None) == "cuda":
            self.info["cuda"] = cuda_record(device, self.info["group"])
        previous = (read_run_json(self.run_dir) or {}) if resumed else {}
        if resumed:
            self.info["started_at"] = previous.get("started_at", self.info["started_at"])
            self.info["resumed_at"] = previous.get("resumed_at", []) + [now()]
            self.info["global_step"], self.info["update"] = resume_at[1], resume_at[0]
            # what the launches before this resume ran on, where it differs from this one (oldest first): a CUDA
            # run continued under other numerics (GPU, software, flags, layout) is another computation; a run
            # continued on another commit or tree ran other code for its first updates (up to ``up_to_update``)
            code = (self.info["git_sha"], self.info["git_changes"])
            trees = previous.get("code_trees")  # compared where recorded (run.json files since session 19)
            code_changed = ((previous.get("git_sha"), list(previous.get("git_changes") or [])) != code
                            or (trees is not None and trees != self.info["code_trees"]))
            for key, changed, entry in (
                    ("cuda_before_resume", previous.get("cuda") != self.info.get("cuda"),
                     previous.get("cuda") or {"device": previous.get("device")}),
                    ("git_before_resume", code_changed,
                     {"git_sha": previous.get("git_sha"), "git_changes": previous.get("git_changes"),
                      **({"code_trees": trees} if trees is not None else {}), "up_to_update": resume_at[0]})):
                before = previous.get(key, []) + ([entry] if changed else [])
                if before:
                    self.info[key] = before
        self._write()
        self.note(f"{'resumed at update ' + str(resume_at[0]) if resumed else 'started'}: {self.cell} seed "
                  f"{config['seed']} on {self.info['device']} (host {self.info['host']}, pid {self.info['pid']}, group "
                  f"member {self.info['group']['member_index'] + 1} of {self.info['group']['size']})")
        self.wandb = None
        self._start_wandb(config, previous.get("wandb_id"))

    def note(self, line: str) -> None:
        """One timestamped line in <run dir>/train.log, the run's own log (appended across resumed attempts): when it
        started or resumed, where, and how it ended."""
        with open(self.run_dir / "train.log", "a", encoding="utf-8") as f:
            f.write(f"[{now()}] {line}\n")

    def _start_wandb(self, config: dict, resume_id: str | None = None) -> None:
        """One wandb run per run directory: a resumed run continues its own wandb run (same id). Several trackers
        in one process (a group's members) each hold their own run object (reinit="create_new")."""
        wb = config["tracking"]["wandb"]
        if wb["mode"] == "disabled":
            return
        import wandb

        self.wandb = wandb.init(
            project=wb["project"], entity=wb["entity"], mode=wb["mode"], dir=str(self.run_dir),
            group=wb["group"] or self.cell.replace("/", "-"),
            name=f"{self.cell.replace('/', '-')}-seed{config['seed']}",
            job_type=f"{config['model']['gelu']}-{config['precision']['name']}",
            tags=[config["env"]["name"], f"gelu={config['model']['gelu']}", f"precision={config['precision']['name']}",
                  f"compile={bool(config['model']['compile'])}"],
            config=config, reinit="create_new", settings=wandb.Settings(console="off", x_disable_stats=True),
            **({"id": resume_id, "resume": "allow"} if resume_id else {}),
        )
        self.info["wandb_id"] = self.wandb.id
        self.wandb.define_metric("global_step")
        self.wandb.define_metric("*", step_metric="global_step")
        self.info["wandb_run_dir"] = str(Path(self.wandb.dir).parent)
        self._write()

    def _write(self) -> None:
        write_json_atomic(self.run_dir / "run.json", self.info)

    def log_episode(self, global_step: int, ret: float, length: int, env_index: int) -> None:
        self._episodes.write(dumps({"global_step": global_step, "return": ret, "length": length,
                                         "env_index": env_index}) + "\n")

    def log_update(self, record: dict) -> None:
        self._episodes.flush()
        self._metrics.write(dumps(record) + "\n")
        self._metrics.flush()
        self.info["global_step"], self.info["update"] = record["global_step"], record["update"]
        self.info["nonfinite_events"] = record.get("nonfinite_grad_steps", 0)
        if self.wandb is not None:
            self.wandb.log(record)

    def log_record(self, name: str, record: dict) -> None:
        """Append one record to <run dir>/<name> (probe.jsonl, snapshots.jsonl), flushed."""
        f = self._extra.get(name)
        if f is None:
            f = self._extra[name] = open(self.run_dir / name, self._mode)
        f.write(dumps(record) + "\n")
        f.flush()

    def finish(self, status: str, reason: str | None = None) -> None:
        assert status in STATUSES
        if status == "failed":
            self.info["nonfinite_events"] += int("non-finite" in (reason or ""))
        self.info.update(status=status, reason=reason, ended_at=now())
        for f in (self._metrics, self._episodes, *self._extra.values()):
            if not f.closed:
                f.flush()
                f.close()
        self._write()
        self.note(f"{status} at update {self.info['update']} (global_step {self.info['global_step']})"
                  + (f": {reason}" if reason else ""))
        if self.wandb is not None:
            self.wandb.summary["status"] = status
            self.wandb.finish(exit_code=0 if status == "completed" else 1)
            self.wandb = None


def print_err(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
