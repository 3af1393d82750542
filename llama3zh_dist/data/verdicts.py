"""What the driver decides per processed row: kept, or the reason (and detail) of its rejection.
The per-row stage gives the first verdict (``status``); dedup and the mixture add theirs.

Held as numpy arrays of a few bytes per row (source code, input-order rank, reason code, the row a
duplicate repeats), not Python objects, so the driver's memory per row stays small on inputs of
millions of rows (bench/bench_prep_memory.py). Texts (ids, details) stay in the Arrow columns and
are read back (:class:`.spill.Rows`) only for the rows written out.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .formats import check_reason
from .spill import Rows

# detail templates of the rejections the driver makes; {ref} is the id of the row repeated
_REF_DETAIL = {"duplicate": "same conversation as {ref}", "near_duplicate": "near-duplicate of {ref}"}


class Verdicts:
    """Per row: ``source`` (index into ``names``), ``rank`` (place in input order: source, file,
    line), ``reason`` (index into ``reasons``; 0 = kept); ``ok``: the kept rows in input order."""

    def __init__(self, rows: Rows, source_order: list[str]):
        self.rows = rows
        self.n = rows.num_rows
        self.names = list(source_order)
        self.source = pc.index_in(rows.column("source"), value_set=pa.array(self.names)).to_numpy().astype(np.int16)
        # rows may come back from the workers in any order: order by (source, file, line) explicitly
        order = np.lexsort((rows.numpy("line"), rows.numpy("file"), self.source))
        self.rank = np.empty(self.n, dtype=np.int64)
        self.rank[order] = np.arange(self.n)
        status = rows.column("status")
        self.reasons = [""] + sorted(s for s in pc.unique(status).to_pylist() if s != "")
        self.reason = pc.index_in(status, value_set=pa.array(self.reasons, pa.string())).to_numpy().astype(np.int16)
        self.ref = np.full(self.n, -1, dtype=np.int64)  # the row a duplicate repeats
        self.source_detail: dict[tuple[int, int], str] = {}  # (reason, source) -> detail (mixture)
        self.ok = order[self.reason[order] == 0]

    def code(self, reason: str) -> int:
        if reason not in self.reasons:
            check_reason(reason)  # a reason outside the vocabulary would count towards nothing
            self.reasons.append(reason)
        return self.reasons.index(reason)

    def reject(self, idx: np.ndarray, reason: str, *, ref: np.ndarray | None = None, detail: str | None = None) -> None:
        """Reject rows ``idx`` (they leave ``ok`` when the caller says so): as repeats of rows ``ref``,
        or with one ``detail`` for all of them (given per source)."""
        idx = np.asarray(idx, dtype=np.int64)
        c = self.code(reason)
        self.reason[idx] = c
        if ref is not None:
            self.ref[idx] = ref
        if detail is not None and len(idx):
            for s in np.unique(self.source[idx]).tolist():
                self.source_detail[(c, s)] = detail

    def in_order(self, idx) -> np.ndarray:
        idx = np.asarray(idx, dtype=np.int64)
        return idx[np.argsort(self.rank[idx], kind="stable")]

    def rejected(self) -> np.ndarray:
        """The rejected rows, in input order."""
        return self.in_order(np.flatnonzero(self.reason != 0))

    def details(self, idx: np.ndarray, own: list) -> list[str]:
        """The detail of each rejected row ``idx[k]`` (``own[k]``: the detail its processing gave)."""
        refs = self.ref[idx]
        has_ref = np.flatnonzero(refs >= 0)
        ref_ids = next(self.rows.gather(["id"], refs[has_ref], window=max(len(has_ref), 1)), None)
        ref_id = dict(zip(has_ref.tolist(), ref_ids.column(0).to_pylist() if ref_ids is not None else []))
        out = []
        for k, i in enumerate(idx.tolist()):
            reason = self.reasons[self.reason[i]]
            if reason in _REF_DETAIL:
                out.append(_REF_DETAIL[reason].format(ref=ref_id[k]))
            else:
                out.append(self.source_detail.get((int(self.reason[i]), int(self.source[i])), own[k]))
        return out

    def counts(self) -> np.ndarray:
        """[source, reason] -> rows."""
        flat = self.source.astype(np.int64) * len(self.reasons) + self.reason
        return np.bincount(flat, minlength=len(self.names) * len(self.reasons)).reshape(len(self.names), -1)
