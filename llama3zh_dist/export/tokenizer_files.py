"""The tokenizer files of an export.

Checkpoints carry the tokenizer the run trained with (``step_N/tokenizer/``, saved by rank 0 and
checksummed in ``complete.json``): the export copies those files, hashing them on the way, so the
export holds byte for byte the tokenizer the weights were trained with, and loading, converting and
re-saving the 128k-entry Llama 3 vocabulary (about 1.5 s of a small export) is not needed.
Checkpoints saved before they carried a tokenizer are exported with a tokenizer object
(``load_tokenizer(model.path)``), saved with ``save_pretrained`` and checked on the files.
"""

from __future__ import annotations

import hashlib
import json
import pathlib

from llama3zh_dist.checkpoint_layout import MARKER, TOKENIZER_DIR
from llama3zh_dist.errors import UserError


def checkpoint_tokenizer_files(info: dict) -> list[str]:
    """Names of the tokenizer files a checkpoint's ``complete.json`` lists (empty for older ones)."""
    prefix = TOKENIZER_DIR + "/"
    return sorted(f[len(prefix):] for f in (info.get("files") or {}) if f.startswith(prefix))


def has_checkpoint_tokenizer(ckpt_dir) -> bool:
    marker = pathlib.Path(ckpt_dir) / MARKER
    try:
        return bool(checkpoint_tokenizer_files(json.loads(marker.read_text())))
    except (OSError, ValueError):
        return False


def _chat_template_of(folder: pathlib.Path) -> str | None:
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text()
    cfg = folder / "tokenizer_config.json"
    return json.loads(cfg.read_text()).get("chat_template") if cfg.is_file() else None


def copy_checkpoint_tokenizer(ckpt_dir: pathlib.Path, info: dict, dest: pathlib.Path) -> dict:
    """Copy ``ckpt_dir/tokenizer/*`` into ``dest``; each file's SHA-256, taken while copying, must equal
    ``complete.json``'s (a damaged file stops the export, as a damaged weight file would)."""
    names = checkpoint_tokenizer_files(info)
    for name in names:
        sha = hashlib.sha256()
        with open(ckpt_dir / TOKENIZER_DIR / name, "rb") as src, open(dest / name, "wb") as out:
            while chunk := src.read(1 << 20):
                sha.update(chunk)
                out.write(chunk)
        if sha.hexdigest() != info["files"][f"{TOKENIZER_DIR}/{name}"]:
            raise UserError(f"checkpoint {ckpt_dir}: {TOKENIZER_DIR}/{name} does not match its checksum in {MARKER} "
                            "(damaged on disk); export another with export.step=N")
    if "tokenizer.json" not in names or not _chat_template_of(dest):
        raise UserError(f"checkpoint {ckpt_dir}: {TOKENIZER_DIR}/ lacks tokenizer.json or a chat template; "
                        "export another with export.step=N")
    return {"source": f"{TOKENIZER_DIR}/ of the checkpoint, SHA-256 as in {MARKER}", "files": len(names)}


def save_tokenizer(tokenizer, dest: pathlib.Path) -> dict:
    """``save_pretrained``, then the files checked: ``tokenizers`` parses tokenizer.json to the same
    vocabulary size, and the chat template reads back exactly (checked on the files rather than by a
    full ``AutoTokenizer`` reload, which would cost ~80 MB for the Llama 3 vocabulary; the tests load
    the export with ``AutoTokenizer``)."""
    tokenizer.save_pretrained(dest)
    if _chat_template_of(dest) != getattr(tokenizer, "chat_template", None):
        raise RuntimeError("export verification failed: the saved tokenizer's chat template differs")
    tj = dest / "tokenizer.json"
    if tj.is_file() and hasattr(tokenizer, "backend_tokenizer"):
        from tokenizers import Tokenizer

        back = Tokenizer.from_file(str(tj))
        if back.get_vocab_size(with_added_tokens=True) != tokenizer.backend_tokenizer.get_vocab_size(with_added_tokens=True):
            raise RuntimeError("export verification failed: the saved tokenizer has another vocabulary size")
    return {"source": "save_pretrained of the tokenizer given (the checkpoint carries none)"}


def write_tokenizer(dest: pathlib.Path, ckpt_dir: pathlib.Path, info: dict, tokenizer) -> dict | None:
    """The checkpoint's own tokenizer files when it has them; else ``tokenizer`` (an object, or a
    callable that loads one, called only then) saved; None when there is neither."""
    if checkpoint_tokenizer_files(info):
        return copy_checkpoint_tokenizer(ckpt_dir, info, dest)
    if tokenizer is not None and not hasattr(tokenizer, "save_pretrained") and callable(tokenizer):
        tokenizer = tokenizer()
    return None if tokenizer is None else save_tokenizer(tokenizer, dest)
