"""Consolidate a DeepSpeed ZeRO-3 checkpoint into a Hugging Face model folder.

Streaming (one tensor at a time from memory-mapped fp32 partitions), bounded memory (one shard plus
the largest tensor plus a fixed overhead), parallel (``workers`` shards at once), verified (names,
shapes, dtypes, checksums re-read, logits against the trained model), atomic (temp folder swapped
into place). ``python -m llama3zh_dist.export run.dir=... [export.step=N] [export.dtype=...]``.
"""

from .core import (
    check_complete_checkpoint,
    export_checkpoint,
    export_run,
    export_run_summary,
    resolve_checkpoint,
)
from .logits_check import LIMITS, judge_logits
from .wandb_log import log_export_to_wandb

__all__ = [
    "LIMITS",
    "judge_logits",
    "check_complete_checkpoint",
    "export_checkpoint",
    "export_run",
    "export_run_summary",
    "log_export_to_wandb",
    "resolve_checkpoint",
]
