"""Compose each config once per command: ``compose_once``, a memo on Hydra's config composition.

A multirun command composed every job's config three times in the submitting process: ``esper_exp.train``'s
precheck (validation and run directories, before Hydra writes anything), Hydra's BasicSweeper
(``validate_batch_is_legal``, before it launches a batch) and the launcher (the grouped launcher's ``compose``, the
basic launcher's ``run_job``); the primary config, besides, in precheck and in Hydra's ``get_mode`` and ``multirun``.
Each goes through ``ConfigLoaderImpl.load_configuration`` with the same inputs, and composing was most of a sweep's
start-up (about 0.15 s a HalfCheetah job on a 2-core VM, 60 jobs), so while ``compose_once`` is active (esper-train's
``main``) the first composition of each set of inputs is kept and every call gets a deep copy of it (a few ms).

The key is what the composition reads besides the config files: the config search path, the config name, the
overrides, the run mode, the working directory (``hydra.runtime.cwd``) and the task name (``hydra.job.name``); a kept
composition serves only while the environment variables it copied (``hydra.job.env_copy``) are unchanged (not the
whole environment: importing gymnasium sets PYGAME_HIDE_SUPPORT_PROMPT between precheck and Hydra; an
``${oc.env:...}`` in a defaults list is read at the first composition). A composition that raises is not kept (each
call raises again). One composed with ``validate_sweep_overrides`` also serves a call without it (the check passed,
the config is the same), not the other way round. ``load_sweep_config`` copies the primary config's resolver cache
into the copy it gets, as into a fresh composition. The memo lives for one ``with`` block (one command): config
files edited between two commands of one process are read again.
"""

from __future__ import annotations

import contextlib
import copy
import os
from collections.abc import Iterator
from typing import Any

from omegaconf import DictConfig, open_dict, read_write


@contextlib.contextmanager
def compose_once() -> Iterator[dict[tuple, Any]]:
    """Within the block, Hydra composes each distinct config once (see the module docstring); yields the memo."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra.core.utils import JobRuntime

    compose = ConfigLoaderImpl.load_configuration
    memo: dict[tuple, Any] = {}

    def load_configuration(self, config_name, overrides, run_mode, from_shell=True, validate_sweep_overrides=True):
        key = (str(self.get_search_path()), config_name, tuple(overrides), run_mode, from_shell, os.getcwd(),
               JobRuntime().get("name"))
        for validated in dict.fromkeys((True, validate_sweep_overrides)):
            cfg, env = memo.get((*key, validated), (None, None))
            if cfg is not None and env == {k: os.environ.get(k) for k in env}:
                return copy.deepcopy(cfg)
        cfg = compose(self, config_name=config_name, overrides=overrides, run_mode=run_mode, from_shell=from_shell,
                      validate_sweep_overrides=validate_sweep_overrides)
        memo[(*key, validate_sweep_overrides)] = cfg, {k: os.environ.get(k) for k in cfg.hydra.job.env_copy}
        return copy.deepcopy(cfg)

    ConfigLoaderImpl.load_configuration = load_configuration
    try:
        yield memo
    finally:
        ConfigLoaderImpl.load_configuration = compose
        memo.clear()


def task_config(config: DictConfig) -> DictConfig:
    """A job's own config: a deep copy of its composition without Hydra's node (what its .hydra/config.yaml holds and
    its run identity is computed from)."""
    task = copy.deepcopy(config)
    with read_write(task), open_dict(task):
        task.pop("hydra", None)
    return task
