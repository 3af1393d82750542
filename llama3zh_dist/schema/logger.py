"""``logger``: Weights & Biases."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from .base import one_of


@dataclass
class LoggerConfig:
    mode: str = "offline"
    """offline (run.dir/wandb, sync later) | online (needs WANDB_API_KEY) | disabled."""
    project: str = "llama3zh_dist"
    entity: Optional[str] = None
    group: Optional[str] = None
    """Groups runs in W&B (a sweep sets it to the sweep's name)."""
    tags: List[str] = field(default_factory=list)

    def __post_init__(self):
        one_of("mode", self.mode, ("offline", "online", "disabled"))
