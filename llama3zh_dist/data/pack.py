"""Pack: the training samples (repeats included) into rows of at most ``data.max_seq_len`` tokens
(best-fit decreasing, or one sample per row), rows shuffled from ``trainer.seed``; validation
samples one per row (unpacked, so each one's loss can be read on its own).

Only the plan is made here, from the samples' lengths: which samples form which row. The write step
builds the rows shard by shard from the spilled tokens (:meth:`.spill.Spill.shards`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .packing import best_fit_decreasing_flat
from .spill import Rows


def _log(msg: str, enabled: bool = True) -> None:
    if enabled:
        print(f"[prep] {msg}", flush=True)


@dataclass
class Packed:
    order: np.ndarray  # training samples in output order, row by row
    sizes: np.ndarray  # samples in each training row
    lengths: np.ndarray  # tokens of each training sample
    supervised: np.ndarray  # supervised tokens of each training sample
    efficiency: float  # tokens / (rows * max_seq_len)

    @property
    def rows(self) -> int:
        return len(self.sizes)


def _column(rows: Rows, name: str, idx: np.ndarray) -> np.ndarray:
    if not len(idx):
        return np.zeros(0, np.int64)
    return rows.numpy(name)[idx].astype(np.int64)


def _shuffle_bins(flat: np.ndarray, sizes: np.ndarray, perm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The bins in the order ``perm`` (flat layout: samples bin by bin, and samples per bin)."""
    starts = np.cumsum(sizes) - sizes
    new_sizes = sizes[perm]
    first = np.repeat(starts[perm] - (np.cumsum(new_sizes) - new_sizes), new_sizes)
    return flat[first + np.arange(len(first))], new_sizes


def pack(rows: Rows, train_idx: np.ndarray, max_len: int, packing: bool, seed: int, progress: bool) -> Packed:
    """``train_idx``: the processed row of each training sample."""
    lengths = _column(rows, "n_tokens", train_idx)
    if packing and len(lengths):
        _log(f"packing {len(lengths)} samples into rows of {max_len} tokens (best-fit decreasing)", progress)
        flat, sizes = best_fit_decreasing_flat(lengths, max_len)
    else:
        flat, sizes = np.arange(len(lengths)), np.ones(len(lengths), np.int64)
    rng = np.random.default_rng([seed, 7])
    if len(sizes):
        flat, sizes = _shuffle_bins(flat, sizes, rng.permutation(len(sizes)))
    return Packed(
        order=flat, sizes=sizes, lengths=lengths, supervised=_column(rows, "n_sup", train_idx),
        efficiency=float(lengths.sum()) / (len(sizes) * max_len) if len(sizes) else 0.0,
    )
