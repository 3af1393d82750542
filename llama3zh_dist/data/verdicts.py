"""What the driver decides per processed row: kept (reason ``""``) or the reason and detail of its
rejection. The per-row stage gives the first verdict (``status``); dedup and the mixture add theirs."""

from __future__ import annotations

import pyarrow as pa


class Verdicts:
    """Per-row ``reason``/``detail`` lists over the processed rows, and the kept rows in input order."""

    def __init__(self, rows: pa.Table, source_order: list[str]):
        self.n = rows.num_rows
        self.source = rows.column("source").to_pylist()
        self.ids = rows.column("id").to_pylist()
        self.reason = rows.column("status").to_pylist()
        self.detail = rows.column("detail").to_pylist()
        rank = {name: i for i, name in enumerate(source_order)}
        # rows may come back from the workers in any order: order by (source, file, line) explicitly
        self.order_key = list(zip([rank[s] for s in self.source], rows.column("file").to_pylist(),
                                  rows.column("line").to_pylist()))
        self.ok = sorted((i for i in range(self.n) if self.reason[i] == ""), key=self.order_key.__getitem__)

    def reject(self, i: int, reason: str, detail: str) -> None:
        self.reason[i], self.detail[i] = reason, detail

    def in_order(self, idx) -> list[int]:
        return sorted(idx, key=self.order_key.__getitem__)

    def rejected(self) -> list[int]:
        return [i for i in range(self.n) if self.reason[i] != ""]
