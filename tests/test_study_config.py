"""Issue 13's pre-registration: configs/experiment/mujoco_gelu_amp*.yaml hold the values the MuJoCo GELU x precision
study was registered with (experiments/mujoco_gelu_amp/README.md). Each sweep is expanded by Hydra's BasicSweeper
from the config's sweeper params (as `esper-train -m` does) and each job composed with Hydra's compose API; every
composed job must pass config validation (esper_exp.config.validate), and the values that decide the study (envs,
cells, seeds, hyper-parameters, the decision rule and its anchors) are asserted literally, so a change to the design
fails here first.

Composing all 360 primary jobs takes ~45 s on the dev CPU, so the sweeps are expanded in full from their sweeper
params (no compose) and composed for a narrowed seed list (the seed changes nothing else in a job)."""

import itertools

import pytest
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from esper_exp.analysis.decision import resolve_contrasts
from esper_exp.analysis.load import cell_label
from esper_exp.analysis.rule import DEFAULT_ANCHORS, Rule
from esper_exp.composing import task_config
from esper_exp.config import validate
from esper_exp.launch import GroupedLaunch
from esper_exp.train import CONFIG_DIR

ENV_IDS = {"halfcheetah": "HalfCheetah-v5", "hopper": "Hopper-v5", "walker2d": "Walker2d-v5"}
# fixed in the config, not taken from data: D4RL random-policy returns; CleanRL PPO at 1M steps (v4 envs)
ANCHORS = {"halfcheetah": {"random": -280.2, "reference": 1442.0},
           "hopper": {"random": -20.3, "reference": 2383.0},
           "walker2d": {"random": 1.6, "reference": 2288.0}}
# CleanRL ppo_continuous_action.py's hyper-parameters (configs/ppo/mujoco.yaml), 1M steps
CLEANRL_MUJOCO = {"total_timesteps": 1_000_000, "num_steps": 2048, "learning_rate": 3e-4, "anneal_lr": True,
                  "gamma": 0.99, "gae_lambda": 0.95, "num_minibatches": 32, "update_epochs": 10, "norm_adv": True,
                  "clip_coef": 0.2, "clip_vloss": True, "ent_coef": 0.0, "vf_coef": 0.5, "max_grad_norm": 0.5,
                  "target_kl": None, "adam_eps": 1e-5}
ALPHA_RAMP = {"kind": "linear", "start": 0.0, "end": 1.0, "start_update": 0, "ramp_updates": 50}
PRIMARY_CONTRASTS = ["tanh/fp32 - exact/fp32", "tanh/bf16 - exact/bf16",
                     "exact/bf16 - exact/fp32", "tanh/bf16 - tanh/fp32"]

# name -> what the registered sweep is: envs, cells (gelu, precision), seeds, the config values that differ from
# the primary, the rule's reference cell and the contrasts it resolves to among the sweep's cells
PRIMARY = {"sweep": "mujoco_gelu_amp", "envs": ("halfcheetah", "hopper", "walker2d"),
           "cells": [("exact", "fp32"), ("tanh", "fp32"), ("exact", "bf16"), ("tanh", "bf16")],
           "seeds": range(1, 41), "reference": "exact/fp32", "contrasts": PRIMARY_CONTRASTS,
           "device": "cuda", "width": 64, "alpha": ALPHA_RAMP, "ppo": {}, "compile": False, "probe_every": 0}
HC = ("halfcheetah",)
STUDY = {
    "mujoco_gelu_amp": PRIMARY,
    "mujoco_gelu_amp_fp16": {**PRIMARY, "sweep": "mujoco_gelu_amp_fp16", "envs": HC, "seeds": range(1, 11),
                             "cells": [("exact", "fp16"), ("tanh", "fp16")], "reference": "exact/fp16",
                             "contrasts": ["tanh/fp16 - exact/fp16"]},
    "mujoco_gelu_amp_width384": {**PRIMARY, "sweep": "mujoco_gelu_amp_width384", "envs": HC, "seeds": range(1, 11),
                                 "cells": [("exact", "bf16"), ("tanh", "bf16")], "reference": "exact/bf16",
                                 "contrasts": ["tanh/bf16 - exact/bf16"], "width": 384},
    "mujoco_gelu_amp_alpha1": {**PRIMARY, "sweep": "mujoco_gelu_amp_alpha1", "envs": HC, "seeds": range(1, 11),
                               "alpha": {**ALPHA_RAMP, "kind": "constant", "start": 1.0, "end": 1.0}},
    "mujoco_gelu_amp_3m": {**PRIMARY, "sweep": "mujoco_gelu_amp_3m", "envs": HC, "seeds": range(1, 11),
                           "ppo": {"total_timesteps": 3_000_000, "anneal_lr": False}},
    "mujoco_gelu_amp_compile": {**PRIMARY, "sweep": "mujoco_gelu_amp_compile", "envs": HC, "seeds": range(1, 11),
                                "cells": [("exact", "bf16"), ("tanh", "bf16")], "reference": "exact/bf16/compiled",
                                "contrasts": ["tanh/bf16/compiled - exact/bf16/compiled"], "compile": True},
    "mujoco_gelu_amp_cpu": {**PRIMARY, "sweep": "mujoco_gelu_amp_cpu", "envs": HC, "seeds": range(1, 11),
                            "device": "cpu"},
    "mujoco_gelu_amp_probe": {**PRIMARY, "sweep": "mujoco_gelu_amp_probe", "seeds": range(1, 6), "probe_every": 10},
}


