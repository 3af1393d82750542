"""The typed config schema: one dataclass per config group, registered as Hydra structured configs.

Each group's base YAML names its schema first in its defaults list (``defaults: [schema, _self_]``),
so Hydra rejects unknown keys and wrongly typed values while composing; :func:`validate` then builds
every group's dataclass, whose ``__post_init__`` rejects values that cannot work and says why. Both
happen inside :func:`llama3zh_dist.config.load_config`, before any process starts.

Checks that need the machine (GPUs, weights on disk, flash-attn) or span groups (batch arithmetic,
data repetition) stay in :mod:`llama3zh_dist.preflight`.
"""

from __future__ import annotations

import dataclasses
import typing

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from .base import ConfigValueError
from .cluster import ClusterConfig
from .data import DataConfig
from .deepspeed import DeepSpeedConfig
from .eval import EvalConfig
from .logger import LoggerConfig
from .model import ModelConfig
from .plan import PlanConfig
from .serve import ServeConfig
from .run import ChatConfig, CheckpointConfig, ExportConfig, RunConfig
from .trainer import TrainerConfig

# Config groups (conf/<group>/) whose base YAML extends ``schema``.
GROUP_SCHEMAS = {
    "model": ModelConfig, "data": DataConfig, "trainer": TrainerConfig, "cluster": ClusterConfig,
    "deepspeed": DeepSpeedConfig, "logger": LoggerConfig, "eval": EvalConfig,
    "serve": ServeConfig,
}
# Sections of conf/config.yaml itself.
ROOT_SCHEMAS = {"run": RunConfig, "checkpoint": CheckpointConfig, "export": ExportConfig, "chat": ChatConfig,
                "plan": PlanConfig}
SCHEMAS = {**GROUP_SCHEMAS, **ROOT_SCHEMAS}


def register() -> None:
    """Store every group's schema as ``<group>/schema`` in Hydra's ConfigStore (idempotent)."""
    cs = ConfigStore.instance()
    for group, cls in GROUP_SCHEMAS.items():
        cs.store(group=group, name="schema", node=cls)


def _build(cls, node, prefix: str):
    """``cls`` built from ``node`` (nested dataclasses first), so each check runs with its full key."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in node:
            continue
        value = node[f.name]
        typ = hints[f.name]
        if dataclasses.is_dataclass(typ) and isinstance(value, DictConfig):
            kwargs[f.name] = _build(typ, value, f"{prefix}{f.name}.")
        else:
            kwargs[f.name] = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
    try:
        return cls(**kwargs)
    except ConfigValueError as e:
        raise ConfigValueError(prefix + e.key, e.value, e.reason) from None


def validate(cfg: DictConfig) -> dict:
    """Every group of ``cfg`` as its dataclass; ConfigValueError names the first rejected key."""
    return {name: _build(cls, cfg[name], f"{name}.") for name, cls in SCHEMAS.items() if name in cfg}


__all__ = ["SCHEMAS", "ConfigValueError", "register", "validate", *(c.__name__ for c in SCHEMAS.values())]
