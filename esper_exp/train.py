"""``esper-train``: the Hydra entry point. One Hydra job = one PPO run in its own run directory.

config (compose + validate) -> PPO (envs, policy) -> loop -> Tracker (run dir) ; see DESIGN.md section 2.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import threading
import time
import traceback
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from esper_exp import checkpoint
from esper_exp.composing import task_config
from esper_exp.config import ConfigError, register_configs, validate
from esper_exp.runformat import RunLock, RunLocked, stalled
from esper_exp.signals import SignalScope
from esper_exp.tracking import Tracker, config_hash, print_err, read_run_json

# esper_exp/configs: in a checkout a symlink to the top-level configs/, in an installed wheel a copy of it
CONFIG_DIR = str(Path(__file__).parent / "configs")

register_configs()
# run/sweep directory suffix for what changes a cell's numerics beyond GELU x precision
OmegaConf.register_new_resolver(
    "esper_suffix", lambda compiled, perturb: ("-compiled" if compiled else "") +
    ("" if perturb == "none" else f"-perturb-{perturb}"), replace=True)

_RESULTS: list[str] = []  # statuses of the jobs run in this process (read by main for the exit code)


class StopRequest(SignalScope):
    """SIGTERM (a cluster preempting the job) or a first Ctrl-C: finish the current update, checkpoint, stop.

    A second Ctrl-C raises KeyboardInterrupt at once (the last periodic checkpoint stays)."""

    def __init__(self) -> None:
        super().__init__()
        self.signal: str | None = None

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = name
        print_err(f"{name}: stopping after this update and writing a checkpoint (Ctrl-C again to abort)")


def _archive_previous_attempt(run_dir: Path) -> None:
    """Move a failed/interrupted attempt's files to attempts/<n>/ so nothing already written is lost."""
    names = ("run.json", "metrics.jsonl", "episodes.jsonl", "probe.jsonl", "snapshots.jsonl", "drift",
             "traceback.txt", "checkpoints", "wandb")
    files = [p for p in run_dir.iterdir() if p.name in names]
    if not files:
        return
    dest = run_dir / "attempts" / str(len(list((run_dir / "attempts").glob("*"))) if (run_dir / "attempts").exists() else 0)
    dest.mkdir(parents=True)
    for p in files:
        shutil.move(str(p), dest / p.name)


def _resume_state(run_dir: Path, previous: dict | None, config: dict) -> dict | None:
    """The checkpoint to continue from: an interrupted (or hard-killed: still 'running') run of this config."""
    if not previous or previous.get("status") not in ("interrupted", "running"):
        return None
    if previous.get("config_hash") != config_hash(config):
        return None
    found = checkpoint.load_latest(run_dir / "checkpoints", warn=print_err)
    if found is None:
        return None
    state, path = found
    print(f"resuming {run_dir} from {path.name} (update {state['ppo']['update_idx']})", flush=True)
    return state


GROUP_EXCLUDE = ("seed", "tracking", "sweep_name")  # what members of one group may differ in
CELL_KEYS = (("model", "gelu"), ("precision", "name"))  # and, in a mixed group, these (the GELU x precision cell)


def mixable(cfg: DictConfig) -> bool:
    """Can this job train in a mixed group (members of several GELU x precision cells in one process)? Not with
    model.compile or gradient checkpointing (their forward is not the segmented one) nor with the drift
    instruments (the applied-update probe compares one cell's numerics with another's; the on-policy snapshots
    record whole env steps, not a pipelined rollout's parts)."""
    return (not cfg.model.compile and not cfg.model.checkpointing and not cfg.drift.probe_every
            and not cfg.drift.snapshot_every)


def group_key(cfg: DictConfig, mix_cells: bool = False) -> str:
    """Jobs with equal keys can train as members of one group (one process, stacked weights): their configs
    differ only in the seed and bookkeeping, and with ``mix_cells`` (for :func:`mixable` jobs) in the GELU x
    precision cell too. Used by the grouped launcher to form groups."""
    import hashlib
    import json

    config = OmegaConf.to_container(cfg, resolve=True)
    ident = {k: v for k, v in config.items() if k not in GROUP_EXCLUDE}
    if mix_cells and mixable(cfg):
        for section, key in CELL_KEYS:
            ident[section] = {k: v for k, v in ident[section].items() if k != key}
        ident["mixed"] = True  # a mixable job never shares a key with an unmixed one
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


