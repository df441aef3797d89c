"""``esper-train``: the Hydra entry point. One Hydra job = one PPO run in its own run directory.

config (compose + validate) -> PPO (envs, policy) -> loop -> Tracker (run dir) ; see DESIGN.md section 2.
"""

from __future__ import annotations

import re
import shutil
import signal
import sys
import time
import traceback
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from esper_exp.config import ConfigError, register_configs, validate
from esper_exp.tracking import Tracker, config_hash, print_err, read_run_json

CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "configs")
GROUPS = ("env", "model", "precision", "ppo", "tracking", "experiment")

register_configs()
OmegaConf.register_new_resolver("esper_compiled", lambda flag: "-compiled" if flag else "", replace=True)

_RESULTS: list[str] = []  # statuses of the jobs run in this process (read by main for the exit code)


class Interrupted(KeyboardInterrupt):
    """SIGTERM (e.g. a cluster preempting the job), handled like Ctrl-C."""


def _on_sigterm(signum, frame):
    raise Interrupted("SIGTERM")


def _archive_previous_attempt(run_dir: Path) -> None:
    """Move a failed/interrupted attempt's files to attempts/<n>/ so nothing already written is lost."""
    files = [p for p in run_dir.iterdir() if p.name in ("run.json", "metrics.jsonl", "episodes.jsonl", "traceback.txt")]
    if not files:
        return
    attempts = run_dir / "attempts"
    n = len(list(attempts.glob("*"))) if attempts.exists() else 0
    dest = attempts / str(n)
    dest.mkdir(parents=True)
    for p in files:
        shutil.move(str(p), dest / p.name)
    for p in run_dir.glob("wandb"):
        shutil.move(str(p), dest / p.name)


def run(cfg: DictConfig, run_dir: Path) -> str:
    """Run one training job in ``run_dir``; returns its final status (or 'skipped')."""
    import torch
    from tqdm import tqdm

    from esper_exp.ppo import PPO, EpisodeWindow, NonFiniteError
    from esper_exp.runtime import prepare, resolve_device

    validate(cfg)
    config = OmegaConf.to_container(cfg, resolve=True)
    previous = read_run_json(run_dir)
    if previous and previous.get("status") == "completed":
        if previous.get("config_hash") == config_hash(config):
            print(f"skipped: {run_dir} already holds a completed run of this config", flush=True)
            return "skipped"
        raise ConfigError(f"run directory {run_dir} already holds a completed run of a different config "
                          f"(hash {previous.get('config_hash')}); refusing to overwrite it: choose another directory")
    if previous:
        _archive_previous_attempt(run_dir)

    try:
        device = resolve_device(cfg.device)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    prepare(cfg.seed, device, cfg.deterministic, cfg.torch_threads)
    tracker = Tracker(run_dir, config, device)
    old_handler = signal.signal(signal.SIGTERM, _on_sigterm) if _in_main_thread() else None
    ppo = None
    status, reason = "failed", None
    try:
        ppo = PPO(cfg, device)
        window = EpisodeWindow(100)

        def on_episode(global_step: int, ret: float, length: int, env_index: int) -> None:
            window.add(ret)
            tracker.log_episode(global_step, ret, length, env_index)

        show = cfg.tracking.progress == "on" or (cfg.tracking.progress == "auto" and sys.stderr.isatty())
        start = time.perf_counter()
        with tqdm(total=ppo.num_updates * ppo.batch_size, unit="step", unit_scale=True, disable=not show,
                  desc=tracker.cell, dynamic_ncols=True) as bar:
            while ppo.update_idx < ppo.num_updates:
                record = ppo.run_update(on_episode)
                record["sps"] = record["global_step"] / (time.perf_counter() - start)
                record["return_mean"] = window.mean()
                tracker.log_update(record)
                bar.update(ppo.batch_size)
                bar.set_postfix(sps=f"{record['sps']:.0f}", ret=f"{record['return_mean']:.1f}", refresh=False)
        status = "completed"
    except NonFiniteError as e:
        reason = str(e)
        print_err(f"run failed: {reason}")
    except KeyboardInterrupt as e:
        status, reason = "interrupted", ("SIGTERM" if isinstance(e, Interrupted) else "KeyboardInterrupt")
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
        if old_handler is not None:
            signal.signal(signal.SIGTERM, old_handler)
        _ = torch  # keep the import local to the job
    return status


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def hydra_main(cfg: DictConfig) -> str:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        status = run(cfg, run_dir)
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
        print_err(f"interrupted ({'SIGTERM' if isinstance(e, Interrupted) else 'Ctrl-C'})")
        sys.exit(143 if isinstance(e, Interrupted) else 130)
    if any(s in ("failed", "interrupted") for s in _RESULTS) and len(_RESULTS) == 1:
        sys.exit(1)


if __name__ == "__main__":
    main()
