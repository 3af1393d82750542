"""Validation rows dealt over ranks: every rank runs as many forwards as rank 0, each row is counted
once over all ranks, padding never (tests/distributed/test_validation_shares.py runs it on 2 ranks)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from llama3zh_dist.data.loader import ValidationBatches


def _val_rows(folder, n: int) -> None:
    (folder / "val").mkdir(parents=True)
    rows = [{"input_ids": [1, 10 + i, 20 + i], "labels": [-100, 10 + i, 20 + i], "position_ids": [0, 1, 2],
             "sample_ids": [f"s{i}"], "sources": [f"src{i % 2}"]} for i in range(n)]
    pq.write_table(pa.Table.from_pylist(rows), folder / "val" / "part-00000.parquet")


@pytest.mark.parametrize("rows", [1, 3, 4, 7])
@pytest.mark.parametrize("world", [1, 2, 3, 5])
@pytest.mark.parametrize("micro", [1, 2])
def test_every_rank_runs_rank_0s_number_of_forwards_and_each_row_counts_once(tmp_path, rows, world, micro):
    _val_rows(tmp_path, rows)
    shares = [ValidationBatches(tmp_path, rank=r, world_size=world, max_rows=0, micro_batch_size=micro)
              for r in range(world)]
    assert len({len(s.batches) for s in shares}) == 1, [len(s.batches) for s in shares]
    counted = [sid for s in shares for b in s.batches[: s.counted] for sid in b.sample_ids]
    assert sorted(counted) == sorted(f"s{i}" for i in range(rows))
    assert all(s.available for s in shares)


def test_max_rows_limits_the_rows_before_they_are_dealt(tmp_path):
    _val_rows(tmp_path, 8)
    shares = [ValidationBatches(tmp_path, rank=r, world_size=2, max_rows=3, micro_batch_size=1) for r in range(2)]
    assert [len(s.batches) for s in shares] == [2, 2] and [s.counted for s in shares] == [2, 1]
