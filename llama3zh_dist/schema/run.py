"""The root sections: ``run``, ``checkpoint``, ``export``, ``chat``."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, List, Optional

from .base import one_of, require

_SIZE = re.compile(r"^\s*\d+(\.\d+)?\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)


@dataclass
class RunConfig:
    name: str = "sft"
    """Names the run (W&B, default folder)."""
    dir: str = "runs/${run.name}"
    """The run folder: rerunning the same command on it resumes."""


@dataclass
class CheckpointConfig:
    every_steps: int = 500
    """Checkpoint interval in optimizer steps (0 = off)."""
    every_minutes: float = 0
    """Also checkpoint when this many minutes passed since the last one (0 = off)."""
    keep: int = 2
    """Complete checkpoints kept."""
    resume: bool = True
    """Continue from run.dir/checkpoints/latest when present."""

    def __post_init__(self):
        require(self.every_steps >= 0, "every_steps", self.every_steps, "0 turns step checkpoints off; negative means nothing")
        require(self.every_minutes >= 0, "every_minutes", self.every_minutes, "0 turns timed checkpoints off")
        require(self.keep >= 2, "keep", self.keep, "at least 2, so that a damaged newest checkpoint has a fallback")


@dataclass
class ExportConfig:
    enabled: bool = True
    """Export at the end of training."""
    step: Optional[Any] = None
    """Which checkpoint to export (null = the latest complete one)."""
    dtype: str = "bfloat16"
    """Dtype of the exported weights."""
    max_shard_size: str = "5GB"
    """Largest safetensors file, e.g. 5GB or 500MB."""
    workers: int = 4
    """Shards written in parallel."""
    verify: Any = True
    """true: check names/shapes/dtypes/checksums and logits; full: also re-hash the checkpoint; false: off."""
    gguf: List[str] = field(default_factory=list)
    """GGUF files for llama.cpp / Ollama / LM Studio, written to export/gguf/model-<type>.gguf: any of
    bf16, f16, q8_0 (e.g. [f16, q8_0]); [] = none."""

    def __post_init__(self):
        for t in self.gguf:
            one_of("gguf", t, ("bf16", "f16", "q8_0"), "the GGUF types written here; give a list, e.g. [f16,q8_0]")
        one_of("dtype", self.dtype, ("bfloat16", "float16", "float32"),
               "safetensors exports are floating point; int8 would lose the trained weights")
        require(bool(_SIZE.match(str(self.max_shard_size))), "max_shard_size", self.max_shard_size,
                "give a size such as 5GB, 500MB or a number of bytes")
        require(self.workers >= 1, "workers", self.workers, "at least one writer")


@dataclass
class ChatConfig:
    prompt: Optional[str] = None
    """One-shot: answer this prompt on stdout and exit; "-" reads stdin."""
    system: Optional[str] = None
    max_new_tokens: int = 256
    temperature: float = 0.0
    """0 = greedy."""
    top_p: float = 0.9
    repetition_penalty: float = 1.0

    def __post_init__(self):
        require(self.max_new_tokens >= 1, "max_new_tokens", self.max_new_tokens, "an answer needs at least one token")
        require(self.temperature >= 0, "temperature", self.temperature, "0 is greedy; negative means nothing")
        require(0 < self.top_p <= 1, "top_p", self.top_p, "nucleus sampling keeps a share of probability in (0, 1]")
        require(self.repetition_penalty > 0, "repetition_penalty", self.repetition_penalty, "a penalty factor must be positive")