_PRELOCKED: dict[Path, RunLock] = {}  # run dirs this process locked in precheck(), before Hydra wrote anything
# the sweep directory of this multirun command, locked in precheck() before Hydra writes multirun.yaml there and held
# by this (the submitting) process until main() ends; the jobs (and group processes) lock their own run dirs
_SWEEP_LOCK: RunLock | None = None


def lock_run_dir(run_dir: Path, what: str = "run directory") -> RunLock:
    """Create ``run_dir`` and take its exclusive lock (one owner per run directory; see runformat.RunLock).
    ConfigError (one line) when another live process holds it or the directory cannot be created or locked. A lock
    this process already took in precheck() is handed over. ``what`` names the directory in messages."""
    held = _PRELOCKED.pop(Path(run_dir).resolve(), None)
    if held is not None:
        return held
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        lock = RunLock(run_dir, what).acquire()
    except RunLocked as e:
        raise ConfigError(str(e)) from None
    except OSError as e:
        raise ConfigError(f"cannot use {what} {run_dir}: {e.strerror or e} "
                          f"({e.filename or run_dir}); choose another output directory") from None
    if lock.taken_over:
        print_err(f"note: {run_dir}: took over the lock left by {lock.taken_over}, which died without releasing it")
    return lock


class _Member:
    """One run of a group: its config, run directory, tracker and episode window."""

    def __init__(self, cfg: DictConfig, run_dir: Path):
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.config = OmegaConf.to_container(cfg, resolve=True)
        self.resume: dict | None = None
        self.tracker: Tracker | None = None
        self.status: str | None = None
        self.window = None
        self.lock: RunLock | None = None
        self.stalled_noted = False  # train.log says once per attempt that the fp16 scaler skipped a whole update

    def accept(self) -> str | None:
        """Validate and look at the run directory: None to train (fresh or resumed), else 'skipped'.
        Raises ConfigError for a bad config or a completed run of another config in the directory."""
        validate(self.cfg)
        self.lock = lock_run_dir(self.run_dir)  # one owner: before anything in the directory is read or written
        try:
            previous = read_run_json(self.run_dir)
            if previous and previous.get("status") == "completed":
                if previous.get("config_hash") == config_hash(self.config):
                    print(f"skipped: {self.run_dir} already holds a completed run of this config", flush=True)
                    self.release()
                    return "skipped"
                raise ConfigError(f"run directory {self.run_dir} already holds a completed run of a different config "
                                  f"(hash {previous.get('config_hash')}); refusing to overwrite it: "
                                  "choose another directory")
            self.resume = _resume_state(self.run_dir, previous, self.config)
            if previous and self.resume is None:
                if previous.get("status") in ("interrupted", "running") \
                        and previous.get("config_hash") != config_hash(self.config):
                    print_err(f"note: {self.run_dir} held an unfinished run of another config (hash "
                              f"{previous.get('config_hash')}); it is kept in attempts/ and this run starts over")
                _archive_previous_attempt(self.run_dir)
        except BaseException:
            self.release()
            raise
        return None

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None


def run(cfg: DictConfig, run_dir: Path, job_num: int | None = None) -> str:
    """Run one training job in ``run_dir`` (a group of one); returns its final status (or 'skipped').
    Raises ConfigError for a bad config."""
    return run_group([(cfg, run_dir)], None if job_num is None else [job_num], strict=True)[0]


def run_group(jobs: list[tuple[DictConfig, Path]], job_nums: list[int] | None = None, strict: bool = False) -> list[str]:
    """Train a group of runs (configs equal up to ``group_key``) in this process, each in its own run directory with
    the single-run contract; returns each member's final status ('completed', 'failed', 'interrupted', 'skipped'
    or 'config_error'). Members already completed are skipped, interrupted ones resume from their checkpoints.

    A member whose config is bad is reported ('config_error', or ConfigError raised when ``strict``) and the others
    train. SIGTERM / a first Ctrl-C: every member finishes the current update, checkpoints and is marked
    interrupted, then KeyboardInterrupt is raised."""
    members = [_Member(cfg, Path(run_dir)) for cfg, run_dir in jobs]
    try:
        return _run_members(members, job_nums, strict)
    finally:
        for m in members:  # every member's lock is held from its acceptance to here
            m.release()


