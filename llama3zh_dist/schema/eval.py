"""``eval``: CMMLU / C-Eval accuracy and chat samples, on an export or during training."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional

from .base import require

BENCHMARKS = ("cmmlu", "ceval", "chat")


@dataclass
class BenchmarkSource:
    path: Optional[str] = None
    """A local folder in the benchmark's official layout, or a Hub id."""


@dataclass
class ChatSamplesConfig:
    prompts: List[str] = field(default_factory=lambda: ["data/eval/chat_prompts.jsonl"])
    """JSONL files of conversations to answer greedily (bundled ones first; add your own)."""
    max_new_tokens: int = 256
    """Answers longer than this count as not stopped at <|eot_id|>."""
    identity_name: Optional[str] = None
    """The name identity answers should use (defaults to data.clean.identity.name)."""

    def __post_init__(self):
        require(self.max_new_tokens >= 1, "max_new_tokens", self.max_new_tokens, "an answer needs at least one token")


@dataclass
class EvalConfig:
    benchmarks: List[str] = field(default_factory=lambda: list(BENCHMARKS))
    """Any of cmmlu, ceval, chat."""
    cmmlu: BenchmarkSource = field(default_factory=lambda: BenchmarkSource("haonan-li/cmmlu"))
    ceval: BenchmarkSource = field(default_factory=lambda: BenchmarkSource("ceval/ceval-exam"))
    subjects: Optional[List[str]] = None
    """null = every subject found; or a list of subject names."""
    shots: int = 0
    """k-shot examples from dev/ (lm-evaluation-harness's cmmlu / ceval-valid default is 0)."""
    chat_template: bool = False
    """false: the plain prompt as lm-evaluation-harness scores it (comparable with published numbers);
    true: the prompt as a user turn of the chat template."""
    every_steps: int = 0
    """Evaluate during training every this many optimizer steps (0 = off)."""
    step: Optional[Any] = None
    """With run.dir: evaluate checkpoints/step_<N> instead of the export."""
    out_dir: Optional[str] = None
    """null = run.dir/eval/<step_N|export>."""
    chat: ChatSamplesConfig = field(default_factory=ChatSamplesConfig)

    def __post_init__(self):
        unknown = [b for b in self.benchmarks if b not in BENCHMARKS]
        require(not unknown, "benchmarks", list(self.benchmarks), f"use any of {', '.join(BENCHMARKS)}")
        require(self.shots >= 0, "shots", self.shots, "a number of dev examples cannot be negative")
        require(self.every_steps >= 0, "every_steps", self.every_steps, "0 turns evaluation during training off")
