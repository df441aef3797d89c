"""Typed configuration schema (Hydra structured configs) and the value checks Hydra cannot express.

The dataclasses give types and key names: Hydra rejects an unknown key or a wrongly typed value.
``validate`` checks values against their allowed sets and ranges and raises ConfigError with one
line naming the bad value and what is allowed.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from esper_exp.analysis.rule import DEFAULT_ANCHORS, DEFAULT_RULE, rule_errors
from esper_exp.blend import CAST_POLICIES, SCHEDULE_KINDS
from esper_exp.numerics import DTYPES, GELU_VARIANTS
from esper_exp.probe import PERTURBATIONS
from esper_exp.seeds import BLUEPRINTS


class ConfigError(ValueError):
    """A user error in the configuration: reported as one line, exit code 2, before training."""


@dataclass
class EnvConfig:
    name: str = MISSING  # config group name, e.g. cartpole
    id: str = MISSING  # gymnasium id, e.g. CartPole-v1
    num_envs: int = 4
    clip_action: bool = False
    normalize_obs: bool = False
    normalize_reward: bool = False
    clip_obs: float = 10.0
    clip_reward: float = 10.0
    max_episode_steps: Optional[int] = None
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class AlphaConfig:
    kind: str = "linear"  # constant | linear | cosine
    start: float = 0.0
    end: float = 1.0
    start_update: int = 0
    ramp_updates: int = 50


@dataclass
class ModelConfig:
    blueprint: str = "mlp"  # mlp_small (2x) | mlp (4x)
    gelu: str = "exact"  # exact | tanh
    width: int = 64
    depth: int = 2  # host encoder layers
    checkpointing: bool = False
    blend_cast: str = "always"  # always | conditional
    compile: bool = False
    alpha: AlphaConfig = field(default_factory=AlphaConfig)


@dataclass
class PrecisionConfig:
    name: str = "fp32"  # fp32 | bf16 | fp16


@dataclass
class PPOConfig:
    total_timesteps: int = 500_000
    num_steps: int = 128
    learning_rate: float = 2.5e-4
    anneal_lr: bool = True
    gamma: float = 0.99
    gae_lambda: float = 0.95
    num_minibatches: int = 4
    update_epochs: int = 4
    norm_adv: bool = True
    clip_coef: float = 0.2
    clip_vloss: bool = True
    ent_coef: float = 0.01
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    target_kl: Optional[float] = None
    adam_eps: float = 1e-5


@dataclass
class WandbConfig:
    mode: str = "offline"  # offline | online | disabled
    project: str = "esper-exp"
    entity: Optional[str] = None
    group: Optional[str] = None  # default: the cell


@dataclass
class TrackingConfig:
    wandb: WandbConfig = field(default_factory=WandbConfig)
    progress: str = "auto"  # auto (only on a terminal) | on | off
    checkpoint_every: int = 25  # PPO updates between checkpoints; 0: only on stop and at the end


@dataclass
class DriftConfig:
    """Drift instrumentation (esper_exp/probe.py); everything off by default."""

    probe_every: int = 0  # applied-update probe in every K-th update, all its optimizer steps (0: off)
    snapshot_every: int = 0  # every M updates: weights + a sample of recent raw states saved, fp32 outputs (0: off)
    probe_set_size: int = 256  # N states per snapshot, drawn from the member's most recent rollout
    # none | ulp (one initial weight moved by one ulp) | large (1% noise on every initial weight) | persistent
    # (zero-mean perturbation of the tanh-vs-exact size on every GELU output) | duplicate (no change: determinism)
    perturb: str = "none"


@dataclass
class AnchorConfig:
    random: float = MISSING  # return of a random policy
    reference: float = MISSING  # return that normalises to 1


@dataclass
class AnalysisConfig:
    """The pre-registered decision rule esper-report applies (esper_exp/analysis/rule.py says what each key means).

    Declared before the runs and stored in run.json with the rest of the config, so it is part of the sweep's
    identity. The trainer ignores it."""

    endpoint: str = DEFAULT_RULE["endpoint"]  # auc | final_return (both normalised by the env's anchors)
    reference: str = DEFAULT_RULE["reference"]  # reference cell
    contrasts: list[str] = field(default_factory=lambda: list(DEFAULT_RULE["contrasts"]))
    delta: float = DEFAULT_RULE["delta"]  # equivalence margin, normalised scale
    alpha: float = DEFAULT_RULE["alpha"]  # TOST at alpha (90% CI); Holm-corrected 95% CI for "different"
    paired: bool = DEFAULT_RULE["paired"]  # seed k paired across cells
    anchors: dict[str, AnchorConfig] = field(
        default_factory=lambda: {k: AnchorConfig(**v) for k, v in DEFAULT_ANCHORS.items()})
    grid: int = DEFAULT_RULE["grid"]  # the endpoint's curve: grid points over the common step range
    window: int = DEFAULT_RULE["window"]  # episodes averaged at each curve point
    last: int = DEFAULT_RULE["last"]  # episodes in the final return


@dataclass
class TrainConfig:
    env: EnvConfig = MISSING
    model: ModelConfig = field(default_factory=ModelConfig)
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    drift: DriftConfig = field(default_factory=DriftConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    seed: int = 1
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    deterministic: bool = True
    torch_threads: int = 1  # 0: leave torch's default
    env_workers: int = 0  # env worker processes per training process (0: envs stepped in it); bitwise the same run
    env_spin_us: int = 0  # with env workers: how long both sides poll before sleeping (only where cores are spare)
    sweep_name: str = "default"


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(group="env", name="env_schema", node=EnvConfig)
    cs.store(group="model", name="model_schema", node=ModelConfig)
    cs.store(group="precision", name="precision_schema", node=PrecisionConfig)
    cs.store(group="ppo", name="ppo_schema", node=PPOConfig)
    cs.store(group="tracking", name="tracking_schema", node=TrackingConfig)


WANDB_MODES = ("offline", "online", "disabled")
PROGRESS_MODES = ("auto", "on", "off")


def _choice(name: str, value: Any, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"{name}={value!r} is not allowed; allowed: {', '.join(map(str, allowed))}")


def _positive(name: str, value: float, strict: bool = True) -> None:
    if value is None or (value <= 0 if strict else value < 0):
        raise ConfigError(f"{name}={value!r} is not allowed; allowed: a number {'>' if strict else '>='} 0")


def _check_env_id(env_id: str) -> None:
    import difflib

    import gymnasium as gym

    if env_id not in gym.registry:
        close = difflib.get_close_matches(env_id, list(gym.registry), n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise ConfigError(f"env.id={env_id!r} is not a registered gymnasium environment; {hint}"
                          f"allowed: the ids in gymnasium.registry (configs/env/ has cartpole, halfcheetah, hopper, walker2d)")


SEED_LIMIT = 2**32  # numpy's seeds: 0 <= seed < 2**32


def _unknown_keys(node, schema: type, path: str = "") -> None:
    """Keys a ``+key=value`` override or a user config file added that the schema (TrainConfig) does not have:
    Hydra accepts them, they change the config hash, and nothing reads them."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(schema)
    names = [f.name for f in dataclasses.fields(schema)]
    for key in node:
        where = f"{path}{key}"
        if key not in hints:
            raise ConfigError(f"{where} is not a known key (TrainConfig in esper_exp/config.py); allowed keys of "
                              f"{path.rstrip('.') or 'the config'}: {', '.join(names)}")
        hint = hints[key]
        if dataclasses.is_dataclass(hint) and OmegaConf.is_dict(node[key]):
            _unknown_keys(node[key], hint, where + ".")
        elif typing.get_origin(hint) is dict and OmegaConf.is_dict(node[key]):
            value_type = typing.get_args(hint)[1] if typing.get_args(hint) else Any
            if dataclasses.is_dataclass(value_type):
                for sub in node[key]:
                    if OmegaConf.is_dict(node[key][sub]):
                        _unknown_keys(node[key][sub], value_type, f"{where}.{sub}.")