def _run_members(members: list[_Member], job_nums: list[int] | None, strict: bool) -> list[str]:
    statuses: list[str | None] = [None] * len(members)
    for i, m in enumerate(members):
        try:
            statuses[i] = m.accept()
        except ConfigError as e:
            if strict:
                raise
            print_err(f"error: {m.run_dir}: {e}")
            statuses[i] = "config_error"
    todo = [i for i, s in enumerate(statuses) if s is None]
    if todo:
        keys = {group_key(members[i].cfg, mix_cells=True) for i in todo}
        if len(keys) > 1:
            raise ValueError(f"run_group: the jobs' configs differ beyond seed/tracking and (for mixable jobs) GELU x "
                             f"precision ({len(keys)} group keys); form groups with esper_exp.train.group_key")
        try:
            _train_group([members[i] for i in todo], None if job_nums is None else job_nums[todo[0]])
        except ConfigError:
            if strict:
                raise
            for i in todo:
                statuses[i] = "config_error"
        finally:
            for i in todo:
                statuses[i] = statuses[i] or members[i].status
    return [s or "failed" for s in statuses]


def build_ppo(cfg: DictConfig, seeds: list[int], device, cells: list[tuple[str, str]] | None = None):
    """The parts of a group, built from its (shared) config: envs, policy (one member per seed), numerics, alpha
    schedules -> PPO. ``cells``: each member's (model.gelu, precision.name) in a mixed group (default: the config's
    for all). Returns (ppo, perturbations applied per member)."""
    import torch

    from esper_exp.blend import AlphaSchedule
    from esper_exp.config import PPOConfig
    from esper_exp.envs import GroupEnvs
    from esper_exp.numerics import MemberNumerics, Numerics, member_segments
    from esper_exp.policy import ActorCritic, obs_dim_of
    from esper_exp.ppo import PPO
    from esper_exp.probe import perturb

    e, mc = cfg.env, cfg.model
    p = PPOConfig(**OmegaConf.to_container(cfg.ppo, resolve=True))  # a plain dataclass: read in the hot loop
    cells = cells or [(mc.gelu, cfg.precision.name)] * len(seeds)
    per_member = tuple(Numerics(gelu, precision, device.type, perturb=cfg.drift.perturb == "persistent")
                       for gelu, precision in cells)
    numerics = per_member[0] if len(set(per_member)) == 1 else MemberNumerics(per_member)
    segments = [(a, b) for a, b, _ in member_segments(numerics, len(seeds))]  # a mixed group: one per precision
    parts = env_parts(segments)
    envs = GroupEnvs(e.id, seeds, e.num_envs, p.gamma, clip_action=e.clip_action, normalize_obs=e.normalize_obs,
                     normalize_reward=e.normalize_reward, clip_obs=e.clip_obs, clip_reward=e.clip_reward,
                     max_episode_steps=e.max_episode_steps, kwargs=dict(e.kwargs),
                     workers=int(cfg.get("env_workers", 0)), spin_us=int(cfg.get("env_spin_us", 0)),
                     worker_spin_us=int(cfg.get("env_spin_us", 0)), parts=parts)
    generators = [torch.Generator().manual_seed(s) for s in seeds]  # initial weights: member k's own seed
    policy = ActorCritic(obs_dim_of(envs.single_observation_space), envs.single_action_space, generators,
                         width=mc.width, depth=mc.depth, blueprint=mc.blueprint, checkpointing=mc.checkpointing,
                         blend_cast=mc.blend_cast,
                         segments=[b - a for a, b in segments])
    perturbations = perturb(policy, cfg.drift.perturb, seeds)  # before .to(device): the same change on any device
    policy = policy.to(device)
    if mc.compile:
        for trunk in policy.trunks:
            trunk.compile()
    # a mixed group's segments on CUDA streams of their own: the same kernels, run side by side (ESPER_SEGMENT_STREAMS=0:
    # one stream, for A/B timing)
    policy.segment_streams = (device.type == "cuda" and len(segments) > 1
                              and os.environ.get("ESPER_SEGMENT_STREAMS", "1") != "0")
    ppo = PPO(envs, policy, numerics, [AlphaSchedule(**mc.alpha) for _ in seeds], p, seeds, device,
              cuda_graphs=use_cuda_graphs(cfg, device))
    return ppo, perturbations


ENV_PARTS = ("segments", "one")


