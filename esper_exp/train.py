"""``esper-train``: the Hydra entry point. One Hydra job = one PPO run in its own run directory.

config (compose + validate) -> PPO (envs, policy) -> loop -> Tracker (run dir) ; see DESIGN.md section 2.
"""

from __future__ import annotations

import re
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
from esper_exp.config import ConfigError, register_configs, validate
from esper_exp.tracking import Tracker, config_hash, print_err, read_run_json

# esper_exp/configs: in a checkout a symlink to the top-level configs/, in an installed wheel a copy of it
CONFIG_DIR = str(Path(__file__).parent / "configs")
GROUPS = ("env", "model", "precision", "ppo", "tracking", "experiment")

register_configs()
# run/sweep directory suffix for what changes a cell's numerics beyond GELU x precision
OmegaConf.register_new_resolver(
    "esper_suffix", lambda compiled, perturb: ("-compiled" if compiled else "") +
    ("" if perturb == "none" else f"-perturb-{perturb}"), replace=True)

_RESULTS: list[str] = []  # statuses of the jobs run in this process (read by main for the exit code)


class StopRequest:
    """SIGTERM (a cluster preempting the job) or a first Ctrl-C: finish the current update, checkpoint, stop.

    A second Ctrl-C raises KeyboardInterrupt at once (the last periodic checkpoint stays)."""

    def __init__(self) -> None:
        self.signal: str | None = None
        self._old: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = name
        print_err(f"{name}: stopping after this update and writing a checkpoint (Ctrl-C again to abort)")

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def _archive_previous_attempt(run_dir: Path) -> None:
    """Move a failed/interrupted attempt's files to attempts/<n>/ so nothing already written is lost."""
    names = ("run.json", "metrics.jsonl", "episodes.jsonl", "probe.jsonl", "snapshots.jsonl", "traceback.txt",
             "checkpoints", "wandb")
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


