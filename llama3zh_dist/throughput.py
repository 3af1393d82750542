"""Throughput settings the planner resolves where the config says ``auto``: their names, and the
rules that need no memory estimate.

Two settings trade speed against memory or precision and have one best value per run shape:

- ``deepspeed.reduce_dtype`` (the gradient reduce-scatter dtype under bf16): by topology.
- ``model.gradient_checkpointing`` (``every_layer`` | ``every_second_layer`` | ``none``): the
  fastest granularity whose predicted per-GPU peak fits the GPU with ``plan.memory_margin`` left.

The plan prints the choice and its reason; the generated DeepSpeed JSON (``deepspeed_config.py``)
and the model build (``model.py``) call the same functions, so what the plan says is what runs.
An explicit value always wins. This module sits below ``deepspeed_config`` and ``plan`` (both use
it); the checkpointing choice, which needs the plan's memory estimate, is ``plan.checkpointing_choice``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from omegaconf import DictConfig

from .flops import ModelShape, step_flops

# Least memory (most recomputation) first: the fallback when nothing faster fits.
CHECKPOINTING = ("every_layer", "every_second_layer", "none")
_INTERVAL = {"every_layer": 1, "every_second_layer": 2, "none": 0}


@dataclass(frozen=True)
class Choice:
    value: str
    reason: str
    picked: bool  # True: the planner chose it ("auto"); False: the config gave it


def checkpointing_name(value) -> str:
    """The granularity a (resolved) ``model.gradient_checkpointing`` value means; true/false are
    the older spellings of every_layer/none."""
    if value is True or str(value).lower() == "true":
        return "every_layer"
    if value is False or str(value).lower() == "false":
        return "none"
    if str(value) not in _INTERVAL:
        raise ValueError(f"model.gradient_checkpointing={value!r}: not resolved (use {', '.join(CHECKPOINTING)})")
    return str(value)


def checkpoint_interval(value) -> int:
    """Checkpoint decoder layers 0, n, 2n, ... (n = this); 0 = none."""
    return _INTERVAL[checkpointing_name(value)]


def checkpointed_layers(value, num_layers: int) -> int:
    n = checkpoint_interval(value)
    return math.ceil(num_layers / n) if n else 0


def recompute_flops(shape: ModelShape, tokens: float, sum_sq_lengths: float, layers: int) -> float:
    """Extra FLOPs of recomputing ``layers`` decoder layers' forward over ``tokens`` (forward = 1/3
    of forward + backward; the loss head is never recomputed)."""
    useful = step_flops(shape, tokens, 0.0, sum_sq_lengths)  # the decoder layers only
    return useful / 3 * layers / shape.num_hidden_layers


# -- gradient reduce dtype -------------------------------------------------------------------------
def reduce_dtype_choice(cfg: DictConfig, world: int, gpus_per_node: int) -> Choice:
    given = str(cfg.deepspeed.get("reduce_dtype", "auto"))
    if given != "auto":
        return Choice(given, "deepspeed.reduce_dtype given", False)
    if cfg.model.dtype != "bfloat16":
        return Choice("fp32", f"model.dtype={cfg.model.dtype}: gradients are reduced in the model dtype", True)
    nodes = world // max(1, gpus_per_node)
    if nodes > 1:
        # Precision trade-off: a bf16 reduce-scatter rounds the running sum to bf16 (8-bit
        # mantissa, up to 2^-9 relative error) at every ring hop, so each averaged gradient carries
        # a small unbiased rounding noise, far below the gradient noise of a 0.5M-token batch, while
        # accumulation over micro-steps stays fp32 (data_types.grad_accum_dtype); an fp32 reduce is
        # exact but doubles the bytes on InfiniBand, ~8x slower than NVLink, which makes a
        # multi-node step network-bound (70B on 8 nodes: 12.3 s fp32 vs 8.5 s bf16 by this planner).
        return Choice("bf16", f"{nodes} nodes: the reduce-scatter crosses the inter-node network, where bf16 "
                              "halves the traffic (accumulation stays fp32)", True)
    return Choice("fp32", "one node: the reduce stays on NVLink, where overlap_comm hides it behind the "
                          "backward; fp32 keeps the sum exact", True)
