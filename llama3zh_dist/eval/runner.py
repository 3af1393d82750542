"""Run the multiple-choice benchmarks on a model: one process, or data-parallel ranks of a ZeRO-3 engine.

Items are dealt round-robin over the ranks (rank r scores items r, r + W, ...); each rank scores its
share with the same code as a single process, the ranks pad their forward calls to the same count
(ZeRO-3 forwards are collective) and the per-item records are gathered in the original order, so a
run on W ranks writes the same ``items.jsonl`` as a single-process evaluation of the export.
"""

from __future__ import annotations

import sys
import time
from typing import Callable

from omegaconf import DictConfig

from ..errors import UserError
from .benchmarks import BENCHMARKS, Benchmark, MCItem
from .scoring import build_probes, choice_requests, predicted, run_probes


def selected_benchmarks(ev: DictConfig) -> list[str]:
    names = list(ev.benchmarks or [])
    unknown = [b for b in names if b not in (*BENCHMARKS, "chat")]
    if unknown:
        raise UserError(f"eval.benchmarks: unknown {unknown}; choose from cmmlu, ceval, chat")
    return names


def load_benchmarks(ev: DictConfig) -> list[Benchmark]:
    """The multiple-choice benchmarks ``eval.benchmarks`` names, their data checked up front."""
    subjects = list(ev.subjects) if ev.get("subjects") else None
    benches = []
    for name in selected_benchmarks(ev):
        if name == "chat":
            continue
        bench = Benchmark(name, str(ev[name].path))
        if subjects:
            bench.subjects = [s for s in bench.subjects if s in subjects]
        bench.load_all(int(ev.get("shots") or 0))
        benches.append(bench)
    if subjects and benches:
        found = {s for b in benches for s in b.subjects}
        missing = [s for s in subjects if s not in found]
        if missing:
            raise UserError(f"eval.subjects: {missing} are in none of {[b.name for b in benches]} "
                            f"(available: {sorted({s for b in benches for s in b.available})})")
    return benches


def model_max_len(model) -> int:
    """The harness's ``max_length``: the model config's context length (2048 when it names none)."""
    config = getattr(getattr(model, "module", model), "config", None)
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        if getattr(config, attr, None):
            return int(getattr(config, attr))
    return 2048


def _progress(label: str, enabled: bool) -> Callable[[int, int], None] | None:
    if not enabled:
        return None
    state = {"t": 0.0}

    def show(done: int, total: int) -> None:
        now = time.time()
        if done == total or now - state["t"] >= 10:
            state["t"] = now
            print(f"{label}: {done}/{total} forwards", file=sys.stderr, flush=True)

    return show


def score_benchmarks(model, tok, benches: list[Benchmark], ev: DictConfig, device, *, rank: int = 0,
                     world_size: int = 1, all_reduce_max=None, all_gather=None, show_progress: bool = True) -> list[dict]:
    """Per-item records (``items.jsonl`` lines) of every benchmark, in benchmark/subject/row order.

    With ``world_size`` > 1, ``all_reduce_max(int) -> int`` and ``all_gather(obj) -> list`` are the
    process group's collectives; every rank returns the full list.
    """
    everything: list[tuple[Benchmark, MCItem]] = [(b, it) for b in benches for it in b.items()]
    mine = list(range(rank, len(everything), world_size))
    max_len = model_max_len(model)
    probes = []
    for pos in mine:
        bench, item = everything[pos]
        reqs = choice_requests(tok, bench, item, int(ev.shots), bool(ev.chat_template))
        probes += build_probes(pos, reqs, max_len)
    scores = run_probes(model, probes, device, all_reduce_max=all_reduce_max,
                        dummy_id=int(tok.pad_token_id or 0),
                        progress=_progress(f"eval (rank {rank}, {len(mine)} items)", show_progress and rank == 0))
    local = []
    for pos in mine:
        _, item = everything[pos]
        ll = scores[pos]
        local.append((pos, {"benchmark": item.benchmark, "subject": item.subject, "index": item.index,
                            "answer": item.answer, "predicted": predicted(ll), "loglik": ll}))
    parts = all_gather(local) if world_size > 1 else [local]
    merged = sorted((p for part in parts for p in part), key=lambda x: x[0])
    return [rec for _, rec in merged]
