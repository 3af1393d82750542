"""Distributed, resumable reading of a prepared dataset.

The order of rows is a pure function of (seed, epoch): epoch ``e`` visits the rows in the
permutation ``default_rng([seed, e])``. Optimizer step ``s`` (from 1) takes the global rows
``(s-1)*G .. s*G-1`` of that endless sequence, G being the global batch in rows. Resuming at step
``s`` is therefore O(1), replays nothing, and the rows of a step do not depend on the world size
(rank ``r`` takes the r-th contiguous share), so a run resumed on a different number of ranks
still sees the same data per step. torch's DistributedSampler has none of these properties
(it pads or drops per epoch and its position is not addressable by step), hence this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from ..llama3.tokens import IGNORE_INDEX


def read_rows(folder: Path, pattern: str = "part-*.parquet") -> pa.Table:
    files = sorted(Path(folder).glob(pattern))
    if not files:
        raise FileNotFoundError(f"no {pattern} in {folder}")
    return pa.concat_tables([pq.read_table(f, memory_map=True) for f in files])


@dataclass
class MicroBatch:
    """One forward pass: the rows of a micro-batch flattened into a single packed sequence.

    Flattening (instead of padding to a rectangle) wastes no compute on padding; samples stay
    apart because ``position_ids`` restart at 0 for each sample, which transformers turns into a
    block-diagonal causal mask (SDPA) or varlen FlashAttention.
    """

    input_ids: torch.Tensor  # [1, T] int64
    position_ids: torch.Tensor  # [1, T] int64
    logits_mask: torch.Tensor  # [1, T] bool: positions whose next token is a label
    targets: torch.Tensor  # [n_supervised] int64: the labels predicted at logits_mask positions
    sample_ids: list[str]
    sources: list[str]
    # Varlen attention boundaries, once per micro-batch (FlashAttention would otherwise derive them
    # from the position_ids restarts in every layer, with a host sync each time):
    cu_seq_lens: torch.Tensor | None = None  # [n_samples + 1] int32: start of each sample, then T
    max_length: int = 0  # longest sample, as a Python int

    @property
    def tokens(self) -> int:
        return int(self.input_ids.numel())

    @property
    def supervised_tokens(self) -> int:
        return int(self.targets.numel())


def collate(rows: list[dict]) -> MicroBatch:
    ids = np.concatenate([np.asarray(r["input_ids"], dtype=np.int64) for r in rows])
    labels = np.concatenate([np.asarray(r["labels"], dtype=np.int64) for r in rows])
    pos = np.concatenate([np.asarray(r["position_ids"], dtype=np.int64) for r in rows])
    # Position t predicts token t+1. The first token of every sample is <|begin_of_text|> with
    # label -100, so shifting across a sample boundary never creates a cross-sample target.
    shifted = np.append(labels[1:], IGNORE_INDEX)
    mask = shifted != IGNORE_INDEX
    starts = np.flatnonzero(pos == 0)
    cu_seq_lens = np.append(starts, len(pos)).astype(np.int32)
    sample_ids = [s for r in rows for s in r["sample_ids"]]
    sources = [s for r in rows for s in (r.get("sources") or [r.get("source")] * len(r["sample_ids"]))]
    return MicroBatch(
        input_ids=torch.from_numpy(ids)[None],
        position_ids=torch.from_numpy(pos)[None],
        logits_mask=torch.from_numpy(mask)[None],
        targets=torch.from_numpy(shifted[mask]),
        sample_ids=sample_ids,
        sources=[s for s in sources if s is not None],
        cu_seq_lens=torch.from_numpy(cu_seq_lens),
        max_length=int(np.diff(cu_seq_lens).max()) if len(cu_seq_lens) > 1 else 0,
    )


class StepBatches:
    """The micro-batches of each optimizer step for one data-parallel rank."""

    def __init__(
        self,
        data_dir: Path,
        *,
        global_batch_rows: int,
        micro_batch_size: int,
        rank: int,
        world_size: int,
        seed: int,
    ):
        if global_batch_rows % (micro_batch_size * world_size):
            raise ValueError("global batch must be a multiple of micro batch x world size")
        self.table = read_rows(Path(data_dir))
        self.num_rows = self.table.num_rows
        self.global_batch_rows = global_batch_rows
        self.micro_batch_size = micro_batch_size
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self._columns = [c for c in ("input_ids", "labels", "position_ids", "sample_ids", "sources") if c in self.table.column_names]

    @lru_cache(maxsize=2)
    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_rows)

    def global_rows(self, step: int) -> list[int]:
        """Row indices (into the prepared dataset) of optimizer step ``step`` (1-based)."""
        start = (step - 1) * self.global_batch_rows
        out = []
        for k in range(start, start + self.global_batch_rows):
            epoch, i = divmod(k, self.num_rows)
            out.append(int(self._permutation(epoch)[i]))
        return out

    def epoch_at(self, step: int) -> float:
        return step * self.global_batch_rows / self.num_rows

    def micro_batches(self, step: int) -> list[MicroBatch]:
        rows = self.global_rows(step)
        share = self.global_batch_rows // self.world_size
        mine = rows[self.rank * share : (self.rank + 1) * share]
        picked = self.table.take(pa.array(mine)).select(self._columns).to_pylist()
        m = self.micro_batch_size
        return [collate(picked[i : i + m]) for i in range(0, len(picked), m)]


class ValidationBatches:
    """The held-out split (``val/part-*.parquet``), sharded over ranks in a fixed order.

    Rank r takes rows r, r + W, ... . Under ZeRO-3 every forward is collective (each layer's
    weights are all-gathered as it runs), so every rank must make the same number of forwards: a
    rank with fewer micro-batches than rank 0 (whose share is the largest) repeats its first one, or
    the first row when it holds none, as padding. ``batches[counted:]`` are that padding: run, never
    counted in the loss.
    """

    def __init__(self, data_dir: Path, *, rank: int, world_size: int, max_rows: int, micro_batch_size: int):
        folder = Path(data_dir) / "val"
        self.available = folder.is_dir() and any(folder.glob("part-*.parquet"))
        self.batches: list[MicroBatch] = []
        self.counted = 0
        if not self.available:
            return
        table = read_rows(folder)
        n = min(table.num_rows, max_rows) if max_rows else table.num_rows
        rows = table.slice(0, n).to_pylist()
        if not rows:
            self.available = False
            return
        mine = rows[rank::world_size]
        self.batches = [collate(mine[i : i + micro_batch_size]) for i in range(0, len(mine), micro_batch_size)]
        self.counted = len(self.batches)
        most = -(-len(rows[0::world_size]) // micro_batch_size)  # rank 0's share is the largest
        filler = self.batches[0] if self.batches else collate(rows[:1])
        self.batches += [filler] * (most - self.counted)
