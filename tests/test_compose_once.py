"""A sweep command composes each job's config once in the submitting process (esper_exp/composing.py): precheck's
compositions serve Hydra's sweeper (validate_batch_is_legal) and the grouped launcher, on the CPU and the CUDA
grouping paths alike."""

import json
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir
from hydra._internal.config_loader_impl import ConfigLoaderImpl

from esper_exp.composing import compose_once
from esper_exp.train import CONFIG_DIR

# esper-train -m in a process whose compositions are counted (the original load_configuration, under compose_once's
# memo) and whose group processes are not started (each group is recorded and reported completed)
SWEEP = """
import collections, json, sys
from hydra._internal.config_loader_impl import ConfigLoaderImpl
from esper_exp import launch, train

composed = collections.Counter()
load = ConfigLoaderImpl.load_configuration

def counting(self, config_name, overrides, *args, **kwargs):
    composed[" ".join(overrides)] += 1
    return load(self, config_name, overrides, *args, **kwargs)

groups = []

def run_local(self, todo, sweep_dir):
    for g in todo:
        groups.append(len(g.spec.configs))
        g.result = {"statuses": ["completed"] * len(g.spec.configs)}

ConfigLoaderImpl.load_configuration = counting
launch.GroupedLaunch._run_local = run_local
sys.argv = ["esper-train", *sys.argv[1:]]
train.main()
print("RESULT " + json.dumps({"composed": composed, "groups": groups}))
"""


@pytest.mark.parametrize("device, groups", [("cpu", [2] * 6), ("cuda", [12])])
def test_a_grouped_sweep_composes_each_job_once(tmp_path, device, groups):
    """experiment=smoke: 12 jobs (GELU x precision x 2 seeds). Composed: each job once, and the primary config
    twice (as Hydra's get_mode composes it and with hydra.mode=MULTIRUN); before, 3 x 12 + 3."""
    proc = subprocess.run([sys.executable, "-c", SWEEP, "-m", "experiment=smoke", "hydra/launcher=grouped",
                           f"device={device}", "tracking.wandb.mode=disabled", f"hydra.sweep.dir={tmp_path / 'sw'}"],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.split("RESULT ", 1)[1])
    assert result["groups"] == groups  # CPU: a group per cell; CUDA: the cells mixed in one group
    composed = result["composed"]
    assert max(composed.values()) == 1, composed
    jobs = [o for o in composed if "seed=" in o and "model.gelu=" in o and "precision=" in o]
    assert len(jobs) == 12 and len(composed) == 12 + 2, composed


def test_compose_once_composes_once_and_hands_out_independent_copies(monkeypatch):
    load = ConfigLoaderImpl.load_configuration
    calls = []

    def counting(self, config_name, overrides, *args, **kwargs):
        calls.append(list(overrides))
        return load(self, config_name, overrides, *args, **kwargs)

    monkeypatch.setattr(ConfigLoaderImpl, "load_configuration", counting)
    monkeypatch.setenv("ESPER_TEST_COPIED", "a")
    copied = ["hydra.job.env_copy=[ESPER_TEST_COPIED]"]
    with compose_once() as memo, initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        a = compose("train", overrides=["seed=3"], return_hydra_config=True)
        b = compose("train", overrides=["seed=3"], return_hydra_config=True)
        assert a == b and a is not b and len(calls) == 1
        a.seed = 5
        assert compose("train", overrides=["seed=3"]).seed == 3 and len(calls) == 1  # the kept one is untouched
        assert compose("train", overrides=["seed=4"]).seed == 4 and len(calls) == 2
        # a composition copies the variables of hydra.job.env_copy: composed again when one of them changed
        assert compose("train", overrides=copied, return_hydra_config=True).hydra.job.env_set.ESPER_TEST_COPIED == "a"
        monkeypatch.setenv("ESPER_TEST_COPIED", "b")
        assert compose("train", overrides=copied, return_hydra_config=True).hydra.job.env_set.ESPER_TEST_COPIED == "b"
        assert len(calls) == 4
        # a composition that raises is not kept
        for _ in range(2):
            with pytest.raises(Exception, match="nope"):
                compose("train", overrides=["env=nope"])
        assert len(calls) == 6
    assert not memo and ConfigLoaderImpl.load_configuration is counting  # the memo lived for the block only
