"""Prep's settings: ``cfg.data`` as the typed :class:`~llama3zh_dist.schema.data.DataConfig`.

The defaults live in ``conf/data/_common.yaml`` and the schema, the checks in the schema's
``__post_init__``; this module only builds the dataclass (so prep sees the same values and the same
refusals as composition) and derives what the per-row stage needs from it.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from ..errors import UserError
from ..schema import ConfigValueError, _build
from ..schema.data import DataConfig
from .sources import SourceSpec


def data_config(data_cfg) -> DataConfig:
    """``cfg.data`` (a DictConfig node) as the typed dataclass; a rejected value is a UserError naming the key."""
    try:
        return _build(DataConfig, data_cfg, "data.")
    except ConfigValueError as e:
        raise UserError(f"{e.key}={e.value!r} is rejected: {e.reason}") from None


def resolve_out_dir(cfg) -> Path:
    return Path(os.path.expanduser(str(cfg.data.out_dir))).absolute()


def fingerprint_settings(dc: DataConfig) -> dict:
    """The settings that change the output (not where it goes, how it runs or what is printed)."""
    s = dataclasses.asdict(dc)
    return {k: v for k, v in s.items() if k not in ("out_dir", "ray", "progress", "sources", "files")}


def process_settings(specs: list[SourceSpec], dc: DataConfig, encoder, key: str) -> dict:
    """What the per-row stage (:func:`llama3zh_dist.data.process.process_batch`) needs, as plain
    picklable values (it runs in Ray workers; ``key`` names the cached per-worker tools)."""
    return {
        "key": key,
        "specs": {s.name: {**s.__dict__} for s in specs},
        "multi_file": {s.name: len(s.files) > 1 for s in specs},
        "clean": dataclasses.asdict(dc.clean),
        "encoder": encoder,
        "max_seq_len": int(dc.max_seq_len),
        "overlong": dc.overlong,
        "train_on": dc.train_on,
        "raw_max_chars": int(dc.rejects_raw_max_chars),
        "assistant_header_len": len(encoder.header_ids("assistant")),
        "repair": dataclasses.asdict(dc.repair),
    }
