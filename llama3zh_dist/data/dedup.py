"""Dedup: exact (normalised-text key) then near (MinHash LSH) duplicates among the kept rows; the
first in input order stays, the others are rejected naming the one they duplicate.

Both run on fixed-width columns with numpy (16-byte keys, 8-byte band hashes per LSH band); the
MinHash signatures themselves stay in the spill and are read back only for candidate pairs."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from ..schema.data import CleanConfig
from .clean import lsh_params, near_duplicates_banded
from .spill import Rows
from .verdicts import Verdicts


def _log(msg: str, enabled: bool = True) -> None:
    if enabled:
        print(f"[prep] {msg}", flush=True)


def _fixed_rows(rows: Rows, name: str, idx: np.ndarray, dtype, width: int) -> np.ndarray:
    """Rows ``idx`` of a non-null fixed-width column (binary(16), or list<uint64> of ``width``) as a
    numpy array [len(idx), ...] (no Python objects)."""
    col = rows.gather_all(name, idx)
    if isinstance(col, pa.ListArray):
        return col.flatten().to_numpy().reshape(len(idx), width)
    return np.frombuffer(col.buffers()[1], dtype=dtype, count=len(idx), offset=col.offset * np.dtype(dtype).itemsize)


def drop_exact_duplicates(rows: Rows, v: Verdicts) -> int:
    if not len(v.ok):
        return 0
    keys = _fixed_rows(rows, "key", v.ok, np.dtype("V16"), 16)
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    first_of = first[inverse.ravel()]  # position (in ok) of the first row with the same key
    dup = np.flatnonzero(first_of != np.arange(len(v.ok)))
    v.reject(v.ok[dup], "duplicate", ref=v.ok[first_of[dup]])
    v.ok = np.delete(v.ok, dup)
    return len(dup)


def drop_near_duplicates(rows: Rows, v: Verdicts, threshold: float, num_perm: int) -> int:
    n_bands = lsh_params(threshold, num_perm)[0]
    bands = _fixed_rows(rows, "bands", v.ok, np.uint64, n_bands)

    def similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        want = np.unique(np.concatenate([a, b]))
        sig = rows.gather_all("sig", v.ok[want]).flatten().to_numpy().reshape(len(want), num_perm)
        return (sig[np.searchsorted(want, a)] == sig[np.searchsorted(want, b)]).mean(axis=1)

    best = near_duplicates_banded(bands, similarity, threshold)  # position in ok -> earlier position
    dup = np.flatnonzero(best >= 0)
    v.reject(v.ok[dup], "near_duplicate", ref=v.ok[best[dup]])
    v.ok = np.delete(v.ok, dup)
    return len(dup)


def dedup(rows: Rows, v: Verdicts, clean: CleanConfig, progress: bool) -> dict:
    """Both passes as switched on in ``data.clean``; returns how many rows each removed."""
    n_dup = drop_exact_duplicates(rows, v) if clean.exact_dedup else 0
    n_near = 0
    if clean.near_dedup.enabled and len(v.ok):
        _log(f"near-duplicate search over {len(v.ok)} samples (MinHash LSH)", progress)
        n_near = drop_near_duplicates(rows, v, float(clean.near_dedup.threshold), int(clean.near_dedup.num_perm))
    return {"exact": n_dup, "near": n_near}
