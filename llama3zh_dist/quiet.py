"""Known third-party noise, silenced where it is raised, each entry with the reason it is harmless.

Only exact messages are filtered (never whole categories or modules), so a new warning from the
same library still shows.
"""

from __future__ import annotations

import logging
import sys
import warnings

# (message regex, category, why it is safe to hide)
_WARNINGS = [
    (r"`torch\.distributed\.(all_gather_into_tensor|reduce_scatter_tensor)` is deprecated",
     FutureWarning,
     "DeepSpeed's ZeRO-3 calls these torch APIs on every gather/reduce; torch warns once per call "
     "(thousands of lines a run). The calls work; the rename is DeepSpeed's to make."),
]

# (logger name, message prefix, why)
_LOG_LINES = [
    ("DeepSpeed", "Attempting to get learning rate from scheduler before it has started",
     "WarmupCosineLR logs this from its own constructor; the trainer steps the schedule to its "
     "first iteration right after (deepspeed_config.start_lr_schedule)."),
    ("ray._private.authentication.authentication_token_setup", "Token authentication is enabled for this Ray cluster",
     "Ray says so on every local start since token auth became its default: nothing to act on. The "
     "opposite message (auth disabled) is a real warning and still shows."),
    ("ray.data._internal.progress", "Progress bars disabled",
     "prep turns Ray Data's bars off on purpose: its own line shows rows/s and ETA over the whole input."),
]


class _DropMessages(logging.Filter):
    def __init__(self, prefixes: list[str]):
        super().__init__()
        self.prefixes = tuple(prefixes)

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefixes)


def silence_known_noise() -> None:
    """Install the filters (idempotent); call before DeepSpeed or Ray starts."""
    for pattern, category, _why in _WARNINGS:
        warnings.filterwarnings("ignore", message=pattern, category=category)
    for name in {n for n, _, _ in _LOG_LINES}:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) for f in logger.filters):
            logger.addFilter(_DropMessages([p for n, p, _ in _LOG_LINES if n == name]))


def no_progress_bars_off_a_terminal() -> None:
    """Weight-loading progress bars only for a person watching: a pipe or a log file gets none
    (a bar redrawn with carriage returns is noise in a file). Shared by chat and eval."""
    if sys.stderr.isatty():
        return
    from huggingface_hub.utils import disable_progress_bars
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    disable_progress_bars()
