"""The ``grouped`` Hydra launcher: a sweep's jobs trained as groups, one process per group.

    esper-train -m experiment=gelu_amp hydra/launcher=grouped hydra.launcher.n_jobs=2 hydra.launcher.max_members=10

The sweep's jobs are composed in the submitting process (as Hydra's basic/joblib launchers do), each gets its usual
output dir (``hydra.sweep.dir/hydra.sweep.subdir``), and jobs whose configs differ only in seed and bookkeeping
(equal ``esper_exp.train.group_key``) form groups of at most ``max_members``. Each group runs in a fresh process
(``backend: local``) or as one submitit task (``submitit_local``, ``submitit_slurm``), ``n_jobs`` groups at a time.
A group process writes every member's ``.hydra/`` files exactly as Hydra's ``run_job`` does, then calls
``esper_exp.train.run_group``, which trains the members in their own run directories. Hydra gets one ``JobReturn``
per job in the original order; the return value is the member's status, as with the other launchers.

Signals: the submitting process forwards SIGTERM / Ctrl-C to every running group (local group processes run in
their own session, so a terminal Ctrl-C reaches them once, through the launcher), waits until every member has
checkpointed, starts no further group and raises ``KeyboardInterrupt`` (``esper-train`` exits 130/143). A second
Ctrl-C is forwarded too: the members abort at once (their last periodic checkpoint stays). Re-running the same
command skips completed members and resumes interrupted ones (``run_group`` decides per run directory).

The Hydra plugin is ``hydra_plugins/esper_grouped_launcher`` (config schema and the Launcher class, which Hydra
requires to live under ``hydra_plugins``); this module holds the logic and imports nothing heavy at module level.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import (
    JobReturn,
    JobRuntime,
    JobStatus,
    configure_log,
    filter_overrides,
    setup_globals,
)
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from esper_exp.composing import task_config
from esper_exp.runformat import file_stamp
from esper_exp.signals import SignalScope

log = logging.getLogger(__name__)

BACKENDS = ("local", "submitit_local", "submitit_slurm")
# submitit's keys (hydra_plugins/hydra_submitit_launcher/config.py) that the grouped launcher passes on
SUBMITIT_BASE_KEYS = ("timeout_min", "cpus_per_task", "gpus_per_node", "mem_gb", "name", "stderr_to_stdout")
SLURM_KEYS = ("partition", "qos", "comment", "constraint", "exclude", "gres", "cpus_per_gpu", "gpus_per_task",
              "mem_per_gpu", "mem_per_cpu", "account", "signal_delay_s", "additional_parameters", "setup")
POLL_S = 0.2


# ---------------------------------------------------------------------------------------------------------------
# group formation


def form_groups(keys: Sequence[str], max_members: int | Sequence[int],
                order: Sequence[Any] | None = None) -> list[list[int]]:
    """Indices of jobs grouped by equal key, each group split into chunks of at most ``max_members``.

    Groups come in the order of their first job and keep the jobs' order inside (or the order of ``order[i]``, ties
    in job order: a mixed group's members sorted by cell, so each cell is one contiguous segment); a key's jobs are
    split into the fewest chunks that fit, with sizes differing by at most one (12 jobs, max 10 -> 6 + 6, not
    10 + 2), so the chunks of one group finish at about the same time. ``max_members`` is one limit or one per job
    (a key's limit is its first job's).
    """
    limits = [max_members] * len(keys) if isinstance(max_members, int) else list(max_members)
    if any(m < 1 for m in limits):
        raise ValueError(f"max_members must be >= 1, got {min(limits)}")
    by_key: dict[str, list[int]] = {}
    for i, key in enumerate(keys):
        by_key.setdefault(key, []).append(i)
    groups: list[list[int]] = []
    for members in by_key.values():
        if order is not None:
            members = sorted(members, key=lambda i: (order[i], i))
        limit = limits[members[0]]
        n_chunks = -(-len(members) // limit)
        size, extra = divmod(len(members), n_chunks)
        start = 0
        for c in range(n_chunks):
            end = start + size + (c < extra)
            groups.append(members[start:end])
            start = end
    return sorted(groups, key=lambda g: min(g))


@functools.cache
def _cuda_devices() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def on_cuda(device: str) -> bool:
    """Does a job with this ``device`` setting train on a GPU (``auto`` asks torch)?"""
    return device.startswith("cuda") or (device == "auto" and _cuda_devices() > 0)


# ---------------------------------------------------------------------------------------------------------------
# the group process side: what run_job does for one job, done for every member of a group


@dataclass
class GroupSpec:
    """Everything a group process needs (pickled with cloudpickle, like the joblib and submitit launchers do)."""

    index: int
    configs: list[DictConfig]  # full job configs (with hydra), hydra.runtime.output_dir set
    job_nums: list[int]
    hydra_context: HydraContext
    task_function: TaskFunction
    singleton_state: dict[Any, Any]
    # submitit task: hydra.job.id = submitit's job id, and submitit's timeout/preemption signal stops the members
    job_id_from_submitit: bool = False

    @property
    def run_dirs(self) -> list[Path]:
        return [Path(str(c.hydra.runtime.output_dir)) for c in self.configs]


def _save_job_files(config: DictConfig) -> None:
    """The three files run_job writes to <output dir>/<hydra.output_subdir> (same content, same formatting)."""
    from hydra.core.utils import _save_config

    if config.hydra.output_subdir is None:
        return
    hydra_output = Path(str(config.hydra.runtime.output_dir)) / str(config.hydra.output_subdir)
    task_cfg = task_config(config)
    hydra_cfg = copy.deepcopy(HydraConfig.instance().cfg)
    _save_config(task_cfg, "config.yaml", hydra_output)
    _save_config(hydra_cfg, "hydra.yaml", hydra_output)
    _save_config(config.hydra.overrides.task, "overrides.yaml", hydra_output)


def _configure_group_logging(configs: list[DictConfig]) -> None:
    """Hydra's job logging for a group: the first member's config, plus every other member's log file
    (``<run dir>/<job name>.log``) as an extra root handler, so each run dir keeps its log."""
    first = configs[0].hydra
    conf = OmegaConf.to_container(first.job_logging, resolve=True) if first.job_logging is not None else None
    if not isinstance(conf, dict) or conf.get("root") is None or not conf.get("handlers"):
        configure_log(first.job_logging, first.verbose)
        return
    root_handlers = list(conf["root"].get("handlers") or [])
    for i, cfg in enumerate(configs[1:], start=1):
        other = OmegaConf.to_container(cfg.hydra.job_logging, resolve=True) or {}
        for name, handler in (other.get("handlers") or {}).items():
            if "filename" in handler and name in ((other.get("root") or {}).get("handlers") or []):
                conf["handlers"][f"{name}_member{i}"] = handler
                root_handlers.append(f"{name}_member{i}")
    conf["root"]["handlers"] = root_handlers
    configure_log(OmegaConf.create(conf), first.verbose)


def status_from_run_dir(run_dir: Path, before: tuple[int, int] | None, not_run: str) -> str:
    """A member's status when run_group did not return one (interrupted or crashed group): what its run.json says
    if it was written since ``before`` (its stamp when the group started), else ``not_run`` (or 'skipped' for a
    completed run left untouched)."""
    from esper_exp.tracking import read_run_json

    info = read_run_json(run_dir)
    if info is None:
        return not_run
    status = info.get("status")
    if file_stamp(run_dir / "run.json") == before:
        return "skipped" if status == "completed" else not_run
    if status in ("completed", "failed", "interrupted"):
        return status
    return not_run  # 'running': the process died before writing a status


def _record_crash(group: _Group) -> None:
    """A group process that died without a result: each member that never wrote a run.json gets one saying failed
    and why (tracking.record_not_started), so the sweep summary and esper-report count it instead of missing it."""
    from esper_exp.tracking import record_not_started

    hint = group.log_hint.replace("its output is above", "its output is in the sweep command's output")
    reason = f"its group process died before the run started{hint}"
    for cfg, run_dir in zip(group.spec.configs, group.spec.run_dirs):
        try:
            record_not_started(run_dir, OmegaConf.to_container(task_config(cfg), resolve=True), reason)
        except Exception as e:  # noqa: BLE001 - an unresolvable config or an unwritable dir: the log line stays
            log.warning(f"{run_dir}: could not record the crash in run.json ({e})")


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _stop_on(signum: int) -> None:
    """Make ``signum`` (submitit's timeout/preemption signal) stop the members gracefully, like SIGTERM:
    run_group's handler checkpoints every member. (submitit's own handler would raise inside the update.)"""

    def handler(_signum, _frame) -> None:
        print(f"{signal.Signals(_signum).name}: time limit or preemption: stopping the group (checkpoints)",
              file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGTERM)

    signal.signal(signum, handler)


def run_group_spec(spec: GroupSpec) -> dict[str, Any]:
    """Run one group in this process; returns {'statuses': [...], 'interrupted': signal name or None, 'error': ...}.

    Per member, as Hydra's run_job: set HydraConfig, make the output dir, write .hydra/{config,hydra,overrides}.yaml,
    job logging, env_set, callbacks' on_job_start / on_job_end. Then esper_exp.train.run_group trains the group.
    """
    # until run_group installs its own handler (and between members), SIGTERM interrupts like Ctrl-C: the member
    # being set up records 'interrupted' instead of the process dying (or, under submitit, ignoring it)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    before = [file_stamp(d / "run.json") for d in spec.run_dirs]
    statuses: list[str] | None = None
    interrupted = error = None
    try:
        statuses = _run_group_members(spec)
    except KeyboardInterrupt as e:
        interrupted = str(e) or "SIGINT"
    except Exception as e:
        error = f"{type(e).__name__}: {e}"
        traceback.print_exc()
    if statuses is None:
        not_run = "interrupted" if interrupted else "failed"
        statuses = [status_from_run_dir(d, b, not_run) for d, b in zip(spec.run_dirs, before)]
    return {"statuses": statuses, "interrupted": interrupted, "error": error}


def _run_group_members(spec: GroupSpec) -> list[str]:
    setup_globals()
    Singleton.set_state(spec.singleton_state)
    from esper_exp.train import run_group  # registers esper's resolvers

    configs = spec.configs
    if spec.job_id_from_submitit:
        import submitit

        _stop_on(submitit.JobEnvironment._usr_sig())
        job_id = submitit.JobEnvironment().job_id
        for cfg in configs:  # as hydra's submitit launcher: the job id is submitit's (shared by the group)
            with read_write(cfg.hydra.job), open_dict(cfg.hydra.job):
                cfg.hydra.job.id = job_id
    if any(cfg.hydra.job.chdir for cfg in configs):
        print("warning: hydra.job.chdir=true is ignored by the grouped launcher (a group has one working dir)",
              file=sys.stderr, flush=True)
    jobs = []
    for cfg, run_dir in zip(configs, spec.run_dirs):
        HydraConfig.instance().set_config(cfg)
        run_dir.mkdir(parents=True, exist_ok=True)
        _save_job_files(cfg)
        task_cfg = task_config(cfg)
        try:  # resolve ${hydra:...} and friends against this member's own Hydra config
            OmegaConf.resolve(task_cfg)
        except Exception:
            pass  # left unresolved: run() reports the error as the member's config error
        jobs.append((task_cfg, run_dir))
    HydraConfig.instance().set_config(configs[0])
    _configure_group_logging(configs)

    callbacks = spec.hydra_context.callbacks
    env_set = {k: str(v) for k, v in configs[0].hydra.job.env_set.items()}
    old_env = {k: os.environ.get(k) for k in env_set}
    os.environ.update(env_set)
    try:
        for cfg in configs:
            callbacks.on_job_start(config=cfg, task_function=spec.task_function)
        statuses = list(run_group(jobs, job_nums=spec.job_nums))
        if len(statuses) != len(jobs):
            raise RuntimeError(f"run_group returned {len(statuses)} statuses for {len(jobs)} members")
        task_name = JobRuntime.instance().get("name")
        for cfg, status in zip(configs, statuses):
            ret = _job_return(cfg, status)
            ret.task_name = task_name
            HydraConfig.instance().set_config(cfg)
            callbacks.on_job_end(config=cfg, job_return=ret)
    finally:
        for k, v in old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        for handler in logging.getLogger().handlers:
            handler.flush()
    return statuses


class GroupTask:
    """The callable a submitit task runs: one group."""

    def __init__(self, spec: GroupSpec) -> None:
        self.spec = spec

    def __call__(self) -> dict[str, Any]:
        return run_group_spec(self.spec)


def _die_with_parent(parent_pid: int) -> None:
    """Linux: SIGTERM this group process when the launching process dies (even by SIGKILL), so the members
    checkpoint instead of training on as orphans."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid:  # the parent died before prctl
        os.kill(os.getpid(), signal.SIGTERM)


