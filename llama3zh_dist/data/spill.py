"""Processed rows on disk, so prep's memory does not grow with the input.

The map step hands every processed block to :meth:`Spill.add`, which writes it as two Arrow IPC
files: the heavy columns (``raw``, tokens, MinHash signatures) and the light ones (source, line, id,
verdict, lengths, dedup keys, report flags). The driver keeps nothing of a block but its row count;
:class:`Rows` reads columns back when a step needs them, one file at a time:

- :meth:`Rows.column`: a whole light column (the driver's per-row decisions work on these: a few
  bytes per row, for as long as the step runs);
- :meth:`Rows.gather`: some columns of given rows in the order asked, a window at a time (rejects,
  repairs, the signatures of near-duplicate candidates);
- :meth:`Spill.shards`: the output shards, built one at a time from a bucket file per shard
  (bounded by ``data.shard_rows`` x ``data.max_seq_len``, whatever the input).

Hand-written because neither Ray Data nor pyarrow.dataset gathers rows by index across files
without loading them all; the spill folder lives next to ``data.out_dir`` and is removed at the end.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .packing import build_rows

HEAVY = ("raw", "input_ids", "labels", "sig")
# Output rows built (and written as one Parquet row group) at a time: bounds the write step's memory
# by piece_rows x max_seq_len tokens plus one shard's samples, whatever data.shard_rows is.
PIECE_ROWS = 128


def _copy(col: pa.ChunkedArray | pa.Array) -> pa.Array:
    """One contiguous copy (a column read from a memory map must not keep the map alive)."""
    chunks = col.chunks if isinstance(col, pa.ChunkedArray) else [col]
    return pa.concat_arrays(chunks) if chunks else pa.array([], col.type)


class Spill:
    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True)
        self.sizes: list[int] = []  # rows of each block, in the order they were added

    def cleanup(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    def _path(self, k: int, columns: Sequence[str]) -> Path:
        part = "heavy" if columns[0] in HEAVY else "light"
        assert all((c in HEAVY) == (part == "heavy") for c in columns), columns
        return self.folder / f"{part}-{k:06d}.arrow"

    def add(self, block: pa.Table) -> None:
        """Write ``block`` (its heavy and its light columns, two files)."""
        k = len(self.sizes)
        light = [c for c in block.column_names if c not in HEAVY]
        for cols in (list(HEAVY), light):
            part = block.select(cols)
            with pa.ipc.new_file(str(self._path(k, cols)), part.schema) as w:
                w.write_table(part)
        self.sizes.append(block.num_rows)

    def rows(self) -> Rows:
        return Rows(self)

    def read(self, k: int, columns: Sequence[str], at: np.ndarray | None = None) -> pa.Table:
        """Columns of block ``k`` (rows ``at`` of it, in that order, or all), copied out of the map."""
        with pa.memory_map(str(self._path(k, columns))) as src:
            t = pa.ipc.open_file(src).read_all().select(list(columns))
            if at is not None:
                return t.take(pa.array(at, pa.int64()))
            return pa.table({c: _copy(t.column(c)) for c in columns})

    # ---------------------------------------------------------------- output shards
    def shards(self, samples: Samples, order: np.ndarray, sizes: np.ndarray, shard_rows: int, *, packed: bool = True,
               piece_rows: int = PIECE_ROWS) -> Iterator[Iterator[pa.Table]]:
        """Per output shard of at most ``shard_rows`` rows, its rows as tables of at most ``piece_rows``
        rows (one Parquet row group each): output row ``r`` holds the next ``sizes[r]`` samples of
        ``order``. Columns as :func:`.packing.build_rows`: with ``sources`` (``packed``), or one
        sample per row and its ``source`` (validation)."""
        if not len(sizes):
            return
        shard_of = np.repeat(np.arange(len(sizes)) // shard_rows, sizes)  # output position -> shard
        n_shards = -(-len(sizes) // shard_rows)
        buckets = self._scatter(samples.pos[order], shard_of, n_shards)
        pa.default_memory_pool().release_unused()  # what reading every spill file left cached
        first_pos = np.searchsorted(shard_of, np.arange(n_shards))
        del shard_of
        for s in range(n_shards):
            r0, r1 = s * shard_rows, min(len(sizes), (s + 1) * shard_rows)
            yield self._pieces(buckets[s], sizes[r0:r1], samples.copy_no[order[first_pos[s]:]], packed, piece_rows)

    def _pieces(self, bucket_path: Path, sizes: np.ndarray, copy_no: np.ndarray, packed: bool,
                piece_rows: int) -> Iterator[pa.Table]:
        """One shard's rows, ``piece_rows`` at a time, from its bucket (``copy_no``: of its samples,
        in output order, and maybe more)."""
        with pa.memory_map(str(bucket_path)) as src:
            bucket = pa.ipc.open_stream(src).read_all()  # this shard's samples, in spill order
            in_order = np.argsort(bucket.column("pos").to_numpy(), kind="stable")
            k, tokens = 0, None
            for r0 in range(0, len(sizes), piece_rows):
                part = sizes[r0:r0 + piece_rows]
                n = int(part.sum())
                tokens = bucket.select(["input_ids", "labels", "id", "source"]).take(pa.array(in_order[k:k + n]))
                tokens = tokens.set_column(2, "id", _copy_ids(tokens.column("id"), copy_no[k:k + n]))
                local = np.split(np.arange(n), np.cumsum(part)[:-1])
                k += n
                if packed:
                    yield build_rows(tokens, local)
                else:
                    yield build_rows(tokens, local, extra=()).append_column("source", tokens.column("source"))
            del bucket, tokens
        bucket_path.unlink()
        pa.default_memory_pool().release_unused()

    def _scatter(self, pos: np.ndarray, shard_of: np.ndarray, n_shards: int) -> list[Path]:
        """Write each output position's tokens, id and source (the row at spill position ``pos[p]``)
        into its shard's bucket file (with its position), reading each spill file once."""
        paths = [self.folder / f"bucket-{s:06d}.arrow" for s in range(n_shards)]
        schema = pa.schema([("input_ids", pa.list_(pa.int32())), ("labels", pa.list_(pa.int32())),
                            ("id", pa.string()), ("source", pa.string()), ("pos", pa.int64())])
        writers = [pa.ipc.new_stream(str(p), schema) for p in paths]
        starts = np.cumsum([0] + self.sizes)
        try:
            by_pos = np.argsort(pos, kind="stable")  # output positions, by spill position
            block = np.searchsorted(starts, pos[by_pos], side="right") - 1
            bounds = np.flatnonzero(np.diff(block)) + 1
            for b0, b1 in zip(np.r_[0, bounds], np.r_[bounds, len(by_pos)]) if len(by_pos) else []:
                group, k = by_pos[b0:b1], int(block[b0])
                at = pos[group] - starts[k]
                heavy = self.read(k, ["input_ids", "labels"], at)
                light = self.read(k, ["id", "source"], at)
                part = pa.table({"input_ids": heavy.column(0), "labels": heavy.column(1), "id": light.column(0),
                                 "source": light.column(1), "pos": pa.array(group, pa.int64())}, schema=schema)
                dest = shard_of[group]
                for s in np.unique(dest):
                    writers[int(s)].write_table(part.filter(pa.array(dest == s)))
        finally:
            for w in writers:
                w.close()
        return paths


