"""Write: the prepared-dataset folder, built in a temp folder next to ``data.out_dir`` and swapped
into place last, so a crash never leaves a folder that looks complete. A run that fails its checks
(too many rejects, nothing left to train on) leaves ``<out_dir>.failed`` with the report and the
rejects instead, and says so."""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import UserError
from ..fileio import swap_dir_into_place

FORMAT_VERSION = 1
COLUMNS = ["input_ids", "labels", "position_ids", "sample_ids", "sources"]
# Dictionary-encode only the columns of few distinct values: a token column has up to 128k ids, its
# dictionary outgrows the page limit and Parquet falls back to plain encoding after building it for
# nothing (several times the row group in memory).
DICTIONARY_COLUMNS = ["sources"]


def write_shards(folder: Path, shards: Iterable[Iterable[pa.Table]]) -> list[str]:
    """One ``part-NNNNN.parquet`` per shard, each piece of it one row group."""
    names = []
    for s, pieces in enumerate(shards):
        name = f"part-{s:05d}.parquet"
        writer = None
        try:
            for piece in pieces:
                if writer is None:
                    writer = pq.ParquetWriter(folder / name, piece.schema, compression="zstd", use_dictionary=DICTIONARY_COLUMNS)
                writer.write_table(piece)
        finally:
            if writer is not None:
                writer.close()
        names.append(name)
    return names


def write_val(folder: Path, tables: Iterable[Iterable[pa.Table]]) -> list[str]:
    (folder / "val").mkdir()
    names = ["val/" + n for n in write_shards(folder / "val", tables)]
    if not names:
        (folder / "val").rmdir()
    return names


def _write_report(folder: Path, report: dict) -> None:
    (folder / "data_report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")


def _fail(tmp: Path, out_dir: Path, report: dict, message: str) -> None:
    """Keep what was written (report, rejects) as ``<out_dir>.failed`` and raise ``message``."""
    failed = out_dir.parent / f"{out_dir.name}.failed"
    report["rejects_file"] = str(failed / "rejects.jsonl")
    _write_report(tmp, report)
    if failed.exists():
        shutil.rmtree(failed)
    os.replace(tmp, failed)
    raise UserError(message.format(rejects=failed / "rejects.jsonl"))


def check_outcome(tmp: Path, out_dir: Path, report: dict, max_reject_fraction: float) -> None:
    """Fail (into ``.failed``) above ``data.max_reject_fraction`` or with no training sample left."""
    frac = report["rejected_validation"] / max(report["read"], 1)
    if frac > float(max_reject_fraction):
        top = ", ".join(f"{r} ({n})" for r, n in Counter(report["validation_by_reason"]).most_common(3))
        _fail(tmp, out_dir, report,
              f"data.max_reject_fraction={max_reject_fraction} exceeded: "
              f"{report['rejected_validation']} of {report['read']} rows ({frac:.1%}) failed validation; "
              f"top reasons: {top}. Every rejected row and its reason is in {{rejects}}. "
              f"Fix the data or the source format, or raise data.max_reject_fraction.")
    if report["train_samples"] == 0:
        _fail(tmp, out_dir, report,
              f"data: no training sample left ({report['read']} rows read, {report['rejected']} rejected, "
              f"{report['val_samples']} held out by data.val_fraction). Check data.files / data.sources and "
              f"{{rejects}}.")


def manifest(report: dict, header: dict, shards: list[str], val_shards: list[str], fp_payload: dict) -> dict:
    """``manifest.json``: ``header`` (fingerprint, name, settings that shape rows, tokenizer, seed)
    plus the shards, the counts and what the fingerprint covers."""
    return {
        "format_version": FORMAT_VERSION,
        **header,
        "created_unix": time.time(),
        "columns": COLUMNS,
        "shards": shards,
        "val_shards": val_shards,
        "counts": {k: report[k] for k in ("read", "kept", "rejected", "rejected_validation", "train_samples",
                                          "val_samples")}
        | {"rows": report["packing"]["rows"], "tokens": report["tokens"],
           "supervised_tokens": report["supervised_tokens"]},
        "packing_efficiency": report["packing"]["efficiency"],
        "inputs": fp_payload["inputs"],
        "settings": fp_payload["settings"],
    }


def write_dataset(out_dir: Path, *, report: dict, train: Iterable[Iterable[pa.Table]], val: Iterable[Iterable[pa.Table]],
                  records: list[Path], header: dict, fp_payload: dict, max_reject_fraction: float) -> None:
    """``train``/``val``: the shards' tables, built as they are written; ``records``: files written
    already (``rejects.jsonl``, ``repairs.jsonl``), moved in first."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        for path in records:
            os.replace(path, tmp / path.name)
        check_outcome(tmp, out_dir, report, max_reject_fraction)
        shards = write_shards(tmp, train)
        val_shards = write_val(tmp, val)
        _write_report(tmp, report)
        text = json.dumps(manifest(report, header, shards, val_shards, fp_payload), indent=2,
                          ensure_ascii=False, default=str)
        (tmp / "manifest.json").write_text(text + "\n")  # last: its presence marks the folder complete
        swap_dir_into_place(tmp, out_dir, old_name=f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