def worker_main(argv: list[str]) -> int:
    """``python -m esper_exp.launch SPEC RESULT PARENT_PID``: a local group process."""
    import cloudpickle

    spec_path, result_path, parent_pid = argv
    _die_with_parent(int(parent_pid))
    with open(spec_path, "rb") as f:
        spec: GroupSpec = cloudpickle.load(f)
    result = run_group_spec(spec)
    tmp = Path(result_path).with_suffix(".tmp")
    tmp.write_text(json.dumps(result))
    tmp.replace(result_path)
    return 0


# ---------------------------------------------------------------------------------------------------------------
# the submitting side


def _job_return(config: DictConfig, status: str) -> JobReturn:
    """What run_job returns for a job whose task function returned ``status`` (esper's hydra_main returns it)."""
    ret = JobReturn()
    ret.cfg = task_config(config)
    ret.hydra_cfg = OmegaConf.masked_copy(config, "hydra")
    ret.overrides = OmegaConf.to_container(config.hydra.overrides.task)
    ret.working_dir = os.getcwd()
    ret.status = JobStatus.COMPLETED
    ret.return_value = status
    return ret


class _StopSignals(SignalScope):
    """In the submitting process: record SIGINT/SIGTERM and hand each one to ``forward`` (never raise in between)."""

    def __init__(self, forward: Callable[[int, int], None]) -> None:
        super().__init__()
        self.forward = forward
        self.received: list[int] = []

    def _handle(self, signum, frame) -> None:
        self.received.append(signum)
        name = signal.Signals(signum).name
        if len(self.received) == 1:
            print(f"{name}: stopping the running groups (each member checkpoints); no new group starts. "
                  "Ctrl-C again to abort at once", file=sys.stderr, flush=True)
        else:
            print(f"{name} again: aborting the running groups", file=sys.stderr, flush=True)
        self.forward(signum, len(self.received))

    @property
    def name(self) -> str | None:
        return signal.Signals(self.received[0]).name if self.received else None


