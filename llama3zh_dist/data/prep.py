"""Data preparation: sources -> validated, cleaned, tokenised, mixed, packed Parquet shards.

``prepare_dataset(cfg)`` is the whole pipeline (``python -m llama3zh_dist.prep`` and the prep step of
training call it, before any process group exists), as named steps:

1. read (:mod:`.stream`, :mod:`.readers`): every row of every source as a stream of blocks; JSONL
   lines and JSON array records stay raw text so a bad one is a reject; a truncated file keeps its
   complete records and the rest is one reject;
2. map (:mod:`.map_rows`, per row :mod:`.process`): in parallel with Ray Data (in-process below
   ``data.ray.min_rows`` rows or with ``data.ray.workers=0``, block by block as read): parse, map
   the format, clean, repair (``data.repair.*``), validate, refusal filter, tokenise with the Llama 3
   template and mask labels, handle over-long samples, compute dedup keys;
3. dedup (:mod:`.dedup`): exact and near (MinHash LSH) duplicates;
4. split and mix (:mod:`.split_mix`): per-source validation split, mixture weights (deterministic
   from ``trainer.seed``);
5. pack (:mod:`.pack`): best-fit-decreasing packing plan (which samples form which row);
6. report (:mod:`.report`): ``data_report.json``, rejects and repairs records;
7. write (:mod:`.write`): ``rejects.jsonl``, ``repairs.jsonl``, ``data_report.json``, shards,
   ``val/`` and, last, ``manifest.json`` into a temp folder that is swapped into place.

Memory (bench/bench_prep_memory.py): steps 1-2 hold the reader's buffer (~1 MiB plus the record
being read) and one block (``data.ray.block_rows`` rows) in-process, or a window of
``8 x workers`` blocks with Ray, whatever the input size. Every processed block goes to disk as it
is done (:mod:`.spill`: tokens, raw text and signatures in one file, the per-row metadata in
another). Steps 3-6 read back the columns they decide on and keep per row only numpy arrays of a
few dozen bytes (source, input-order rank, verdict, the row a duplicate repeats; 12 bytes per
output sample; near-dedup adds 8 bytes per LSH band, 32 at the default threshold, and at most 96
bytes per row more while it searches: tests/unit/test_clean.py), and step 7 builds the shards one
at a time from a bucket file per shard: peak memory
is a fixed part (libraries, tokenizer, one shard's tokens: ``data.shard_rows`` x
``data.max_seq_len`` x 8 bytes) plus those few dozen bytes per row, not the size of the text.
Measured (``bench_prep_memory.py --scaling``, tests/distributed/test_prep_memory.py), the driver's
peak grows by 1-2 KB per row at 10k-80k rows, with or without Ray or near-dedup: more than the
arrays above; what holds the rest is not yet accounted for (a naive whole-file prep: ~8.5 KB).

The fingerprint (:mod:`.fingerprint`) makes a rerun with nothing changed a cache hit.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import numpy as np

from ..llama3.chat_format import TEMPLATE_VERSION
from ..llama3.hf_tokenizer import load_encoder
from ..schema.data import DataConfig
from .dedup import dedup
from .fingerprint import compute_fingerprint, up_to_date
from .map_rows import map_rows, proc_workers
from .pack import pack
from .repair import REPAIRS
from .report import add_repairs, build_report, reject_records, write_rejects, write_repairs
from .settings import data_config, fingerprint_settings, process_settings, resolve_out_dir
from .sources import source_specs
from .spill import Spill
from .split_mix import split_and_mix
from .stream import raw_blocks
from .verdicts import Verdicts
from .write import write_dataset


def _log(msg: str, enabled: bool = True) -> None:
    if enabled:
        print(f"[prep] {msg}", flush=True)


def prepare_dataset(cfg) -> Path:
    """Prepare ``cfg.data`` into ``cfg.data.out_dir`` (cache hit if the fingerprint matches). Besides
    ``cfg.data`` it reads ``trainer.seed``, ``model.path`` and ``model.trust_remote_code``."""
    dc = data_config(cfg.data)
    specs = source_specs(cfg.data)
    out_dir = resolve_out_dir(cfg)
    seed, model_path = int(cfg.trainer.seed), cfg.model.path
    encoder, tok_fp = load_encoder(model_path, bool(cfg.model.trust_remote_code))
    fp, fp_payload = compute_fingerprint(specs, fingerprint_settings(dc), tok_fp, seed)
    current, existing = up_to_date(out_dir, fp)
    if current:
        _log(f"cache hit: {out_dir} is up to date (fingerprint {fp[:12]}); nothing to do", dc.progress)
        return out_dir
    if existing:
        _log(f"inputs or settings changed since {out_dir} was prepared: rebuilding", dc.progress)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    spill = Spill(out_dir.parent / f".{out_dir.name}.spill-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        header = {"fingerprint": fp, "name": str(dc.name), "max_seq_len": int(dc.max_seq_len),
                  "packing": bool(dc.packing), "train_on": dc.train_on, "template": TEMPLATE_VERSION,
                  "tokenizer": {"model_path": model_path, "fingerprint": tok_fp}, "seed": seed}
        _prepare(dc, specs, out_dir, seed, process_settings(specs, dc, encoder, fp), spill, header, fp_payload)
    finally:
        spill.cleanup()
    return out_dir


def _prepare(dc: DataConfig, specs, out_dir: Path, seed: int, proc_settings: dict, spill: Spill, header: dict,
             fp_payload: dict) -> None:
    t_start = time.time()
    report, train, val = _plan(dc, specs, out_dir, seed, proc_settings, spill)
    report.update(name=str(dc.name), fingerprint=header["fingerprint"], out_dir=str(out_dir),
                  rejects_file=str(out_dir / "rejects.jsonl"), seconds=round(time.time() - t_start, 2))
    shard_rows = int(dc.shard_rows)
    write_dataset(
        out_dir, report=report,
        train=spill.shards(*train, shard_rows),
        val=spill.shards(*val, shard_rows, packed=False),
        records=[spill.folder / "rejects.jsonl", spill.folder / "repairs.jsonl"], header=header,
        fp_payload=fp_payload, max_reject_fraction=float(dc.max_reject_fraction),
    )
    _log(f"wrote {out_dir} in {time.time() - t_start:.1f}s", bool(dc.progress))


def _plan(dc: DataConfig, specs, out_dir: Path, seed: int, proc_settings: dict, spill: Spill):
    """Steps 1-6: the report, ``rejects.jsonl`` and ``repairs.jsonl`` (into the spill folder) and,
    for the training and the validation shards, (samples, order, samples per row). What this keeps
    per row is freed on return, before the shards are built."""
    progress = bool(dc.progress)
    t_start = time.time()
    meta: dict = {}
    blocks = raw_blocks(specs, int(dc.ray.block_rows), progress, meta)  # read (lazily, as map pulls)
    t_read = time.time()
    # map; the heavy columns (raw text, tokens, MinHash signatures) go to disk as each block is done
    rows, map_timings = map_rows(blocks, dc.ray, proc_settings, progress, spill)
    t_proc = time.time()
    names = [s.name for s in specs]
    verdicts = Verdicts(rows, names)
    removed = dedup(rows, verdicts, dc.clean, progress)
    split = split_and_mix(verdicts, specs, float(dc.val_fraction), seed)
    packed = pack(rows, split.train_idx, int(dc.max_seq_len), bool(dc.packing), seed, progress)
    report = build_report(rows, verdicts, split, packed, removed, specs, meta, dc)
    write_rejects(spill.folder / "rejects.jsonl", reject_records(rows, verdicts), meta["files"])
    repair_counts = write_repairs(spill.folder / "repairs.jsonl", rows, split.kept_rows, meta["files"])
    add_repairs(report, repair_counts, meta["read_errors"], dc.repair, REPAIRS, out_dir)
    report.update(
        timings={
            "read_s": round(t_read - t_start, 3),  # set-up; reading streams into process_s
            "process_s": round(t_proc - t_read, 3),  # the parallel (Ray Data) stage, Ray start-up included
            "ray_start_s": map_timings["ray_start_s"],
            "assemble_s": round(time.time() - t_proc, 3),  # dedup, mixture, packing plan, records
        },
        workers=proc_workers(dc.ray, report["read"]),
    )
    n_val = len(split.val_idx)
    return (report, (rows.samples(split.train_idx, split.copy_no), packed.order, packed.sizes),
            (rows.samples(split.val_idx), np.arange(n_val), np.ones(n_val, np.int64)))