@functools.lru_cache(maxsize=64)
def _env_spaces_error(env_id: str, kwargs_json: str) -> str | None:
    """Why the policy cannot drive this env (it needs a Box observation space and a Discrete or 1-D Box action
    space), or None. Any registered gymnasium env with such spaces can be trained, e.g. from a user's
    ``--config-dir my_configs env=acrobot`` with ``env/acrobot.yaml`` (``name: acrobot``, ``id: Acrobot-v1``)."""
    import json
    import warnings

    import gymnasium as gym

    from esper_exp.envs import _quiet_settotalmass

    try:
        with warnings.catch_warnings(), _quiet_settotalmass():
            warnings.simplefilter("ignore")
            env = gym.make(env_id, **json.loads(kwargs_json))
    except Exception as e:  # a missing extra, bad kwargs: the user's to fix
        return f"env.id={env_id!r} cannot be made here ({type(e).__name__}: {' '.join(str(e).split())})"
    try:
        obs, act = env.observation_space, env.action_space
    finally:
        env.close()
    if not isinstance(obs, gym.spaces.Box):
        return f"env.id={env_id!r} has a {type(obs).__name__} observation space; allowed: a Box observation space"
    if not (isinstance(act, gym.spaces.Discrete) or (isinstance(act, gym.spaces.Box) and len(act.shape) == 1)):
        return (f"env.id={env_id!r} has action space {act}; allowed: a Discrete or a 1-D Box action space")
    return None


def _check_env_spaces(env_id: str, kwargs: dict) -> None:
    import json

    err = _env_spaces_error(env_id, json.dumps(kwargs, sort_keys=True, default=str))
    if err:
        raise ConfigError(err)


