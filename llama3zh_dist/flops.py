"""Training FLOPs of a Llama step: the one formula behind the logged MFU and the planner's time.

Counted (forward + backward = 3 x forward, the convention of PaLM's MFU, Chowdhery et al. 2022,
appendix B; recomputation from gradient checkpointing is not useful work and is not counted):

- matmuls of the decoder layers: 6 x (non-embedding matmul parameters) per token. The input
  embedding is a lookup (no FLOPs) and the norms are elementwise;
- ``lm_head``: 6 x hidden x vocab per *supervised* token only, because the model projects only the
  positions whose next token is a label (``logits_to_keep``);
- attention scores and weighted values: 12 x layers x hidden x l^2 per sample of length l (QK^T and
  AV, 2 x 2 x l^2 x hidden forward, x 3 with backward), summed over the real samples of a packed
  row: samples do not attend across each other, so a row of 16 samples of 512 tokens costs 1/16 of
  one 8192-token sample. As in PaLM, the causal mask is not discounted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch


@dataclass(frozen=True)
class ModelShape:
    """The Llama dimensions the FLOP and memory formulas need."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    tie_word_embeddings: bool = False
    head_dim: int | None = None

    @classmethod
    def from_config(cls, config) -> "ModelShape":
        """From a Hugging Face config object or a config.json dict."""
        get = config.get if isinstance(config, dict) else (lambda k, d=None: getattr(config, k, d))
        heads = int(get("num_attention_heads"))
        return cls(
            vocab_size=int(get("vocab_size")),
            hidden_size=int(get("hidden_size")),
            intermediate_size=int(get("intermediate_size")),
            num_hidden_layers=int(get("num_hidden_layers")),
            num_attention_heads=heads,
            num_key_value_heads=int(get("num_key_value_heads", None) or heads),
            tie_word_embeddings=bool(get("tie_word_embeddings", False)),
            head_dim=int(get("head_dim", None) or int(get("hidden_size")) // heads),
        )

    @property
    def kv_dim(self) -> int:
        return self.num_key_value_heads * (self.head_dim or self.hidden_size // self.num_attention_heads)

    @property
    def q_dim(self) -> int:
        return self.num_attention_heads * (self.head_dim or self.hidden_size // self.num_attention_heads)

    @property
    def layer_matmul_params(self) -> int:
        """q, k, v, o projections and the SwiGLU MLP of one decoder layer."""
        h = self.hidden_size
        return 2 * h * self.q_dim + 2 * h * self.kv_dim + 3 * h * self.intermediate_size

    @property
    def non_embedding_matmul_params(self) -> int:
        return self.num_hidden_layers * self.layer_matmul_params

    @property
    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size

    @property
    def total_params(self) -> int:
        """Every parameter, as ``sum(p.numel() for p in model.parameters())`` counts them."""
        h = self.hidden_size
        norms = self.num_hidden_layers * 2 * h + h
        heads = 1 if self.tie_word_embeddings else 2
        return self.non_embedding_matmul_params + norms + heads * self.embedding_params

    @property
    def largest_layer_params(self) -> int:
        """Parameters of the largest single module (DeepSpeed's ``model_to_params`` definition)."""
        h = self.hidden_size
        return max(self.embedding_params, h * self.intermediate_size, h * self.q_dim)


def sample_lengths(position_ids: torch.Tensor) -> list[int]:
    """Lengths of the samples of a packed row: a sample starts where its position id is 0."""
    pos = position_ids.reshape(-1)
    starts = (pos == 0).nonzero().flatten().tolist()
    if not starts or starts[0] != 0:
        starts = [0, *starts]
    ends = [*starts[1:], int(pos.numel())]
    return [e - s for s, e in zip(starts, ends)]


def step_flops(shape: ModelShape, tokens: float, supervised_tokens: float, sum_sq_lengths: float) -> float:
    """FLOPs of one optimizer step (forward + backward) over ``tokens`` tokens (see module doc)."""
    matmuls = 6.0 * shape.non_embedding_matmul_params * tokens
    head = 6.0 * shape.hidden_size * shape.vocab_size * supervised_tokens
    attention = 12.0 * shape.num_hidden_layers * shape.q_dim * sum_sq_lengths
    return matmuls + head + attention


def micro_batch_flops(shape: ModelShape, micro_batches: Iterable) -> float:
    """FLOPs of the given micro-batches (``MicroBatch`` objects of one rank)."""
    total = 0.0
    for m in micro_batches:
        sq = float(sum(n * n for n in sample_lengths(m.position_ids)))
        total += step_flops(shape, m.tokens, m.supervised_tokens, sq)
    return total
