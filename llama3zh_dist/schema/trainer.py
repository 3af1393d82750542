"""``trainer``: optimisation and the training loop."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from .base import require


@dataclass
class TrainerConfig:
    seed: int = 42
    """Seeds the model init, the data order and every rank's RNG."""
    max_steps: int = 1000
    """Optimizer steps to run; the LR schedule spans exactly these."""
    max_epochs: Optional[float] = 5
    """Pre-flight refuses a run that shows its data more often than this (null = no limit)."""
    lr: float = 1.0e-5
    """Peak learning rate."""
    min_lr_ratio: float = 0.1
    """Cosine decays to lr * min_lr_ratio."""
    warmup_ratio: float = 0.03
    """Share of max_steps spent in linear warmup."""
    weight_decay: float = 0.0
    adam_betas: List[float] = field(default_factory=lambda: [0.9, 0.95])
    adam_eps: float = 1.0e-8
    grad_clip: float = 1.0
    """Global gradient-norm clip (0 = off)."""
    micro_batch_size: int = 1
    """Rows per rank per forward pass."""
    global_batch_size: int = 64
    """Rows per optimizer step over all ranks; gradient accumulation is derived from it."""
    log_every: int = 1
    eval_every: int = 0
    """Validation every N steps (0 = off); needs data.val_fraction > 0."""
    eval_max_rows: int = 256
    max_bad_steps: int = 5
    """Consecutive non-finite steps tolerated (skipped) before the run stops."""
    progress_bar: bool = True

    def __post_init__(self):
        require(self.max_steps >= 1, "max_steps", self.max_steps, "training needs at least one optimizer step")
        require(self.max_epochs is None or self.max_epochs > 0, "max_epochs", self.max_epochs,
                "a run shows its data a positive number of times (null = no limit)")
        require(self.lr > 0, "lr", self.lr, "the learning rate must be positive (a zero or negative step does not train)")
        require(0 <= self.min_lr_ratio <= 1, "min_lr_ratio", self.min_lr_ratio,
                "the cosine floor is a share of the peak learning rate, in [0, 1]")
        require(0 <= self.warmup_ratio < 1, "warmup_ratio", self.warmup_ratio,
                "warmup is a share of max_steps, in [0, 1): the schedule must reach its peak")
        require(self.weight_decay >= 0, "weight_decay", self.weight_decay, "weight decay cannot be negative")
        require(len(self.adam_betas) == 2 and all(0 <= b < 1 for b in self.adam_betas), "adam_betas",
                list(self.adam_betas), "Adam needs two betas in [0, 1)")
        require(self.adam_eps > 0, "adam_eps", self.adam_eps, "Adam's epsilon must be positive (it guards a division)")
        require(self.grad_clip >= 0, "grad_clip", self.grad_clip, "a clipping norm cannot be negative (0 turns it off)")
        require(self.micro_batch_size >= 1, "micro_batch_size", self.micro_batch_size, "each pass needs at least one row")
        require(self.global_batch_size >= 1, "global_batch_size", self.global_batch_size, "each step needs at least one row")
        require(self.log_every >= 1, "log_every", self.log_every, "log at least every step count >= 1")
        require(self.eval_every >= 0, "eval_every", self.eval_every, "0 turns evaluation off; negative means nothing")
        require(self.max_bad_steps >= 0, "max_bad_steps", self.max_bad_steps, "a count of steps cannot be negative")
