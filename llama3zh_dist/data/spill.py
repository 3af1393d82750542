"""Processed rows on disk, so prep's memory does not grow with the input.

The map step hands every processed block to :meth:`Spill.add`: its heavy columns (``raw``,
``input_ids``, ``labels``) go to an Arrow IPC file, and the driver keeps only the light ones
(source, line, id, verdict, lengths, dedup keys, report flags) plus where each row's heavy part is
(``spill_file``, ``spill_row``). Dedup, split and mix, packing decisions and the report need only
the light columns; the write step reads the heavy ones back one file at a time:

- :meth:`Spill.shards` scatters the training (or validation) samples into one bucket file per output
  shard, then builds each shard's rows from its bucket alone (one spill file, then one shard's
  samples in memory: bounded by ``data.shard_rows`` x ``data.max_seq_len``, whatever the input);
- :meth:`Spill.raws` yields the raw text of given rows in the order asked, a window at a time.

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

from .packing import build_rows

HEAVY = ("raw", "input_ids", "labels", "sig")
# Output rows built (and written as one Parquet row group) at a time: bounds the write step's memory
# by piece_rows x max_seq_len tokens plus one shard's samples, whatever data.shard_rows is.
PIECE_ROWS = 512


@dataclass
class Samples:
    """What the write step needs of each output sample, a few bytes each: where its tokens are in
    the spill, its id (``<id>#<copy>`` for repeats) and its source."""

    file: np.ndarray  # int32: spill file
    row: np.ndarray  # int32: row in that file
    ids: pa.Array  # string
    source: pa.DictionaryArray  # source names

    def __len__(self) -> int:
        return len(self.file)


def _take(path: Path, columns: Sequence[str], rows: np.ndarray) -> pa.Table:
    """Rows ``rows`` of ``columns`` of a spill file, copied out of the map (only their pages are read)."""
    with pa.memory_map(str(path)) as src:
        return pa.ipc.open_file(src).read_all().select(list(columns)).take(pa.array(rows, pa.int64()))


class Spill:
    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True)
        self.files = 0

    def cleanup(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    def _path(self, k: int) -> Path:
        return self.folder / f"block-{k:06d}.arrow"

    def add(self, block: pa.Table) -> pa.Table:
        """Store the heavy columns of ``block``; return its light columns and where the rest is."""
        k, self.files = self.files, self.files + 1
        heavy = block.select(list(HEAVY))
        with pa.ipc.new_file(str(self._path(k)), heavy.schema) as w:
            w.write_table(heavy)
        n = block.num_rows
        # a copy: a block from Ray is a view of its object-store buffer, and a view of one column
        # would keep the whole block (tokens and all) alive
        light = block.drop_columns(list(HEAVY)).take(pa.array(np.arange(n, dtype=np.int64)))
        light = light.append_column("spill_file", pa.array(np.full(n, k, dtype=np.int32)))
        return light.append_column("spill_row", pa.array(np.arange(n, dtype=np.int32)))

    def samples(self, rows: pa.Table, idx: np.ndarray, ids: pa.Array, source: pa.DictionaryArray) -> Samples:
        """The :class:`Samples` of light rows ``idx`` (``ids``, ``source``: theirs, in that order)."""
        take = pa.array(idx, pa.int64())
        return Samples(file=rows.column("spill_file").take(take).to_numpy(),
                       row=rows.column("spill_row").take(take).to_numpy(), ids=ids, source=source)

    # ---------------------------------------------------------------- a heavy column, in a given order
    def column(self, rows: pa.Table, name: str, idx: Sequence[int], window: int = 8192) -> Iterator[pa.Array]:
        """Column ``name`` of light rows ``idx``, in that order, as arrays of up to ``window`` rows
        (rows in input order come from a few neighbouring files per window)."""
        files = rows.column("spill_file").to_numpy()
        at = rows.column("spill_row").to_numpy()
        idx = np.asarray(idx, dtype=np.int64)
        for start in range(0, len(idx), window):
            part = idx[start:start + window]
            f_of = files[part]
            pieces, where = [], []
            for f in np.unique(f_of):
                sel = np.flatnonzero(f_of == f)
                pieces.append(_take(self._path(int(f)), [name], at[part[sel]]).column(name).combine_chunks())
                where.append(sel)
            got = pa.concat_arrays(pieces)
            yield got.take(pa.array(np.argsort(np.concatenate(where), kind="stable"), pa.int64()))

    def raws(self, rows: pa.Table, idx: Sequence[int]) -> Iterator[str]:
        """The ``raw`` of light rows ``idx``, in that order."""
        for arr in self.column(rows, "raw", idx):
            yield from arr.to_pylist()

    def signatures(self, rows: pa.Table, idx: np.ndarray) -> np.ndarray:
        """The MinHash signatures of light rows ``idx`` (all kept rows: non-null), [len(idx), num_perm]."""
        parts = [a.flatten().to_numpy().reshape(len(a), -1) for a in self.column(rows, "sig", idx, window=1 << 16)]
        return np.concatenate(parts) if parts else np.zeros((0, 0), np.uint32)

    # ---------------------------------------------------------------- output shards
    def shards(self, samples: Samples, order: np.ndarray, sizes: np.ndarray, shard_rows: int, *, packed: bool = True,
               piece_rows: int = PIECE_ROWS) -> Iterator[Iterator[pa.Table]]:
        """Per output shard of at most ``shard_rows`` rows, its rows as tables of at most ``piece_rows``
        rows (one Parquet row group each): row ``r`` holds samples ``order[...]``, ``sizes[r]`` of
        them. Columns as :func:`.packing.build_rows`: with ``sources`` (``packed``), or one sample per
        row and its ``source`` (validation)."""
        if not len(sizes):
            return
        row_of = np.repeat(np.arange(len(sizes)), sizes)  # output position -> output row
        shard_of = row_of // shard_rows  # output position -> shard
        n_shards = -(-len(sizes) // shard_rows)
        buckets = self._scatter(samples.file[order], samples.row[order], shard_of, n_shards)
        del row_of
        first_pos = np.searchsorted(shard_of, np.arange(n_shards))
        for s in range(n_shards):
            r0, r1 = s * shard_rows, min(len(sizes), (s + 1) * shard_rows)
            yield self._pieces(buckets, s, sizes[r0:r1], int(first_pos[s]), samples, order, packed, piece_rows)

    def _pieces(self, buckets: list[Path], s: int, sizes: np.ndarray, p0: int, samples: Samples, order: np.ndarray,
                packed: bool, piece_rows: int) -> Iterator[pa.Table]:
        """One shard's rows, ``piece_rows`` at a time, from its bucket (its samples start at output
        position ``p0``)."""
        with pa.memory_map(str(buckets[s])) as src:
            bucket = pa.ipc.open_stream(src).read_all()  # this shard's samples, in spill order
            in_order = np.argsort(bucket.column("pos").to_numpy(), kind="stable")
            k = 0
            for r0 in range(0, len(sizes), piece_rows):
                part = sizes[r0:r0 + piece_rows]
                n = int(part.sum())
                which = pa.array(order[p0 + k:p0 + k + n], pa.int64())
                tokens = bucket.select(["input_ids", "labels"]).take(pa.array(in_order[k:k + n]))  # a copy
                tokens = tokens.append_column("id", samples.ids.take(which))
                tokens = tokens.append_column("source", samples.source.take(which).cast(pa.string()))
                local = np.split(np.arange(n), np.cumsum(part)[:-1])
                k += n
                if packed:
                    yield build_rows(tokens, local)
                else:
                    yield build_rows(tokens, local, extra=()).append_column("source", tokens.column("source"))
            del bucket
        buckets[s].unlink()

    def _scatter(self, files: np.ndarray, at: np.ndarray, shard_of: np.ndarray, n_shards: int) -> list[Path]:
        """Write each output position's ``input_ids``/``labels`` (from spill file ``files[p]``, row
        ``at[p]``) into its shard's bucket file (with its position), reading each spill file once."""
        paths = [self.folder / f"bucket-{s:06d}.arrow" for s in range(n_shards)]
        schema = pa.schema([("input_ids", pa.list_(pa.int32())), ("labels", pa.list_(pa.int32())),
                            ("pos", pa.int64())])
        writers = [pa.ipc.new_stream(str(p), schema) for p in paths]
        try:
            by_file = np.argsort(files, kind="stable")
            bounds = np.flatnonzero(np.diff(files[by_file])) + 1
            for group in np.split(by_file, bounds) if len(by_file) else []:
                part = _take(self._path(int(files[group[0]])), ["input_ids", "labels"], at[group])
                part = part.append_column("pos", pa.array(group, pa.int64()))
                dest = shard_of[group]
                for s in np.unique(dest):
                    writers[int(s)].write_table(part.filter(pa.array(dest == s)))
        finally:
            for w in writers:
                w.close()
        return paths
