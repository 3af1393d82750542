"""Split and mix: per source, hold out ``data.val_fraction`` of the kept rows as validation, then
up- or down-sample the rest by the source's weight. Deterministic from ``trainer.seed`` and the
source name, whatever order the rows were processed in."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from .sources import SourceSpec
from .verdicts import Verdicts


@dataclass
class Split:
    train_idx: np.ndarray  # row index of each training sample (repeats included)
    copy_no: np.ndarray  # 0 for a row's first copy, 1, 2, ... for repeats
    val_idx: np.ndarray
    mixture: dict[str, dict] = field(default_factory=dict)  # per source: weight, unique, samples, val

    @property
    def kept_rows(self) -> np.ndarray:
        """Every row kept (for training or validation), in row-index order."""
        return np.union1d(self.train_idx, self.val_idx).astype(np.int64)


def _source_rng(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng([seed, int(hashlib.md5(name.encode()).hexdigest()[:8], 16)])


def _weighted(rest: np.ndarray, w: float, v: Verdicts, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(rows, copy numbers) for weight ``w`` over the shuffled rows ``rest``, in input order."""
    target = int(round(w * len(rest)))
    if target <= len(rest):
        v.reject(rest[target:], "downsampled", detail=f"data.sources.{name}.weight={w}")
        chosen = v.in_order(rest[:target])
        return chosen, np.zeros(len(chosen), np.int64)
    full, extra = divmod(target, len(rest))
    base = v.in_order(rest)
    tail = v.in_order(rest[:extra])
    rows = np.concatenate([np.tile(base, full), tail])
    copies = np.concatenate([np.repeat(np.arange(full), len(base)), np.full(len(tail), full)])
    return rows, copies


def split_and_mix(v: Verdicts, specs: list[SourceSpec], val_fraction: float, seed: int) -> Split:
    ok_src = v.source[v.ok]
    train, copies, vals = [], [], []
    mixture = {}
    for code, spec in enumerate(specs):
        idx = v.ok[ok_src == code]  # source codes follow specs' order
        perm = idx[_source_rng(seed, spec.name).permutation(len(idx))]
        n_val = 0
        if val_fraction > 0 and len(idx) >= 2:
            n_val = min(len(idx) - 1, max(1, int(round(val_fraction * len(idx)))))
        val = v.in_order(perm[:n_val])
        rest = perm[n_val:]
        w = float(spec.weight)
        rows, copy_no = _weighted(rest, w, v, spec.name)
        vals.append(val)
        train.append(rows)
        copies.append(copy_no)
        mixture[spec.name] = {"weight": w, "unique": len(rest), "samples": len(rows), "val": len(val)}
    cat = lambda parts: np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)  # noqa: E731
    return Split(train_idx=cat(train), copy_no=cat(copies), val_idx=cat(vals), mixture=mixture)
