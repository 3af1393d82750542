"""Batch arithmetic: world size and gradient accumulation from the config.

Below preflight, the planner and the DeepSpeed config, which all need it (kept here so that none of
them imports another for it: that made an import circle deepspeed_config -> preflight -> plan).
"""

from __future__ import annotations

from omegaconf import DictConfig


def world_size_of(cfg: DictConfig) -> int:
    return int(cfg.cluster.nodes) * int(cfg.cluster.nproc_per_node)


def gradient_accumulation_steps(cfg: DictConfig, world_size: int | None = None) -> int:
    world = world_size or world_size_of(cfg)
    return int(cfg.trainer.global_batch_size) // (int(cfg.trainer.micro_batch_size) * world)
