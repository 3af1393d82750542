"""Dedup: exact (normalised-text key) then near (MinHash LSH) duplicates among the kept rows; the
first in input order stays, the others are rejected naming the one they duplicate."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from ..schema.data import CleanConfig
from .clean import near_duplicates
from .verdicts import Verdicts


def _log(msg: str, enabled: bool = True) -> None:
    if enabled:
        print(f"[prep] {msg}", flush=True)


def drop_exact_duplicates(rows: pa.Table, v: Verdicts) -> int:
    keys = rows.column("key").to_pylist()
    first: dict[bytes, int] = {}
    kept = []
    for i in v.ok:
        j = first.setdefault(keys[i], i)
        if j != i:
            v.reject(i, "duplicate", f"same conversation as {v.ids[j]}")
        else:
            kept.append(i)
    n_dup = len(v.ok) - len(kept)
    v.ok = kept
    return n_dup


def drop_near_duplicates(rows: pa.Table, v: Verdicts, threshold: float, num_perm: int) -> int:
    sig_col = rows.column("sig").combine_chunks()
    flat = sig_col.flatten().to_numpy().reshape(-1, num_perm) if len(sig_col) else np.zeros((0, num_perm))
    # only kept rows have signatures (rejected rows have null ones): map row index -> signature row
    valid = np.flatnonzero(sig_col.is_valid().to_numpy(zero_copy_only=False))
    pos = np.full(v.n, -1, dtype=np.int64)
    pos[valid] = np.arange(len(valid))
    sigs = flat[pos[np.asarray(v.ok, dtype=np.int64)]].astype(np.uint64)
    dup_of = near_duplicates(v.ok, sigs, threshold, num_perm)  # row index -> the row it duplicates
    for i, j in dup_of.items():
        v.reject(i, "near_duplicate", f"near-duplicate of {v.ids[j]}")
    if dup_of:
        v.ok = [i for i in v.ok if i not in dup_of]
    return len(dup_of)


def dedup(rows: pa.Table, v: Verdicts, clean: CleanConfig, progress: bool) -> dict:
    """Both passes as switched on in ``data.clean``; returns how many rows each removed."""
    n_dup = drop_exact_duplicates(rows, v) if clean.exact_dedup else 0
    n_near = 0
    if clean.near_dedup.enabled and v.ok:
        _log(f"near-duplicate search over {len(v.ok)} samples (MinHash LSH)", progress)
        n_near = drop_near_duplicates(rows, v, float(clean.near_dedup.threshold), int(clean.near_dedup.num_perm))
    return {"exact": n_dup, "near": n_near}