def _sweeper_params(experiment: str) -> dict:
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={experiment}"], return_hydra_config=True)
    return dict(cfg.hydra.sweeper.params)


def _split(params: dict, extra: list[str]) -> list[list[str]]:
    """Every job's override list, by Hydra's BasicSweeper: the config's sweeper params, then the command line's
    overrides (a key given on both: the command line's wins), as `esper-train -m ... <extra>` launches them."""
    parsed = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()] + extra)
    return BasicSweeper.split_arguments(parsed, None)[0]


def _expand(params: dict) -> list[dict]:
    """Every job of the sweep as {key: value}."""
    return [dict(o.split("=", 1) for o in job) for job in _split(params, [])]


def _compose_jobs(experiment: str, *extra: str):
    """(sweep dir, [(job overrides, composed job config with its hydra node)]) of `esper-train -m
    experiment=<experiment> <extra>`."""
    params = _sweeper_params(experiment)
    jobs = _split(params, [f"experiment={experiment}", *extra])
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        composed = [(job, compose("train", overrides=job, return_hydra_config=True)) for job in jobs]
    return str(composed[0][1].hydra.sweep.dir), composed


@pytest.mark.parametrize("experiment", sorted(STUDY))
def test_each_sweep_expands_to_exactly_its_registered_envs_cells_and_seeds(experiment):
    want = STUDY[experiment]
    jobs = _expand(_sweeper_params(experiment))
    got = sorted((j.get("env", "halfcheetah"), j["model.gelu"], j["precision"], int(j["seed"])) for j in jobs)
    grid = sorted((e, g, p, s) for e, (g, p), s in itertools.product(want["envs"], want["cells"], want["seeds"]))
    assert got == grid
    assert len(got) == {"mujoco_gelu_amp": 480, "mujoco_gelu_amp_probe": 60,
                        "mujoco_gelu_amp_alpha1": 40, "mujoco_gelu_amp_3m": 40,
                        "mujoco_gelu_amp_cpu": 40}.get(experiment, 20)


def test_the_primary_study_is_480_paired_runs_and_the_pilot_is_its_first_ten_seeds():
    """30 seeds registered, raised to 40 by the pilot's rule (largest pilot SD 0.3367 > 0.3)."""
    params = _sweeper_params("mujoco_gelu_amp")
    assert params == {"env": "halfcheetah,hopper,walker2d", "model.gelu": "exact,tanh", "precision": "fp32,bf16",
                      "seed": "range(1,41)"}
    # the pilot is the same command with seed=range(1,11): its runs are the study's first 10 seeds, not extra runs
    pilot = _expand({**params, "seed": "range(1,11)"})
    assert len(pilot) == 120 and sorted({int(j["seed"]) for j in pilot}) == list(range(1, 11))


