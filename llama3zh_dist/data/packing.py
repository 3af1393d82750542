"""Best-fit-decreasing packing of samples into rows of at most ``max_seq_len`` tokens.

Each sample keeps its own ``position_ids`` (0..len-1), so a packed row is a sequence of independent
samples: the trainer builds a block-diagonal causal mask (CPU/SDPA) or varlen FlashAttention from
the position_ids restarts, and no token attends across samples.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from typing import Sequence

import numpy as np
import pyarrow as pa


def best_fit_decreasing_flat(lengths: Sequence[int], capacity: int) -> tuple[np.ndarray, np.ndarray]:
    """Best-fit-decreasing as flat arrays: (sample indices, bin by bin; samples per bin). Samples
    longest first, each into the open bin with the least room that still fits it, else a new bin.
    O(n log n + n * distinct rooms); a few bytes per sample (no list per bin), so millions of samples
    pack in bounded memory.

    Ties are broken by index (stable sort; the newest bin with a given room), so the result is
    deterministic. Every index appears in exactly one bin; lengths above capacity raise ValueError.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if len(lengths) and int(lengths.max()) > capacity:
        raise ValueError(f"a sample of {int(lengths.max())} tokens does not fit max_seq_len={capacity}")
    order = np.argsort(-lengths, kind="stable")
    bin_of = np.empty(len(lengths), dtype=np.int64)  # by position in ``order``
    n_bins = 0
    rooms: list[int] = []  # sorted distinct remaining capacities that have >= 1 open bin
    bins_with_room: dict[int, list[int]] = {}
    for k, n in enumerate(lengths[order].tolist()):
        i = bisect_left(rooms, n)
        if i == len(rooms):
            b, n_bins = n_bins, n_bins + 1
            room = capacity - n
        else:
            room_before = rooms[i]
            stack = bins_with_room[room_before]
            b = stack.pop()
            if not stack:
                del bins_with_room[room_before]
                rooms.pop(i)
            room = room_before - n
        bin_of[k] = b
        if room > 0:
            stack = bins_with_room.get(room)
            if stack is None:
                bins_with_room[room] = [b]
                insort(rooms, room)
            else:
                stack.append(b)
    # bins in the order they were opened, each one's samples in the order they went in
    flat = order[np.argsort(bin_of, kind="stable")]
    return flat, np.bincount(bin_of, minlength=n_bins)


def best_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """:func:`best_fit_decreasing_flat` as a list of bins (lists of sample indices)."""
    flat, sizes = best_fit_decreasing_flat(lengths, capacity)
    return [b.tolist() for b in np.split(flat, np.cumsum(sizes)[:-1])] if len(sizes) else []


def packing_efficiency(lengths: Sequence[int], bins: Sequence[Sequence[int]], capacity: int) -> float:
    """Real tokens / row slots (rows * capacity)."""
    if not bins:
        return 0.0
    return float(np.sum(np.asarray(lengths, dtype=np.int64))) / (len(bins) * capacity)


def position_ids_for(lengths: np.ndarray) -> np.ndarray:
    """Concatenated 0..len-1 ranges, vectorised."""
    lengths = np.asarray(lengths, dtype=np.int64)
    total = int(lengths.sum())
    starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
    return (np.arange(total, dtype=np.int64) - starts).astype(np.int32)


def build_rows(samples: pa.Table, bins: Sequence[Sequence[int]], extra: Sequence[str] = ("source",)) -> pa.Table:
    """Rows from per-sample columns (``input_ids``, ``labels`` list<int32>, ``id`` string and the
    ``extra`` string columns) and bins of sample indices: ``input_ids``, ``labels``, ``position_ids``
    list<int32>, ``sample_ids`` list<string> and ``<extra>s`` list<string> (e.g. ``sources``)."""
    order = np.fromiter((i for b in bins for i in b), dtype=np.int64, count=sum(len(b) for b in bins))
    per_bin = np.fromiter((len(b) for b in bins), dtype=np.int64, count=len(bins))
    taken = samples.take(pa.array(order, type=pa.int64()))
    ids_col = taken.column("input_ids").combine_chunks()
    lab_col = taken.column("labels").combine_chunks()
    lens = np.diff(ids_col.offsets.to_numpy()).astype(np.int64)
    # row offsets in tokens: sum of sample lengths per bin
    sample_bin_end = np.cumsum(per_bin)
    tok_cum = np.concatenate([[0], np.cumsum(lens)])
    row_tok_offsets = tok_cum[np.concatenate([[0], sample_bin_end])].astype(np.int32)
    row_sample_offsets = np.concatenate([[0], sample_bin_end]).astype(np.int32)
    ids_values = ids_col.flatten()
    lab_values = lab_col.flatten()
    pos_values = pa.array(position_ids_for(lens), type=pa.int32())
    off = pa.array(row_tok_offsets, type=pa.int32())
    soff = pa.array(row_sample_offsets, type=pa.int32())
    cols = {
        "input_ids": pa.ListArray.from_arrays(off, ids_values.cast(pa.int32())),
        "labels": pa.ListArray.from_arrays(off, lab_values.cast(pa.int32())),
        "position_ids": pa.ListArray.from_arrays(off, pos_values),
        "sample_ids": pa.ListArray.from_arrays(soff, taken.column("id").combine_chunks().cast(pa.string())),
    }
    for name in extra:
        if name in samples.column_names:
            cols[name + "s"] = pa.ListArray.from_arrays(soff, taken.column(name).combine_chunks().cast(pa.string()))
    return pa.table(cols)


def block_causal_mask(position_ids):
    """Boolean [B, 1, T, T] mask (True = may attend) for packed rows: causal within each sample,
    nothing across samples; samples start where position_ids restart at 0. The SDPA/eager mask of
    ``model.packed_attention_mask`` (transformers takes a 4D mask as is); on GPU varlen
    FlashAttention gets the same boundaries from position_ids."""
    import torch

    pos = torch.as_tensor(position_ids)
    if pos.dim() == 1:
        pos = pos[None]
    seg = torch.cumsum((pos == 0).long(), dim=-1)  # sample number of each token
    t = pos.shape[-1]
    causal = torch.ones(t, t, dtype=torch.bool, device=pos.device).tril()
    same = seg[:, :, None] == seg[:, None, :]
    return (same & causal)[:, None]
