"""``deepspeed``: ZeRO-3 settings; the DeepSpeed JSON is generated from them (deepspeed_config.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .base import one_of, require


def _auto_or_positive(key: str, value) -> None:
    require(value == "auto" or (isinstance(value, (int, float)) and value > 0), key, value,
            "give a positive number of elements, or auto (sized from the model's hidden size)")


@dataclass
class DeepSpeedConfig:
    stage: int = 3
    """ZeRO stage: 3 partitions parameters, gradients and optimizer states over all ranks."""
    offload_optimizer: str = "none"
    """none | cpu: keep Adam states in host memory (70B on few nodes)."""
    offload_param: str = "none"
    """none | cpu: keep parameters in host memory between uses."""
    overlap_comm: bool = True
    contiguous_gradients: bool = True
    reduce_bucket_size: Any = "auto"
    stage3_prefetch_bucket_size: Any = "auto"
    stage3_param_persistence_threshold: Any = "auto"
    stage3_max_live_parameters: float = 1.0e9
    stage3_max_reuse_distance: float = 1.0e9
    sub_group_size: float = 1.0e9
    optimizer: str = "torch"
    """torch: torch's AdamW, fused on CUDA (ships compiled); deepspeed: DeepSpeed's FusedAdam (JIT-built on every node)."""
    reduce_dtype: str = "auto"
    """Gradient reduce-scatter dtype under bf16 (accumulation is always fp32): fp32, bf16 (half the
    traffic), or auto: bf16 when the run spans several nodes, else fp32 (the plan prints why)."""
    hierarchical_partitioning: bool = True
    """Multi-node: ZeRO++ hpZ, a weight copy per node, so weight all-gathers stay on NVLink."""

    def __post_init__(self):
        require(self.stage == 3, "stage", self.stage,
                "the checkpoint, export and resume code is built for ZeRO-3 partitions")
        one_of("offload_optimizer", self.offload_optimizer, ("none", "cpu"))
        one_of("offload_param", self.offload_param, ("none", "cpu"))
        one_of("optimizer", self.optimizer, ("torch", "deepspeed"))
        one_of("reduce_dtype", self.reduce_dtype, ("auto", "fp32", "bf16"))
        for key in ("reduce_bucket_size", "stage3_prefetch_bucket_size", "stage3_param_persistence_threshold"):
            _auto_or_positive(key, getattr(self, key))
        for key in ("stage3_max_live_parameters", "stage3_max_reuse_distance", "sub_group_size"):
            require(getattr(self, key) > 0, key, getattr(self, key), "a number of elements must be positive")