def _copy_ids(ids: pa.ChunkedArray, copy_no: np.ndarray) -> pa.Array:
    """``<id>#<copy>`` for the repeats of an up-sampled row (its first copy keeps its id)."""
    ids = _copy(ids)
    if not len(ids) or not copy_no.any():
        return ids
    joined = pc.binary_join_element_wise(ids, pc.cast(pa.array(copy_no), pa.string()), "#")
    return pc.if_else(pa.array(copy_no == 0), ids, joined)


@dataclass
class Samples:
    """What the write step needs of each output sample: its spill position and copy number (0, or
    1, 2, ... for the repeats of an up-sampled row). 12 bytes each; the rest is read at write time."""

    pos: np.ndarray  # int64
    copy_no: np.ndarray  # int32

    def __len__(self) -> int:
        return len(self.pos)


class Rows:
    """The processed rows, on disk: columns read back on demand. Row ``i`` is spill position
    ``order[i]`` (all positions in the order they were spilled, unless :meth:`take` chose others)."""

    def __init__(self, spill: Spill, order: np.ndarray | None = None):
        self.spill = spill
        self.starts = np.cumsum([0] + spill.sizes)
        self.order = order

    @property
    def num_rows(self) -> int:
        return int(self.starts[-1]) if self.order is None else len(self.order)

    def positions(self, idx) -> np.ndarray:
        idx = np.asarray(idx, dtype=np.int64)
        return idx if self.order is None else self.order[idx]

    def take(self, idx) -> Rows:
        """These rows, reordered or subset (``idx``: numpy or Arrow indices)."""
        idx = idx.to_numpy() if isinstance(idx, (pa.Array, pa.ChunkedArray)) else np.asarray(idx)
        return Rows(self.spill, self.positions(idx))

    def samples(self, idx: np.ndarray, copy_no: np.ndarray | None = None) -> Samples:
        copy_no = np.zeros(len(idx), np.int32) if copy_no is None else np.asarray(copy_no, np.int32)
        return Samples(pos=self.positions(idx), copy_no=copy_no)

    def column(self, name: str) -> pa.Array:
        """A whole light column, in row order (a copy; one spill file at a time)."""
        parts = [self.spill.read(k, [name]).column(0) for k in range(len(self.spill.sizes))]
        if not parts:
            return pa.array([], self.spill_type(name))
        col = pa.chunked_array(parts)
        return _copy(col) if self.order is None else col.take(pa.array(self.order, pa.int64())).combine_chunks()

    def numpy(self, name: str) -> np.ndarray:
        return self.column(name).to_numpy(zero_copy_only=False)

    def gather(self, columns: Sequence[str], idx, window: int = 8192) -> Iterator[pa.Table]:
        """``columns`` (all heavy or all light) of rows ``idx``, in that order, as tables of up to
        ``window`` rows; each window reads only the spill files its rows are in."""
        pos = self.positions(idx)
        for start in range(0, len(pos), window):
            part = pos[start:start + window]
            block = np.searchsorted(self.starts, part, side="right") - 1
            pieces, where = [], []
            for k in np.unique(block):
                sel = np.flatnonzero(block == k)
                pieces.append(self.spill.read(int(k), columns, part[sel] - self.starts[k]))
                where.append(sel)
            got = pa.concat_tables(pieces)
            yield got.take(pa.array(np.argsort(np.concatenate(where), kind="stable"), pa.int64())).combine_chunks()

    def gather_all(self, name: str, idx) -> pa.Array:
        """Column ``name`` of rows ``idx``, in that order, as one array."""
        parts = [t.column(0) for t in self.gather([name], idx, window=1 << 16)]
        return _copy(pa.chunked_array(parts)) if parts else pa.array([], self.spill_type(name))

    @staticmethod
    def spill_type(name: str) -> pa.DataType:
        from .process import OUTPUT_SCHEMA

        return OUTPUT_SCHEMA.field(name).type
