"""``plan``: the memory and time planner (``python -m llama3zh_dist.plan`` and the pre-flight check)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .base import one_of, require


@dataclass
class PlanConfig:
    format: str = "table"
    """table | json."""
    check: bool = True
    """Pre-flight refuses a run whose predicted peak exceeds the GPU memory."""
    mfu: float = 0.40
    """Assumed model FLOPs utilisation (8B/70B full SFT with ZeRO-3 on H100: 0.35-0.45)."""
    calibrate_from: Optional[str] = None
    """run.dir of an earlier run: its metrics.jsonl gives the measured MFU (or FLOP/s)."""
    comm_efficiency: float = 0.7
    """Achieved share of the table's NVLink / network bandwidth for ZeRO-3 collectives."""
    inter_node_gbytes_s: Optional[float] = None
    """Network GB/s per GPU, one direction (null = the GPU table's usual build)."""
    overhead_gib: float = 2.5
    """CUDA context, cuBLAS workspaces, NCCL channel buffers per GPU."""
    fragmentation: float = 0.05
    """Allocator fragmentation, as a share of everything else."""
    memory_margin: float = 0.1
    """Share of the GPU's memory the automatic choices (model.gradient_checkpointing=auto) leave free."""
    host_gib_per_rank: float = 4
    """Host RAM of one rank's process."""
    peak_supervised_share: float = 0.8
    """Supervised share of the fullest row (sizes the loss buffer)."""
    mean_sample_tokens: float = 600
    """Without a prepared dataset: mean tokens per conversation."""
    row_fill: float = 0.98
    """Without a prepared dataset: packed rows are this full."""
    supervised_share: float = 0.5
    """Without a prepared dataset: share of tokens that carry a label."""

    def __post_init__(self):
        one_of("format", self.format, ("table", "json"))
        require(0 < self.mfu <= 1, "mfu", self.mfu, "a utilisation is a share of the peak, in (0, 1]")
        require(0 < self.comm_efficiency <= 1, "comm_efficiency", self.comm_efficiency, "a share of the bandwidth, in (0, 1]")
        for key in ("fragmentation", "peak_supervised_share", "row_fill", "supervised_share", "memory_margin"):
            require(0 <= getattr(self, key) <= 1, key, getattr(self, key), "a share, in [0, 1]")
        require(self.overhead_gib >= 0, "overhead_gib", self.overhead_gib, "memory cannot be negative")