def run(cfg: DictConfig, run_dir: Path, job_num: int | None = None) -> str:
    """Run one training job in ``run_dir``; returns its final status (or 'skipped')."""
    from tqdm import tqdm

    from esper_exp.ppo import PPO, EpisodeWindow, NonFiniteError
    from esper_exp.probe import Snapshotter
    from esper_exp.runtime import prepare, resolve_device

    validate(cfg)
    config = OmegaConf.to_container(cfg, resolve=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    previous = read_run_json(run_dir)
    if previous and previous.get("status") == "completed":
        if previous.get("config_hash") == config_hash(config):
            print(f"skipped: {run_dir} already holds a completed run of this config", flush=True)
            return "skipped"
        raise ConfigError(f"run directory {run_dir} already holds a completed run of a different config "
                          f"(hash {previous.get('config_hash')}); refusing to overwrite it: choose another directory")
    resume = _resume_state(run_dir, previous, config)
    if previous and resume is None:
        _archive_previous_attempt(run_dir)

    try:
        device = resolve_device(cfg.device, job_num)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    prepare(cfg.seed, device, cfg.deterministic, cfg.torch_threads)
    resume_at = None if resume is None else (resume["ppo"]["update_idx"], resume["ppo"]["global_step"])
    tracker = Tracker(run_dir, config, device, resume_at=resume_at)
    ppo = None
    status, reason = "failed", None
    try:
        ppo = PPO(cfg, device)
        window = EpisodeWindow(100)
        if resume is not None:
            ppo.load_state_dict(resume["ppo"])
            window.returns.extend(resume["episode_window"])

        def on_episode(global_step: int, ret: float, length: int, env_index: int) -> None:
            window.add(ret)
            tracker.log_episode(global_step, ret, length, env_index)

        def save_checkpoint() -> None:
            checkpoint.save(run_dir / "checkpoints", ppo.update_idx,
                            {"ppo": ppo.state_dict(), "episode_window": list(window.returns),
                             "config_hash": config_hash(config)})

        snapshot = None
        if cfg.drift.snapshot_every:
            snapshot = Snapshotter(ppo, cfg.drift.probe_set_size)
            if ppo.update_idx == 0:
                tracker.log_record("snapshots.jsonl", snapshot(ppo))  # the initial policy
        if ppo.perturbation:
            tracker.info["perturbation"] = ppo.perturbation

        def on_probe(record: dict) -> None:
            tracker.log_record("probe.jsonl", record)

        every = cfg.tracking.checkpoint_every
        show = cfg.tracking.progress == "on" or (cfg.tracking.progress == "auto" and sys.stderr.isatty())
        start, start_step = time.perf_counter(), ppo.global_step
        with StopRequest() as stop, tqdm(total=ppo.num_updates * ppo.batch_size, initial=ppo.global_step, unit="step",
                                         unit_scale=True, disable=not show, desc=tracker.cell, dynamic_ncols=True) as bar:
            while ppo.update_idx < ppo.num_updates:
                record = ppo.run_update(on_episode, on_probe)
                record["sps"] = (record["global_step"] - start_step) / (time.perf_counter() - start)
                record["return_mean"] = window.mean()
                tracker.log_update(record)
                if snapshot is not None and ppo.update_idx % cfg.drift.snapshot_every == 0:
                    tracker.log_record("snapshots.jsonl", snapshot(ppo))
                bar.update(ppo.batch_size)
                bar.set_postfix(sps=f"{record['sps']:.0f}", ret=f"{record['return_mean']:.1f}", refresh=False)
                if stop.signal or (every and ppo.update_idx % every == 0) or ppo.update_idx == ppo.num_updates:
                    save_checkpoint()
                if stop.signal:
                    raise KeyboardInterrupt(stop.signal)
        status = "completed"
    except NonFiniteError as e:
        reason = str(e)
        print_err(f"run failed: {reason}")
    except KeyboardInterrupt as e:
        status, reason = "interrupted", (str(e) or "SIGINT")
        raise
    except Exception as e:
        reason = f"{type(e).__name__}: {e}"
        (run_dir / "traceback.txt").write_text(traceback.format_exc())
        print_err(traceback.format_exc())
        print_err(f"run failed: {reason} (traceback in {run_dir / 'traceback.txt'})")
    finally:
        tracker.finish(status, reason)
        if ppo is not None:
            ppo.close()
    if status == "completed":
        print(f"{tracker.cell} seed {cfg.seed}: completed {ppo.global_step} steps, mean return of the last "
              f"{len(window.returns)} episodes {window.mean():.1f}; run directory: {run_dir}", flush=True)
    return status


GROUP_EXCLUDE = ("seed", "tracking", "sweep_name")  # what members of one group may differ in


def group_key(cfg: DictConfig) -> str:
    """Jobs with equal keys can train as members of one group (one process, stacked weights): their configs
    differ only in the seed and bookkeeping. Used by the grouped launcher to form groups."""
    import hashlib
    import json

    config = OmegaConf.to_container(cfg, resolve=True)
    ident = {k: v for k, v in config.items() if k not in GROUP_EXCLUDE}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def run_group(jobs: list[tuple[DictConfig, Path]], job_nums: list[int] | None = None) -> list[str]:
    """Train a group of runs (configs equal up to ``group_key``) in this process, each in its own run directory;
    returns each member's final status ('completed', 'failed', 'interrupted', 'skipped' or 'config_error').

    Interface for the grouped launcher. (Interim body: members one after another; the grouped engine replaces it.)
    """
    statuses = []
    for i, (cfg, run_dir) in enumerate(jobs):
        try:
            statuses.append(run(cfg, Path(run_dir), job_num=None if job_nums is None else job_nums[i]))
        except ConfigError as e:
            print_err(f"error: {run_dir}: {e}")
            statuses.append("config_error")
    return statuses


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


def _precheck_groups(argv: list[str]) -> None:
    """`precision=fp8` style mistakes: one line naming the bad value and the allowed ones."""
    for arg in argv:
        m = re.fullmatch(r"\+?(\w+)=([\w.-]+)", arg)
        if not m or m.group(1) not in GROUPS:
            continue
        group, value = m.groups()
        if value == "null" and group == "experiment":
            continue
        allowed = sorted(p.stem for p in (Path(CONFIG_DIR) / group).glob("*.yaml"))
        if value not in allowed:
            print_err(f"error: {group}={value!r} is not allowed; allowed: {', '.join(allowed)}")
            sys.exit(2)


def main() -> None:
    _precheck_groups(sys.argv[1:])
    try:
        hydra_main()
    except KeyboardInterrupt as e:  # the run directory already says "interrupted"
        print_err(f"interrupted ({e or 'SIGINT'}); re-run the same command to resume from the last checkpoint")
        sys.exit(143 if str(e) == "SIGTERM" else 130)
    if any(s in ("failed", "interrupted") for s in _RESULTS) and len(_RESULTS) == 1:
        sys.exit(1)


if __name__ == "__main__":
    main()