@pytest.mark.parametrize("experiment", sorted(STUDY))
def test_every_composed_job_validates_and_carries_the_registered_values(experiment):
    want = STUDY[experiment]
    seeds = f"seed={want['seeds'][0]},{want['seeds'][-1]}"  # first and last seed: the seed changes nothing else
    sweep_dir, jobs = _compose_jobs(experiment, seeds)
    assert len(jobs) == 2 * len(want["envs"]) * len(want["cells"])
    assert sweep_dir == f"outputs/sweeps/{want['sweep']}"
    ppo = {**CLEANRL_MUJOCO, **want["ppo"]}
    for _, cfg in jobs:
        task = task_config(cfg)
        validate(task)  # raises ConfigError on any value the trainer would refuse
        assert task.env.id == ENV_IDS[task.env.name] and task.env.name in want["envs"]
        assert (task.env.num_envs, task.env.clip_action, task.env.normalize_obs, task.env.normalize_reward) == \
            (1, True, True, True)
        assert {k: task.ppo[k] for k in ppo} == ppo
        assert (task.device, task.deterministic, task.sweep_name) == (want["device"], True, want["sweep"])
        assert (task.model.width, task.model.depth, task.model.blueprint, task.model.blend_cast) == \
            (want["width"], 2, "mlp", "always")
        assert dict(task.model.alpha) == want["alpha"]
        assert (task.model.compile, task.model.checkpointing) == (want["compile"], False)
        assert (task.drift.probe_every, task.drift.snapshot_every, task.drift.perturb) == \
            (want["probe_every"], 0, "none")
        # the decision rule, as issue 10 defines it, with the anchors fixed per env in the config
        a = task.analysis
        assert (a.endpoint, a.delta, a.alpha, a.paired, a.reference) == ("auc", 0.10, 0.05, True, want["reference"])
        for env in want["envs"]:
            assert dict(a.anchors[env]) == ANCHORS[env] == DEFAULT_ANCHORS[env]
        cell = f"{task.env.name}-{task.model.gelu}-{task.precision.name}" + ("-compiled" if want["compile"] else "")
        assert str(cfg.hydra.sweep.subdir) == f"{cell}/seed={task.seed}"
    # the rule resolves to the registered contrasts among the sweep's cells, and its reference cell is one of them
    # (esper-report refuses a reference the sweep lacks)
    rule = Rule.from_dict(OmegaConf.to_container(task_config(jobs[0][1]).analysis, resolve=True))
    cells = [cell_label(g, p, want["compile"]) for g, p in want["cells"]]
    assert want["reference"] in cells
    assert [c.name for c in resolve_contrasts(rule, cells)] == want["contrasts"]


def test_primary_contrasts_are_the_two_tickets_four_and_the_margin_in_return_units():
    _, jobs = _compose_jobs("mujoco_gelu_amp", "seed=1", "env=hopper")
    rule = Rule.from_dict(OmegaConf.to_container(task_config(jobs[0][1]).analysis, resolve=True))
    assert list(rule.contrasts) == ["tanh_vs_exact", "dtype_vs_fp32"]
    got = [(c.name, c.family) for c in resolve_contrasts(rule, ["exact/fp32", "tanh/fp32", "exact/bf16", "tanh/bf16"])]
    assert got == [("tanh/fp32 - exact/fp32", "tanh_vs_exact"), ("tanh/bf16 - exact/bf16", "tanh_vs_exact"),
                   ("exact/bf16 - exact/fp32", "dtype_vs_fp32"), ("tanh/bf16 - tanh/fp32", "dtype_vs_fp32")]
    # 0.10 of the random-to-reference gap, in return units per env
    assert {e: round(0.10 * (x["reference"] - x["random"]), 2) for e, x in rule.anchors.items() if e in ENV_IDS} == \
        {"halfcheetah": 172.22, "hopper": 240.33, "walker2d": 228.64}


def test_no_arm_writes_into_another_sweep_so_exploratory_runs_never_join_the_primary_verdict():
    dirs = {}
    for experiment in STUDY:
        with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
            cfg = compose("train", overrides=[f"experiment={experiment}"], return_hydra_config=True)
        dirs[experiment] = str(cfg.hydra.sweep.dir)
    assert len(set(dirs.values())) == len(STUDY)
    assert dirs["mujoco_gelu_amp"] == "outputs/sweeps/mujoco_gelu_amp"


@pytest.mark.parametrize("experiment, processes", [
    ("mujoco_gelu_amp", 3),  # on CUDA: one mixed-cell group key per env (all 4 cells x all seeds of an env)
    ("mujoco_gelu_amp_probe", 12),  # the probe keeps jobs out of mixed groups: one key per env x cell
    ("mujoco_gelu_amp_compile", 2),  # compiled jobs too: one key per cell
    ("mujoco_gelu_amp_cpu", 4),  # on CPU cells are not mixed: one key per cell
])
def test_grouped_launcher_forms_the_registered_processes(experiment, processes):
    want = STUDY[experiment]
    _, jobs = _compose_jobs(experiment, "seed=1")
    keys, limits, _ = GroupedLaunch().group_keys([cfg for _, cfg in jobs])
    assert len(set(keys)) == processes
    for key in set(keys):  # a key never spans two envs, and all keys are of one size (the cells of a key x seeds)
        assert len({cfg.env.name for k, (_, cfg) in zip(keys, jobs) if k == key}) == 1
        assert keys.count(key) == len(jobs) // processes
    if want["device"] == "cpu":
        assert set(limits) == {10}
