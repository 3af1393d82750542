"""Pack: the training samples (repeats included) into rows of at most ``data.max_seq_len`` tokens
(best-fit decreasing, or one sample per row), rows shuffled from ``trainer.seed``; validation
samples one per row (unpacked, so each one's loss can be read on its own)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from .packing import best_fit_decreasing, build_rows
from .split_mix import Split


def _log(msg: str, enabled: bool = True) -> None:
    if enabled:
        print(f"[prep] {msg}", flush=True)


@dataclass
class Packed:
    train: pa.Table  # SPEC columns + sources
    val: pa.Table | None
    lengths: np.ndarray  # tokens of each training sample
    supervised: np.ndarray  # supervised tokens of each training sample
    rows: int
    efficiency: float  # tokens / (rows * max_seq_len)


def empty_rows() -> pa.Table:
    li = pa.list_(pa.int32())
    ls = pa.list_(pa.string())
    return pa.table(
        {"input_ids": pa.array([], li), "labels": pa.array([], li), "position_ids": pa.array([], li),
         "sample_ids": pa.array([], ls), "sources": pa.array([], ls)}
    )


def _samples(rows: pa.Table, idx: list[int], ids: list[str], columns: list[str]) -> pa.Table:
    return rows.select(columns).take(pa.array(idx, type=pa.int64())).append_column("id", pa.array(ids, pa.string()))


def pack(rows: pa.Table, split: Split, ids: list[str], max_len: int, packing: bool, seed: int,
         progress: bool) -> Packed:
    """``ids``: each processed row's sample id (repeats get ``<id>#<copy>``)."""
    sample_ids = [ids[i] if c == 0 else f"{ids[i]}#{c}" for i, c in zip(split.train_idx, split.copy_no)]
    samples = _samples(rows, split.train_idx, sample_ids, ["input_ids", "labels", "source", "n_tokens", "n_sup"])
    n = samples.num_rows
    lengths = samples.column("n_tokens").to_numpy().astype(np.int64) if n else np.zeros(0, np.int64)
    supervised = samples.column("n_sup").to_numpy().astype(np.int64) if n else np.zeros(0, np.int64)
    if packing and len(lengths):
        _log(f"packing {len(lengths)} samples into rows of {max_len} tokens (best-fit decreasing)", progress)
        bins = best_fit_decreasing(lengths, max_len)
    else:
        bins = [[i] for i in range(len(lengths))]
    rng = np.random.default_rng([seed, 7])
    bins = [bins[k] for k in rng.permutation(len(bins))] if bins else []
    train = build_rows(samples, bins) if bins else empty_rows()
    eff = float(lengths.sum()) / (len(bins) * max_len) if bins else 0.0
    val = None
    if split.val_idx:
        vt = _samples(rows, split.val_idx, [ids[i] for i in split.val_idx], ["input_ids", "labels", "source", "n_tokens"])
        val = build_rows(vt, [[k] for k in range(vt.num_rows)], extra=()).append_column("source", vt.column("source"))
    return Packed(train=train, val=val, lengths=lengths, supervised=supervised, rows=len(bins), efficiency=eff)
