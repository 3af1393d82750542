"""Pack: the training samples (repeats included) into rows of at most ``data.max_seq_len`` tokens
(best-fit decreasing, or one sample per row), rows shuffled from ``trainer.seed``; validation
samples one per row (unpacked, so each one's loss can be read on its own).

Only the plan is made here, from the samples' lengths: which samples form which row. The write step
builds the rows shard by shard from the spilled tokens (:meth:`.spill.Spill.shards`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from .packing import best_fit_decreasing
from .split_mix import Split


def _log(msg: str, enabled: bool = True) -> None:
    if enabled:
        print(f"[prep] {msg}", flush=True)


@dataclass
class Packed:
    bins: list[list[int]]  # training rows, each a list of sample indices, in output order
    sample_row: np.ndarray  # training sample -> processed row
    sample_ids: list[str]  # training sample -> its id (repeats: <id>#<copy>)
    val_row: np.ndarray  # validation sample -> processed row (one per output row)
    val_ids: list[str]
    lengths: np.ndarray  # tokens of each training sample
    supervised: np.ndarray  # supervised tokens of each training sample
    efficiency: float  # tokens / (rows * max_seq_len)

    @property
    def rows(self) -> int:
        return len(self.bins)


def _column(rows: pa.Table, name: str, idx: list[int]) -> np.ndarray:
    if not idx:
        return np.zeros(0, np.int64)
    return rows.column(name).to_numpy(zero_copy_only=False)[np.asarray(idx, dtype=np.int64)].astype(np.int64)


def pack(rows: pa.Table, split: Split, ids: list[str], max_len: int, packing: bool, seed: int,
         progress: bool) -> Packed:
    """``ids``: each processed row's sample id."""
    lengths = _column(rows, "n_tokens", split.train_idx)
    if packing and len(lengths):
        _log(f"packing {len(lengths)} samples into rows of {max_len} tokens (best-fit decreasing)", progress)
        bins = best_fit_decreasing(lengths, max_len)
    else:
        bins = [[i] for i in range(len(lengths))]
    rng = np.random.default_rng([seed, 7])
    bins = [bins[k] for k in rng.permutation(len(bins))] if bins else []
    return Packed(
        bins=bins,
        sample_row=np.asarray(split.train_idx, dtype=np.int64),
        sample_ids=[ids[i] if c == 0 else f"{ids[i]}#{c}" for i, c in zip(split.train_idx, split.copy_no)],
        val_row=np.asarray(split.val_idx, dtype=np.int64),
        val_ids=[ids[i] for i in split.val_idx],
        lengths=lengths,
        supervised=_column(rows, "n_sup", split.train_idx),
        efficiency=float(lengths.sum()) / (len(bins) * max_len) if bins else 0.0,
    )