def env_parts(segments: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """How a group's rollout is pipelined (esper_exp/ppo.py ``_rollout_steps``): ``segments`` (default) steps a
    mixed group's precision segments as separate parts, so one segment's envs step while another's actions are
    computed, at one step graph, env round trip and bookkeeping pass per part and step; ``one`` steps every member
    as one part (one graph with the segments on their own streams, one round trip). Set by the environment variable
    ESPER_ENV_PARTS, not a config key: a member's numbers do not depend on it (tests/test_cuda_graphs.py), only the
    speed does; run.json records ``env_parts`` (the number of parts)."""
    return segments if env_parts_setting() == "segments" else [(segments[0][0], segments[-1][1])]


def env_parts_setting() -> str:
    """ESPER_ENV_PARTS (default segments); ConfigError naming the bad value and the allowed ones."""
    how = os.environ.get("ESPER_ENV_PARTS", "segments")
    if how not in ENV_PARTS:
        raise ConfigError(f"ESPER_ENV_PARTS={how!r} is not allowed; allowed: {', '.join(ENV_PARTS)}")
    return how


def use_cuda_graphs(cfg: DictConfig, device) -> bool:
    """CUDA graphs for the rollout step, GAE and the minibatch update (esper_exp/ppo.py): on for CUDA, except with
    model.compile or model.checkpointing, or where the environment says ESPER_CUDA_GRAPHS=0 (the eager CUDA path).
    Not a config key (a new key would change every existing run's config hash); run.json records ``cuda_graphs``."""
    return (device.type == "cuda" and not cfg.model.compile and not cfg.model.checkpointing
            and os.environ.get("ESPER_CUDA_GRAPHS", "1") != "0")


def _train_group(members: list[_Member], job_num: int | None) -> None:
    from esper_exp.nonfinite import ENV_FILE, Tracer
    from esper_exp.ppo import EpisodeWindow
    from esper_exp.runtime import prepare, resolve_device

    cfg = members[0].cfg  # equal for every member up to seed and bookkeeping
    seeds = [int(m.cfg.seed) for m in members]
    try:
        device = resolve_device(cfg.device, job_num)
        tracer = Tracer.from_env()  # ESPER_NONFINITE_TRACE: a diagnostic, changes no recorded number
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if tracer is not None and cfg.drift.probe_every:
        raise ConfigError(f"{ENV_FILE} cannot be combined with drift.probe_every={cfg.drift.probe_every} (both hook "
                          "the minibatch step); allowed: drift.probe_every=0 or no trace")
    prepare(seeds[0], device, cfg.deterministic, cfg.torch_threads)
    names = [str(m.run_dir) for m in members]
    for k, m in enumerate(members):
        resume_at = None if m.resume is None else (m.resume["ppo"]["update_idx"], m.resume["ppo"]["global_step"])
        m.tracker = Tracker(m.run_dir, m.config, device, resume_at=resume_at,
                            group={"size": len(members), "member_index": k, "members": names})
        m.window = EpisodeWindow(100)
    ppo = None
    stop = StopRequest()  # from here on SIGTERM / Ctrl-C stop the group cleanly (also while it is being built)
    try:
        stop.__enter__()
        ppo, perturbations = build_ppo(cfg, seeds, device,
                                       [(m.cfg.model.gelu, m.cfg.precision.name) for m in members])
        for k, m in enumerate(members):
            if m.resume is not None:
                ppo.load_member_state(k, m.resume["ppo"])
                m.window.returns.extend(m.resume["episode_window"])
            if perturbations[k]:
                m.tracker.info["perturbation"] = perturbations[k]
            m.tracker.info["segment_streams"] = ppo.policy.segment_streams
            m.tracker.info["env_parts"] = len(ppo.envs.parts)
            m.tracker.info["cuda_graphs"] = ppo.cuda_graphs  # part of a CUDA run's identity (graphed Adam rounds apart)
            if tracer is not None:
                m.tracker.info["nonfinite_trace"] = tracer.path
        if tracer is not None:
            tracer.attach(ppo)
        _loop(members, ppo, cfg, device, stop)
    except KeyboardInterrupt as e:
        for m in members:
            if m.status is None:
                m.status = "interrupted"
                m.tracker.finish("interrupted", str(e) or "SIGINT")
        raise
    except Exception as e:
        reason = f"{type(e).__name__}: {e}"
        tb = traceback.format_exc()
        print_err(tb)
        for m in members:
            if m.status is None:
                m.status = "failed"
                (m.run_dir / "traceback.txt").write_text(tb)
                m.tracker.finish("failed", reason)
                print_err(f"run failed: {reason} (traceback in {m.run_dir / 'traceback.txt'})")
    finally:
        stop.__exit__()
        if ppo is not None:
            ppo.close()


def _loop(members: list[_Member], ppo, cfg: DictConfig, device, stop: StopRequest) -> None:
    """The training loop of a group: PPO updates until every member completed or failed (or a stop request)."""
    import numpy as np
    from tqdm import tqdm

    from esper_exp.probe import AppliedUpdateProbe, OnPolicySnapshots, probe_records

    K, d = len(members), cfg.drift

    def save_checkpoint(k: int) -> None:
        m = members[k]
        checkpoint.save(m.run_dir / "checkpoints", ppo.update_idx[k],
                        {"ppo": ppo.member_state(k), "episode_window": list(m.window.returns),
                         "config_hash": config_hash(m.config)})

    def complete(k: int) -> None:
        m = members[k]
        m.status = "completed"
        m.tracker.finish("completed")
        ppo.finish(k)
        print(f"{m.tracker.cell} seed {m.cfg.seed}: completed {ppo.global_step[k]} steps, mean return of the last "
              f"{len(m.window.returns)} episodes {m.window.mean():.1f}; run directory: {m.run_dir}", flush=True)

    def on_episode(k: int, global_step: int, ret: float, length: int, env_index: int) -> None:
        members[k].window.add(ret)
        members[k].tracker.log_episode(global_step, ret, length, env_index)

    # drift instrumentation (esper_exp/probe.py): snapshots on the member's own recent states; the initial policy's
    # snapshot is taken on its first rollout (the states it collected), so it is written after update 1
    snapshot = probe = None
    initial: dict[int, dict] = {}
    if d.snapshot_every:
        snapshot = OnPolicySnapshots(ppo, [int(m.cfg.seed) for m in members], d.probe_set_size, members[0].config)
        initial = {k: snapshot.capture(k) for k in range(K) if ppo.update_idx[k] == 0}
    if d.probe_every:
        probe = AppliedUpdateProbe(ppo)

    def take_snapshot(k: int, captured: dict | None = None) -> None:
        members[k].tracker.log_record("snapshots.jsonl", snapshot.record(k, members[k].run_dir, captured))

    for k in range(K):  # a member resumed from its final checkpoint has nothing left to do
        if ppo.done(k):
            complete(k)

    every = cfg.tracking.checkpoint_every
    show = cfg.tracking.progress == "on" or (cfg.tracking.progress == "auto" and sys.stderr.isatty())
    start, start_steps = time.perf_counter(), list(ppo.global_step)
    cells = sorted({m.tracker.cell for m in members})
    desc = (cells[0] if len(cells) == 1 else f"{len(cells)} cells") + (f" x{K} runs" if K > 1 else "")
    if stop.signal:  # asked to stop while the group was being built: nothing new to save
        raise KeyboardInterrupt(stop.signal)
    with tqdm(total=ppo.num_updates * ppo.batch_size * K, initial=sum(ppo.global_step),
                                     unit="step", unit_scale=True, disable=not show, desc=desc,
                                     dynamic_ncols=True) as bar:
        while any(ppo.live):
            due = [k for k in range(K) if ppo.live[k] and d.probe_every and (ppo.update_idx[k] + 1) % d.probe_every == 0]
            before, skipped_before = sum(ppo.global_step), list(ppo.nonfinite_grad_steps)
            if due:
                result, steps = probe.run_update(on_episode)
                for k, rec in probe_records(ppo, steps, [k for k in due if k in result.records]).items():
                    members[k].tracker.log_record("probe.jsonl", rec)
            else:
                result = ppo.run_update(on_episode)
            elapsed = time.perf_counter() - start
            for k, reason in result.failures.items():
                print_err(f"run failed: {members[k].run_dir}: {reason}")
                members[k].status = "failed"
                members[k].tracker.finish("failed", reason)
            for k, record in result.records.items():
                m = members[k]
                record["sps"] = (record["global_step"] - start_steps[k]) / elapsed
                record["return_mean"] = m.window.mean()
                m.tracker.log_update(record)
                if not m.stalled_noted and stalled(record["nonfinite_grad_steps"] - skipped_before[k], record["epochs"],
                                                   ppo.hp.num_minibatches):
                    m.stalled_noted = True
                    line = (f"stalled at update {record['update']}: the fp16 loss scaler skipped every minibatch step "
                            f"(non-finite gradients), loss scale now {record.get('loss_scale')} (at 0 it never "
                            f"recovers, as with torch's GradScaler); the run goes on with unchanged weights while "
                            f"this lasts")
                    m.tracker.note(line)
                    print_err(f"run stalled: {m.run_dir}: {line}")
                if snapshot is not None:
                    if k in initial:
                        take_snapshot(k, initial.pop(k))
                    if ppo.update_idx[k] % d.snapshot_every == 0:
                        take_snapshot(k)
                if stop.signal or (every and ppo.update_idx[k] % every == 0) or ppo.done(k):
                    save_checkpoint(k)
                if ppo.done(k):
                    complete(k)
            bar.update(sum(ppo.global_step) - before)
            means = [r["return_mean"] for r in result.records.values() if r["return_mean"] == r["return_mean"]]
            bar.set_postfix(sps=f"{(sum(ppo.global_step) - sum(start_steps)) / elapsed:.0f}",
                            ret=f"{np.mean(means) if means else float('nan'):.1f}", refresh=False)
            if stop.signal:
                raise KeyboardInterrupt(stop.signal)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def hydra_main(cfg: DictConfig) -> str:
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    try:
        status = run(cfg, run_dir, job_num=hc.job.num if hc.mode.name == "MULTIRUN" else None)
    except ConfigError as e:
        print_err(f"error: {e}")
        status = "config_error"
        if HydraConfig.get().mode.name == "RUN":
            sys.exit(2)
    _RESULTS.append(status)
    return status


# Everything a command can get wrong is checked here, before Hydra runs: Hydra creates the run directory, writes
# .hydra/ and opens train.log in run_job, before the task function, so a command refused inside the task would
# leave a trace (a rewritten .hydra/ of a finished run, an empty timestamped run dir) and an unwritable path would
# end in Hydra's own traceback. main() therefore composes every job the way Hydra will (same search path, same
# sweeper expansion), validates it and checks its run directory first; only then does Hydra start, and its sweeper
# and launcher get copies of these compositions instead of composing each job twice more (esper_exp/composing.py).
_INFO_FLAGS = ("-h", "--help", "--hydra-help", "--version", "-c", "--cfg", "-p", "--package", "--info", "-i",
               "--resolve", "-sc", "--shell-completion", "-cp", "--config-path", "--experimental-rerun")


def _parse_cli(argv: list[str]) -> tuple[bool, str | None, str, list[str]] | None:
    """(multirun, config_dir, config_name, overrides) of an esper-train command; None to leave it to Hydra."""
    multirun, config_dir, config_name, overrides = False, None, "train", []
    it = iter(argv)
    for a in it:
        if a in ("-m", "--multirun"):
            multirun = True
        elif a in ("-cd", "--config-dir", "-cn", "--config-name"):
            value = next(it, None)
            if value is None:
                return None
            if a in ("-cd", "--config-dir"):
                config_dir = value
            else:
                config_name = value
        elif a.startswith(("--config-dir=", "--config-name=")):
            key, value = a.split("=", 1)
            config_dir, config_name = (value, config_name) if key == "--config-dir" else (config_dir, value)
        elif a.startswith("-") or a.split("=", 1)[0] in _INFO_FLAGS:
            return None
        else:
            overrides.append(a)
    return multirun, config_dir, config_name, overrides


class _Refused(Exception):
    """One line for the user; exit 2."""


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).replace("\n", " ").split())


