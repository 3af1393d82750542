"""What an export folder gains after its weights are verified: GGUF files (``export.gguf``) and the
model card, both listed in ``SHA256SUMS``. Used after training/export and on an existing export
folder (``python -m llama3zh_dist.export model.path=<export> export.gguf=[f16]``)."""

from __future__ import annotations

import logging
import pathlib
import time

log = logging.getLogger(__name__)


def add_gguf(export_dir, types, *, say=print) -> dict[str, str]:
    """Write ``gguf/model-<type>.gguf`` per type and list each in ``SHA256SUMS``; returns type -> path."""
    from .gguf_export import gguf_filename, write_gguf
    from .sums import update_sums

    export_dir = pathlib.Path(export_dir)
    out = {}
    for t in dict.fromkeys(types or []):
        t0 = time.time()
        say(f"writing GGUF {t} ...")
        p = write_gguf(export_dir, t)
        update_sums(export_dir, [gguf_filename(t)])
        say(f"GGUF {t}: {p} ({p.stat().st_size / 1e6:.1f} MB, {time.time() - t0:.1f}s)")
        out[t] = str(p)
    return out


def finish_export(export_dir, run_dir, gguf_types) -> dict:
    """GGUF files, then the model card (which lists them)."""
    import sys

    from .card import write_card

    files = add_gguf(export_dir, gguf_types, say=lambda m: print(m, file=sys.stderr, flush=True))
    card = write_card(export_dir, run_dir)
    return {"gguf": files, "card": str(card)}