@dataclass
class _Group:
    spec: GroupSpec
    before: list[tuple[int, int] | None] = field(default_factory=list)
    result: dict[str, Any] | None = None
    handle: Any = None  # subprocess.Popen or submitit job
    signalled: bool = False
    log_hint: str = ""


class GroupedLaunch:
    """The launcher's logic; ``hydra_plugins.esper_grouped_launcher.GroupedLauncher`` (Hydra only instantiates
    launcher classes defined under ``hydra_plugins``) delegates to it."""

    def __init__(self, backend: str = "local", n_jobs: int = -1, max_members: Any = "auto", mix_cells: Any = "auto",
                 **submitit_params: Any):
        if backend not in BACKENDS:
            raise ValueError(f"hydra.launcher.backend={backend!r} is not allowed; allowed: {', '.join(BACKENDS)}")
        if max_members != "auto" and (isinstance(max_members, bool) or not str(max_members).isdigit()
                                      or int(max_members) < 1):
            raise ValueError(f"hydra.launcher.max_members={max_members!r} is not allowed; allowed: auto or an "
                             "integer >= 1")
        if mix_cells not in ("auto", True, False):
            raise ValueError(f"hydra.launcher.mix_cells={mix_cells!r} is not allowed; allowed: auto, true, false")
        self.backend = backend
        self.n_jobs = int(n_jobs)
        self.max_members = max_members if max_members == "auto" else int(max_members)
        self.mix_cells = mix_cells
        self.submitit_params = {k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
                                for k, v in submitit_params.items()}
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.task_function = task_function

    # -- composing and grouping ---------------------------------------------------------------------------------

    def compose(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[DictConfig]:
        """Each job's config as BasicLauncher composes it, with hydra.runtime.output_dir set as run_job sets it.
        (Under esper-train a copy of the config precheck composed for the job: esper_exp/composing.py.)"""
        assert self.hydra_context is not None and self.config is not None
        configs = []
        saved = HydraConfig.instance().cfg
        try:
            for i, overrides in enumerate(job_overrides):
                idx = initial_job_idx + i
                cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
                with open_dict(cfg):
                    cfg.hydra.job.id = f"{cfg.hydra.job.name}_{idx}"  # as the joblib launcher
                    cfg.hydra.job.num = idx
                HydraConfig.instance().set_config(cfg)
                output_dir = os.path.join(str(OmegaConf.select(cfg, "hydra.sweep.dir")),
                                          str(OmegaConf.select(cfg, "hydra.sweep.subdir")))
                with read_write(cfg.hydra.runtime):
                    with open_dict(cfg.hydra.runtime):
                        cfg.hydra.runtime.output_dir = os.path.abspath(output_dir)
                configs.append(cfg)
        finally:
            HydraConfig.instance().cfg = saved
        return configs

    def group_keys(self, configs: list[DictConfig]) -> tuple[list[str], list[int], list[Any]]:
        """Per job: its group key, its group's size limit and its sort key inside the group (see form_groups).

        ``mix_cells`` (auto: for jobs on CUDA) lets the GELU x precision cells of otherwise equal jobs share a group
        (esper_exp.train.group_key), members sorted by cell; ``max_members`` auto: 10 on CPU, and on CUDA every job
        of a key in one group per visible GPU (all members of a GPU in one process: several training processes on
        one GPU time-slice it, experiments/gpu_throughput)."""
        from esper_exp.train import group_key

        saved = HydraConfig.instance().cfg
        keys, on_gpu, order = [], [], []
        try:
            for i, cfg in enumerate(configs):
                HydraConfig.instance().set_config(cfg)
                try:
                    task = task_config(cfg)
                    cuda = on_cuda(str(task.device))
                    mix = self.mix_cells is True or (self.mix_cells == "auto" and cuda)
                    keys.append(group_key(task, mix_cells=mix))
                    # by precision first: a mixed group computes one segment per precision (esper_exp/numerics.py)
                    order.append((str(task.precision.name), str(task.model.gelu)) if mix else ())
                except Exception as e:  # unresolvable config: its own group; run_group reports the error
                    log.warning(f"job #{cfg.hydra.job.num}: cannot compute its group key ({e}); it runs alone")
                    keys.append(f"error-{i}")
                    order.append(())
                    cuda = False
                on_gpu.append(cuda)
        finally:
            HydraConfig.instance().cfg = saved
        if self.max_members != "auto":
            return keys, [self.max_members] * len(keys), order
        per_key = Counter(keys)
        gpus = max(1, _cuda_devices()) if any(on_gpu) else 1
        limits = [-(-per_key[k] // gpus) if cuda else 10 for k, cuda in zip(keys, on_gpu)]
        return keys, limits, order

    # -- launching ------------------------------------------------------------------------------------------------

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        setup_globals()
        assert self.config is not None and self.hydra_context is not None and self.task_function is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)

        configs = self.compose(job_overrides, initial_job_idx)
        keys, limits, order = self.group_keys(configs)
        members = form_groups(keys, limits, order)
        singleton_state = Singleton.get_state()
        groups = [_Group(GroupSpec(g, [configs[i] for i in idx], [int(configs[i].hydra.job.num) for i in idx],
                                   self.hydra_context, self.task_function, singleton_state,
                                   job_id_from_submitit=self.backend != "local"))
                  for g, idx in enumerate(members)]
        log.info(f"Grouped launcher ({self.backend}, n_jobs={self.n_jobs}, max_members={self.max_members}, "
                 f"mix_cells={self.mix_cells}): "
                 f"{len(configs)} jobs in {len(groups)} groups, sweep output dir: {sweep_dir}")
        for g, idx in enumerate(members):
            log.info(f"\tgroup {g}: " + ", ".join(f"#{initial_job_idx + i}" for i in idx))
            for i in idx:
                log.info(f"\t\t#{initial_job_idx + i} : {' '.join(filter_overrides(job_overrides[i]))}")
        for group in groups:
            group.before = [file_stamp(d / "run.json") for d in group.spec.run_dirs]

        runner = {"local": self._run_local, "submitit_local": self._run_submitit,
                  "submitit_slurm": self._run_submitit}[self.backend]
        stop = runner(groups, sweep_dir)

        if stop:  # every started group has stopped (its members checkpointed); the rest never started
            raise KeyboardInterrupt(stop)
        statuses: list[str] = ["failed"] * len(configs)
        for group, idx in zip(groups, members):
            result = group.result
            if result is None:  # the group process died without a result (killed, out of memory, ...)
                log.error(f"group {group.spec.index} ({', '.join(str(p) for p in group.spec.run_dirs)}) crashed"
                          f"{group.log_hint}; its unfinished members count as failed")
                result = {"statuses": [status_from_run_dir(d, b, "failed")
                                       for d, b in zip(group.spec.run_dirs, group.before)]}
                _record_crash(group)
            elif result.get("error"):
                log.error(f"group {group.spec.index} raised {result['error']}{group.log_hint}")
            elif result.get("interrupted"):
                log.warning(f"group {group.spec.index} was stopped by {result['interrupted']} (preempted or timed "
                            "out?); re-run the same command to resume it")
            for i, status in zip(idx, result["statuses"]):
                statuses[i] = status
        returns = []
        task_name = JobRuntime.instance().get("name")
        for cfg, status in zip(configs, statuses):
            ret = _job_return(cfg, status)
            ret.task_name = task_name
            returns.append(ret)
        return returns

    def _parallel(self, n_groups: int) -> int:
        n = self.n_jobs if self.n_jobs > 0 else (os.cpu_count() or 1)
        return max(1, min(n, n_groups))

    def _run_local(self, groups: list[_Group], sweep_dir: Path) -> str | None:
        """Fresh processes, ``n_jobs`` at a time, each in its own session (see the module docstring)."""
        import cloudpickle

        tmp = Path(tempfile.mkdtemp(prefix="esper-grouped-"))
        running: list[_Group] = []

        def forward(signum: int, count: int) -> None:
            for g in running:
                g.signalled = True
                try:
                    g.handle.send_signal(signum)
                except OSError:
                    pass

        pending = list(groups)
        try:
            with _StopSignals(forward) as stop:
                while pending or running:
                    while pending and len(running) < self._parallel(len(groups)) and not stop.received:
                        group = pending.pop(0)
                        spec_path = tmp / f"group-{group.spec.index}.pkl"
                        result_path = tmp / f"group-{group.spec.index}.json"
                        with open(spec_path, "wb") as f:
                            cloudpickle.dump(group.spec, f)
                        group.handle = subprocess.Popen(
                            [sys.executable, "-m", "esper_exp.launch", str(spec_path), str(result_path),
                             str(os.getpid())], env=self._group_env(group.spec), start_new_session=True)
                        running.append(group)
                        if stop.received and not group.signalled:  # a signal came in between Popen and append
                            group.handle.send_signal(stop.received[0])
                    if stop.received:
                        pending.clear()
                    time.sleep(POLL_S)
                    for group in [g for g in running if g.handle.poll() is not None]:
                        running.remove(group)
                        group.log_hint = (f" (process {group.handle.pid}, exit code {group.handle.returncode}; "
                                          "its output is above)")
                        result_path = tmp / f"group-{group.spec.index}.json"
                        if result_path.exists():
                            group.result = json.loads(result_path.read_text())
                return stop.name
        finally:
            for group in running:  # only on an exception in this loop: do not leave orphans
                group.handle.terminate()
            for p in tmp.iterdir():
                p.unlink()
            tmp.rmdir()

    def _group_env(self, spec: GroupSpec) -> dict[str, str]:
        """torch_threads for the group process's thread pools too (torch also gets set_num_threads per run)."""
        env = dict(os.environ)
        threads = int(OmegaConf.select(spec.configs[0], "torch_threads", default=0) or 0)
        if threads > 0:
            for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
                env.setdefault(var, str(threads))
        return env

    def _executor(self, sweep_dir: Path, n_groups: int, threads: int):
        import submitit

        cluster = "slurm" if self.backend == "submitit_slurm" else "local"
        params = dict(self.submitit_params)
        unknown = set(params) - {"submitit_folder", "max_num_timeout", *SUBMITIT_BASE_KEYS, *SLURM_KEYS}
        if unknown:
            raise ValueError(f"unknown hydra.launcher keys for the grouped launcher: {sorted(unknown)}")
        folder = params.pop("submitit_folder", None) or str(sweep_dir / ".submitit" / "%j")
        max_num_timeout = params.pop("max_num_timeout", 0)
        init = {"slurm_max_num_timeout": max_num_timeout} if cluster == "slurm" else {}
        executor = submitit.AutoExecutor(folder=folder, cluster=cluster, **init)
        update = {k: params[k] for k in SUBMITIT_BASE_KEYS if k in params}
        if update.get("cpus_per_task") is None and threads > 0:
            update["cpus_per_task"] = threads
        if update.get("cpus_per_task") is None:
            update.pop("cpus_per_task", None)
        update.update(tasks_per_node=1, nodes=1)  # one task per group: more tasks would train the group twice
        if cluster == "slurm":
            update.update({f"slurm_{k}": params[k] for k in SLURM_KEYS if k in params})
            update["slurm_array_parallelism"] = self._parallel(n_groups)
        executor.update_parameters(**update)
        return executor

    def _run_submitit(self, groups: list[_Group], sweep_dir: Path) -> str | None:
        """One submitit task per group. Slurm: one job array (``n_jobs`` = array parallelism); local: a pool."""
        threads = int(OmegaConf.select(groups[0].spec.configs[0], "torch_threads", default=0) or 0)
        executor = self._executor(sweep_dir, len(groups), threads)
        slurm = self.backend == "submitit_slurm"
        started: list[_Group] = []

        def forward(signum: int, count: int) -> None:
            live = [g.handle for g in started if g.result is None and not g.handle.done()]
            if not live:
                return
            if slurm:
                ids = [j.job_id for j in live]
                if count == 1:  # running tasks checkpoint and stop; pending ones never start
                    subprocess.run(["scancel", "--signal=TERM", "--state=RUNNING", *ids], check=False)
                    subprocess.run(["scancel", "--state=PENDING", *ids], check=False)
                else:
                    subprocess.run(["scancel", *ids], check=False)
            else:
                for job in live:  # the local controller forwards SIGTERM to its task; SIGINT would kill it
                    proc = getattr(job, "_process", None)
                    if proc is None:
                        continue
                    if count == 1:
                        proc.send_signal(signal.SIGTERM)
                    else:
                        job.cancel(check=False)

        with _StopSignals(forward) as stop:
            if slurm:
                with executor.batch():
                    for group in groups:
                        group.handle = executor.submit(GroupTask(group.spec))
                started.extend(groups)
                for group in groups:
                    group.log_hint = f" (submitit job {group.handle.job_id}; logs in {group.handle.paths.folder})"
            pending = [] if slurm else list(groups)
            running = list(started)
            while pending or running:
                while pending and len(running) < self._parallel(len(groups)) and not stop.received:
                    group = pending.pop(0)
                    group.handle = executor.submit(GroupTask(group.spec))
                    group.log_hint = f" (submitit job {group.handle.job_id}; logs in {group.handle.paths.folder})"
                    started.append(group)
                    running.append(group)
                if stop.received:
                    pending.clear()
                time.sleep(POLL_S if not slurm else 5.0)
                for group in [g for g in running if g.handle.done()]:
                    running.remove(group)
                    try:
                        group.result = group.handle.result()
                    except Exception as e:
                        log.error(f"group {group.spec.index}: {type(e).__name__}: {str(e)[-2000:]}")
            return stop.name


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:]))