def validate(cfg) -> None:
    """Check every value Hydra's types cannot; raise ConfigError naming the first bad one."""
    _unknown_keys(cfg, TrainConfig)
    # env i of a run is seeded with seed + i (esper_exp/envs.py), and numpy takes seeds in [0, 2**32)
    top = SEED_LIMIT - max(int(cfg.env.num_envs), 1)
    if not 0 <= cfg.seed <= top:
        raise ConfigError(f"seed={cfg.seed!r} is not allowed; allowed: an integer in [0, {top}] (numpy seeds are "
                          f"0 <= seed < 2**32 and env i of a run uses seed + i, env.num_envs={cfg.env.num_envs})")
    _choice("model.gelu", cfg.model.gelu, GELU_VARIANTS)
    _choice("model.blueprint", cfg.model.blueprint, tuple(BLUEPRINTS))
    _choice("model.blend_cast", cfg.model.blend_cast, CAST_POLICIES)
    _choice("model.alpha.kind", cfg.model.alpha.kind, SCHEDULE_KINDS)
    for key in ("start", "end"):
        if not 0.0 <= cfg.model.alpha[key] <= 1.0:
            raise ConfigError(f"model.alpha.{key}={cfg.model.alpha[key]!r} is not allowed; allowed: a number in [0, 1]")
    _positive("model.alpha.ramp_updates", cfg.model.alpha.ramp_updates)
    _positive("model.alpha.start_update", cfg.model.alpha.start_update, strict=False)
    _positive("model.width", cfg.model.width)
    _positive("model.depth", cfg.model.depth)
    _choice("precision", cfg.precision.name, tuple(DTYPES))
    _choice("tracking.wandb.mode", cfg.tracking.wandb.mode, WANDB_MODES)
    _choice("drift.perturb", cfg.drift.perturb, PERTURBATIONS)
    _positive("drift.probe_every", cfg.drift.probe_every, strict=False)
    _positive("drift.snapshot_every", cfg.drift.snapshot_every, strict=False)
    _positive("drift.probe_set_size", cfg.drift.probe_set_size)
    if cfg.drift.probe_every and cfg.ppo.num_minibatches < 2:
        raise ConfigError(f"drift.probe_every={cfg.drift.probe_every} needs ppo.num_minibatches >= 2 (the probe's noise "
                          f"floor is the step on a second, disjoint minibatch); got {cfg.ppo.num_minibatches}")
    for err in rule_errors(OmegaConf.to_container(cfg.analysis, resolve=True)):
        raise ConfigError(err)
    _choice("tracking.progress", cfg.tracking.progress, PROGRESS_MODES)
    _positive("tracking.checkpoint_every", cfg.tracking.checkpoint_every, strict=False)
    if not (cfg.device in ("auto", "cpu", "cuda") or str(cfg.device).startswith("cuda:")):
        raise ConfigError(f"device={cfg.device!r} is not allowed; allowed: auto, cpu, cuda, cuda:N")
    _positive("env.num_envs", cfg.env.num_envs)
    _check_env_id(cfg.env.id)
    _check_env_spaces(cfg.env.id, OmegaConf.to_container(cfg.env.kwargs, resolve=True))
    p = cfg.ppo
    for key in ("total_timesteps", "num_steps", "num_minibatches", "update_epochs", "learning_rate", "clip_coef",
                "max_grad_norm", "adam_eps"):
        _positive(f"ppo.{key}", p[key])
    for key in ("ent_coef", "vf_coef"):
        _positive(f"ppo.{key}", p[key], strict=False)
    for key in ("gamma", "gae_lambda"):
        if not 0.0 <= p[key] <= 1.0:
            raise ConfigError(f"ppo.{key}={p[key]!r} is not allowed; allowed: a number in [0, 1]")
    if p.target_kl is not None:
        _positive("ppo.target_kl", p.target_kl)
    batch = cfg.env.num_envs * p.num_steps
    if batch % p.num_minibatches:
        raise ConfigError(
            f"ppo.num_minibatches={p.num_minibatches} does not divide the batch env.num_envs x ppo.num_steps = {batch}; "
            f"allowed: a divisor of {batch}"
        )
    if p.total_timesteps < batch:
        raise ConfigError(
            f"ppo.total_timesteps={p.total_timesteps} is smaller than one batch ({batch} steps); allowed: >= {batch}"
        )
    if cfg.env_workers < 0:
        raise ConfigError(f"env_workers={cfg.env_workers} is not allowed; allowed: 0 (envs in the training process) or "
                          "more (that many worker processes)")
    if cfg.env_spin_us < 0:
        raise ConfigError(f"env_spin_us={cfg.env_spin_us} is not allowed; allowed: 0 (sleep at once) or more "
                          "(microseconds to poll before sleeping)")
    if cfg.torch_threads < 0:
        raise ConfigError(f"torch_threads={cfg.torch_threads} is not allowed; allowed: 0 (torch default) or more")
