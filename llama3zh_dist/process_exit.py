"""How a command's process ends: ``exit_process(main())`` in each ``python -m`` entry point."""

from __future__ import annotations

import gc
import sys
from typing import NoReturn


def exit_process(code: int | None) -> NoReturn:
    """``sys.exit(code)``, leaving the objects alive now to the OS instead of the garbage collector.

    A training rank holds over half a million tracked objects (transformers, DeepSpeed, the
    tokenizer) and Python's shutdown runs several full collections over them: about 3 s at every
    exit of every rank (every attempt of a requeued job, every sweep trial), about 1 s for the
    chat, eval and export commands. Freezing them first skips that work. The commands have written
    and closed their files by now and nothing left needs a finaliser; atexit handlers (W&B's,
    logging's flush) still run, which ``os._exit`` would skip.

    Only for the process's own entry point: frozen objects that become garbage later are never
    freed, which a long-lived caller (a test session importing ``main``) must not suffer.
    """
    gc.freeze()
    sys.exit(code)