def _compose_jobs(multirun: bool, config_dir: str | None, config_name: str,
                  overrides: list[str]) -> tuple[DictConfig, list[tuple[list[str], DictConfig]]]:
    """The primary config (a multirun's: where its sweep dir is) and every job's override list and composed config
    (with its ``hydra`` node), composed as Hydra will compose them: the primary as ``Hydra.multirun`` (or ``run``)
    does, each job as the sweeper and the launcher do (``load_sweep_config`` of the primary config and the job's
    overrides, as BasicSweeper splits them). Under ``composing.compose_once`` (main) Hydra then reuses these."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_config_search_path
    from hydra.core.config_search_path import SearchPathQuery
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.utils import setup_globals
    from hydra.errors import MissingConfigException
    from hydra.types import RunMode

    setup_globals()
    search_path = create_config_search_path(CONFIG_DIR)
    if config_dir is not None:
        path = os.path.abspath(config_dir)  # as Hydra adds --config-dir (same search path: the same compositions)
        if not os.path.isdir(path):
            raise _Refused(f"--config-dir {config_dir}: not a directory")
        search_path.prepend(provider="command-line", path=f"file://{path}", anchor=SearchPathQuery(provider="schema"))
    GlobalHydra.instance().clear()
    hydra = Hydra.create_main_hydra2(task_name="train", config_search_path=search_path)
    mode = RunMode.MULTIRUN if multirun else RunMode.RUN
    try:
        try:  # as hydra.main: the config's hydra.mode (Hydra.get_mode), else the command's, added as an override
            configured = hydra.compose_config(config_name, overrides, run_mode=RunMode.MULTIRUN,
                                              validate_sweep_overrides=False).hydra.mode
        except Exception:  # noqa: BLE001 - as Hydra.get_mode: no mode
            configured = None
        if configured is None or (multirun and configured == RunMode.RUN):
            overrides = [*overrides, f"hydra.mode={mode.name}"]
        primary = hydra.compose_config(config_name, overrides, run_mode=mode, with_log_configuration=False)
        if not multirun:
            return primary, [(overrides, primary)]
        sweeper = str(primary.hydra.sweeper.get("_target_", ""))
        if not sweeper.endswith("BasicSweeper"):
            raise LookupError("not the basic sweeper")  # another sweeper expands jobs its own way
        # BasicSweeper.sweep: its params, then the task overrides (Hydra's multirun passes it hydra.overrides.task)
        params = [f"{k}={v}" for k, v in (primary.hydra.sweeper.get("params") or {}).items()]
        params += OmegaConf.to_container(primary.hydra.overrides.task, resolve=False)
        parsed = OverridesParser.create(config_loader=hydra.config_loader).parse_overrides(params)
        jobs = BasicSweeper.split_arguments(parsed, None)[0]
        return primary, [(job, hydra.config_loader.load_sweep_config(primary, job)) for job in jobs]
    except MissingConfigException as e:
        missing = str(getattr(e, "missing_cfg_file", "") or "")
        if "/" in missing and e.options:
            group, value = missing.rsplit("/", 1)
            options = sorted(o for o in e.options if not o.endswith("_schema"))  # ConfigStore schema nodes
            raise _Refused(f"{group}={value!r} is not allowed; allowed: {', '.join(options)} "
                           f"(the {group}/ configs of the config search path)") from None
        raise _Refused(_one_line(e)) from None
    finally:
        GlobalHydra.instance().clear()


def _check_run_dir(run_dir: Path, config: dict) -> str | None:
    """Why ``run_dir`` cannot take this run (one line), or None. Creates nothing that stays."""
    import tempfile

    from esper_exp.runformat import lock_holder

    if run_dir.exists() and not run_dir.is_dir():
        return f"cannot use run directory {run_dir}: a file is in the way"
    parent = run_dir
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        return f"cannot create run directory {run_dir}: {parent} is a file, not a directory"
    try:
        tempfile.TemporaryDirectory(dir=parent, prefix=".esper-check-").cleanup()
    except OSError as e:
        return f"cannot create run directory {run_dir}: {e.strerror or e} ({parent}); choose another output directory"
    if parent != run_dir:
        return None
    holder = lock_holder(run_dir)
    if holder:
        return f"run directory {run_dir} is in use by another process ({holder}); refusing to write to it"
    previous = read_run_json(run_dir)
    if previous and previous.get("status") == "completed" and previous.get("config_hash") != config_hash(config):
        return (f"run directory {run_dir} already holds a completed run of a different config (hash "
                f"{previous.get('config_hash')}, this config {config_hash(config)}); refusing to overwrite it: "
                "choose another directory")
    return None


def precheck(argv: list[str]) -> None:
    """Compose, validate and check the run directory of every job of this command before Hydra writes anything;
    a problem ends the command with one line and exit code 2, leaving no trace. Commands this cannot model
    (--cfg, --help, another sweeper, ...) are left to Hydra and to the checks in run().

    A multirun locks its sweep directory here, last (one sweep command per sweep dir; see _SWEEP_LOCK)."""
    global _SWEEP_LOCK
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from esper_exp.runformat import lock_holder

    parsed = _parse_cli(argv)
    if parsed is None:
        return
    multirun = parsed[0]
    try:
        try:
            env_parts_setting()  # the environment's ESPER_ENV_PARTS, before anything is composed or written
        except ConfigError as e:
            raise _Refused(str(e)) from None
        try:
            primary, jobs = _compose_jobs(*parsed)
        except (HydraException, OmegaConfBaseException) as e:
            raise _Refused(_one_line(e)) from None
        sweep_dir = None
        if multirun and "${now:" not in str(OmegaConf.to_container(primary.hydra.sweep, resolve=False).get("dir")):
            try:
                sweep_dir = Path(str(primary.hydra.sweep.dir))  # where Hydra writes multirun.yaml (and the summary)
            except OmegaConfBaseException:
                pass  # a directory only Hydra can resolve: not locked here
            holder = sweep_dir and lock_holder(sweep_dir)
            if holder:  # another sweep command runs there: say so, not which of its jobs' run dirs is in use
                raise _Refused(f"sweep directory {sweep_dir} is in use by another process ({holder}); "
                               "refusing to write to it")
        values: dict[str, set[str]] = {}
        for job, _ in jobs:
            for o in job:
                key, _, value = o.partition("=")
                values.setdefault(key, set()).add(value)
        varying = {k for k, v in values.items() if len(v) > 1}
        conflicts = []
        for num, (job, cfg) in enumerate(jobs):
            label = f"job #{num} ({' '.join(o for o in job if o.split('=', 1)[0] in varying)}): " if multirun else ""
            task = task_config(cfg)
            try:
                validate(task)
            except ConfigError as e:
                raise _Refused(f"{label}{e}" + ("; no job was started" if multirun else "")) from None
            try:
                h = cfg.hydra
                run_dir = Path(str(h.sweep.dir)) / str(h.sweep.subdir) if multirun else Path(str(h.run.dir))
            except OmegaConfBaseException:
                continue  # a directory only Hydra can resolve (e.g. ${hydra:job.num}): run() checks it
            problem = _check_run_dir(run_dir, OmegaConf.to_container(task, resolve=True))
            if problem and not multirun:
                raise _Refused(problem)
            if not multirun and "${now:" not in str(OmegaConf.to_container(h.run, resolve=False).get("dir")):
                # a fixed run dir (hydra.run.dir=...): lock it now, so that a second command started at the same
                # moment is refused before its Hydra writes .hydra/ there (a ${now:...} dir is this command's own)
                try:
                    _PRELOCKED[run_dir.resolve()] = lock_run_dir(run_dir)
                except ConfigError as e:
                    raise _Refused(str(e)) from None
            if problem:
                conflicts.append(problem)
        if conflicts:
            raise _Refused(f"{conflicts[0]}" + (f" (and {len(conflicts) - 1} more jobs)" if len(conflicts) > 1 else "")
                           + "; no job of the sweep was started")
        if sweep_dir is not None:
            # lock the sweep dir now, before Hydra writes multirun.yaml there: a second sweep command on it started
            # at the same moment is refused here and writes nothing (a ${now:...} sweep dir is this command's own)
            try:
                _SWEEP_LOCK = lock_run_dir(sweep_dir, "sweep directory")
            except ConfigError as e:
                raise _Refused(str(e)) from None
    except _Refused as e:
        print_err(f"error: {e}")
        sys.exit(2)
    except Exception:  # anything unexpected here: Hydra and run() still check everything
        return


def main() -> None:
    from esper_exp.composing import compose_once

    with compose_once():  # each config composed once: Hydra's sweeper and launcher reuse precheck's compositions
        _main()


def _main() -> None:
    precheck(sys.argv[1:])
    try:
        from esper_exp import sweep

        def sigterm(signum, frame) -> None:  # between jobs (no StopRequest installed): stop like a Ctrl-C
            raise KeyboardInterrupt("SIGTERM")

        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, sigterm)
        try:
            hydra_main()
        except KeyboardInterrupt as e:  # the run directory already says "interrupted"
            sweep.finish_interrupted(str(e) or "SIGINT")  # a multirun: its summary, with what had run
            print_err(f"interrupted ({e or 'SIGINT'}); re-run the same command to resume from the last checkpoint")
            sys.exit(143 if str(e) == "SIGTERM" else 130)
        # non-zero when any job failed or was interrupted (a single run, or any job of a sweep)
        if any(s in ("failed", "interrupted", "config_error") for s in _RESULTS) \
                or sweep.failed_jobs(sweep.LAST_SUMMARY):
            sys.exit(1)
    finally:
        if _SWEEP_LOCK is not None:  # released cleanly (emptied) after the summary: a re-run takes it without a note
            _SWEEP_LOCK.release()


if __name__ == "__main__":
    main()
