"""``model``: which weights, in which dtype, with which attention."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from .base import one_of, require

ATTENTION = ("auto", "flash_attention_2", "torch_varlen", "sdpa", "eager")
DTYPES = ("bfloat16", "float16", "float32")
CHECKPOINTING = ("auto", "every_layer", "every_second_layer", "none", True, False)


@dataclass
class ModelConfig:
    path: Optional[str] = None
    """A local Hugging Face model folder or a Hub id (the tokenizer comes from it too)."""
    init: str = "pretrained"
    """pretrained: load ``path``; random: build ``arch`` with fresh weights (quickstart, tests)."""
    arch: Optional[Any] = None
    """For init=random: LlamaConfig fields (hidden_size, num_hidden_layers, ...)."""
    dtype: str = "bfloat16"
    """Training compute dtype: bfloat16 on GPU, float32 on CPU."""
    attn_implementation: str = "auto"
    """auto: on CUDA flash_attention_2 if flash-attn imports, else torch_varlen (torch's built-in
    varlen kernel, same packed-row boundaries), else sdpa; on CPU sdpa (llama3zh_dist/attention.py).
    Or one of them by name; sdpa and eager keep packed samples apart with a [T, T] block mask."""
    gradient_checkpointing: Any = "auto"
    """Recompute activations in the backward: every_layer (~1/3 more compute, least memory),
    every_second_layer, none; auto: the fastest that fits the GPU with plan.memory_margin (the plan
    prints the choice). true/false mean every_layer/none."""
    init_special_token_rows: bool = True
    """Mean-initialise the untrained chat-token embedding rows of base checkpoints."""
    trust_remote_code: bool = False
    """Run code shipped with the model folder; off unless the user turns it on."""

    def __post_init__(self):
        one_of("init", self.init, ("pretrained", "random"))
        require(self.init != "random" or bool(self.arch), "arch", self.arch,
                "model.init=random builds the model from model.arch: give its LlamaConfig fields (see conf/model/tiny.yaml)")
        one_of("dtype", self.dtype, DTYPES)
        one_of("attn_implementation", self.attn_implementation, ATTENTION)
        one_of("gradient_checkpointing", self.gradient_checkpointing, CHECKPOINTING)
