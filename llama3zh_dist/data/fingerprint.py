"""The prepared dataset's fingerprint: input bytes, tokenizer, template, settings, seed and pipeline
version. A rerun with the same fingerprint and every shard present is a cache hit."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from ..fileio import sha256_file
from ..llama3.chat_format import TEMPLATE_VERSION
from .sources import SourceSpec, hub_fingerprint

PIPELINE_VERSION = "4"  # bump when the output of the same inputs/settings changes


def compute_fingerprint(specs: list[SourceSpec], settings: dict, tok_fp: str, seed: int) -> tuple[str, dict]:
    """(fingerprint, what it covers); ``settings``: :func:`.settings.fingerprint_settings`."""
    inputs = []
    for spec in specs:
        if spec.hub:
            inputs.append({"source": spec.name, "hub": spec.hub, "version": hub_fingerprint(spec)})
        for f in spec.files:
            inputs.append({"source": spec.name, "file": os.path.basename(f), "sha256": sha256_file(Path(f))})
    payload = {
        "pipeline": PIPELINE_VERSION,
        "template": TEMPLATE_VERSION,
        "tokenizer": tok_fp,
        "seed": seed,
        "inputs": inputs,
        "sources": [s.settings() for s in specs],
        "settings": settings,
    }
    blob = json.dumps(payload, sort_keys=True, ensure_ascii=False, default=str).encode()
    return hashlib.sha256(blob).hexdigest(), payload


def read_manifest(out_dir: Path) -> dict | None:
    try:
        return json.loads((Path(out_dir) / "manifest.json").read_text())
    except (OSError, ValueError):
        return None


def up_to_date(out_dir: Path, fp: str) -> tuple[bool, bool]:
    """(is ``out_dir`` a complete dataset of fingerprint ``fp``, does it hold an older dataset)."""
    old = read_manifest(out_dir)
    if old is None:
        return False, False
    complete = all((out_dir / p).is_file() for p in old.get("shards", []) + old.get("val_shards", []))
    return old.get("fingerprint") == fp and complete, True
