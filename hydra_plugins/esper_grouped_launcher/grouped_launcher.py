"""Registers ``hydra/launcher=grouped`` (this schema) and the launcher class for Hydra's plugin discovery.

The logic is ``esper_exp.launch`` (imported on first use: plugin discovery imports this module on every start).
The submitit keys are those of hydra-submitit-launcher 1.2 (``hydra_plugins/hydra_submitit_launcher/config.py``)
minus ``nodes`` and ``tasks_per_node``: a group is one task on one node.
"""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


@dataclass
class GroupedLauncherConf:
    _target_: str = "hydra_plugins.esper_grouped_launcher.grouped_launcher.GroupedLauncher"

    # local: fresh processes on this machine | submitit_local | submitit_slurm: one submitit task per group
    backend: str = "local"
    # groups running at once (slurm: the job array's parallelism); -1: os.cpu_count() locally, all groups on Slurm
    n_jobs: int = -1
    # jobs with equal esper_exp.train.group_key (configs differing only in seed/tracking/sweep_name) share a
    # process, at most this many per group; auto: 10 on CPU, on CUDA all of them in one group per visible GPU
    max_members: Any = "auto"
    # let jobs that differ only in GELU x precision share a group (a mixed group); auto: on for jobs on CUDA
    mix_cells: Any = "auto"

    # submitit, both backends
    submitit_folder: str = "${hydra.sweep.dir}/.submitit/%j"
    timeout_min: int = 60  # per group
    cpus_per_task: Optional[int] = None  # null: torch_threads
    gpus_per_node: Optional[int] = None
    mem_gb: Optional[int] = None
    name: str = "${hydra.job.name}"
    stderr_to_stdout: bool = False

    # submitit_slurm only
    partition: Optional[str] = None
    qos: Optional[str] = None
    comment: Optional[str] = None
    constraint: Optional[str] = None
    exclude: Optional[str] = None
    gres: Optional[str] = None
    cpus_per_gpu: Optional[int] = None
    gpus_per_task: Optional[int] = None
    mem_per_gpu: Optional[str] = None
    mem_per_cpu: Optional[str] = None
    account: Optional[str] = None
    # submitit's timeout signal comes this long before the time limit; the members then checkpoint and stop
    signal_delay_s: int = 120
    max_num_timeout: int = 0  # no requeue: re-run the sweep command to resume
    additional_parameters: Dict[str, Any] = field(default_factory=dict)
    setup: Optional[List[str]] = None


ConfigStore.instance().store(group="hydra/launcher", name="grouped", node=GroupedLauncherConf,
                             provider="esper_grouped_launcher")


class GroupedLauncher(Launcher):
    """Trains a sweep's jobs as groups (see esper_exp/launch.py)."""

    def __init__(self, **params: Any) -> None:
        from esper_exp.launch import GroupedLaunch

        self.impl = GroupedLaunch(**params)

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.impl.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        return self.impl.launch(job_overrides, initial_job_idx)
