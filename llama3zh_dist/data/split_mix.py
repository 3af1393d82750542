"""Split and mix: per source, hold out ``data.val_fraction`` of the kept rows as validation, then
up- or down-sample the rest by the source's weight. Deterministic from ``trainer.seed`` and the
source name, whatever order the rows were processed in."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from .sources import SourceSpec
from .verdicts import Verdicts


@dataclass
class Split:
    train_idx: list[int] = field(default_factory=list)  # row index of each training sample (repeats included)
    copy_no: list[int] = field(default_factory=list)  # 0 for a row's first copy, 1, 2, ... for repeats
    val_idx: list[int] = field(default_factory=list)
    mixture: dict[str, dict] = field(default_factory=dict)  # per source: weight, unique, samples, val

    @property
    def kept_rows(self) -> np.ndarray:
        """Every row kept (for training or validation), in row-index order."""
        return np.array(sorted(set(self.train_idx) | set(self.val_idx)), dtype=np.int64)


def _source_rng(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng([seed, int(hashlib.md5(name.encode()).hexdigest()[:8], 16)])


def _weighted(rest: list[int], w: float, v: Verdicts, name: str) -> list[tuple[int, int]]:
    """(row, copy) pairs for weight ``w`` over the shuffled rows ``rest``, in input order."""
    target = int(round(w * len(rest)))
    if target <= len(rest):
        for i in rest[target:]:
            v.reject(i, "downsampled", f"data.sources.{name}.weight={w}")
        return [(i, 0) for i in v.in_order(rest[:target])]
    full, extra = divmod(target, len(rest))
    base = v.in_order(rest)
    chosen = [(i, c) for c in range(full) for i in base]
    return chosen + [(i, full) for i in v.in_order(rest[:extra])]


def split_and_mix(v: Verdicts, specs: list[SourceSpec], val_fraction: float, seed: int) -> Split:
    by_src: dict[str, list[int]] = defaultdict(list)
    for i in v.ok:
        by_src[v.source[i]].append(i)
    out = Split()
    for spec in specs:
        idx = by_src.get(spec.name, [])
        perm = [idx[k] for k in _source_rng(seed, spec.name).permutation(len(idx))]
        n_val = 0
        if val_fraction > 0 and len(idx) >= 2:
            n_val = min(len(idx) - 1, max(1, int(round(val_fraction * len(idx)))))
        val = v.in_order(perm[:n_val])
        rest = perm[n_val:]
        w = float(spec.weight)
        chosen = _weighted(rest, w, v, spec.name)
        out.val_idx += val
        out.train_idx += [i for i, _ in chosen]
        out.copy_no += [c for _, c in chosen]
        out.mixture[spec.name] = {"weight": w, "unique": len(rest), "samples": len(chosen), "val": len(val)}
    return out
