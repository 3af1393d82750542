"""The transformers backend: one model, one thread, every running request a row of one batch.

Why hand-written: transformers' own continuous batching (``generate_batch`` /
``init_continuous_batching``, 5.x) does run on CPU and matches ``generate`` token for token, but a
manager holds one ``GenerationConfig`` for all its requests (no per-request temperature / top_p /
seed), sizes a paged cache from the device's memory and took ~50 s to start on this 2-core machine
for a 2-layer model. Serving needs per-request sampling settings and a cheap start, so this module
keeps a plain ``DynamicCache`` batch instead:

- a request waits in a bounded queue; between two decoding steps every waiting request (up to
  ``max_concurrent`` rows) is prefilled as its own left-padded batch and *merged* into the running
  batch (caches and masks left-padded to a common length), so a new request never waits for the
  others to finish;
- each step feeds every row its last token, with explicit position ids (left padding) and the
  attention mask; each row samples with its own settings and random generator;
- a row leaves the batch the step it ends (stop token, ``max_tokens``, or cancelled because its
  client left or a stop string matched): its cache rows are dropped at once, and columns of padding
  no row needs any more are trimmed.

Tokens are handed to the caller's callback as they are sampled (ids, not text: detokenising is the
caller's, see :mod:`.detok`).
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

FINISH_STOP, FINISH_LENGTH, FINISH_CANCELLED, FINISH_ERROR = "stop", "length", "cancelled", "error"


class QueueFull(Exception):
    """More requests than max_concurrent + max_queue: the HTTP layer answers 429."""


@dataclass
class GenRequest:
    """One completion: prompt ids in, token ids out through ``on_token(id)`` then ``on_finish(reason)``."""

    prompt_ids: list[int]
    max_new_tokens: int
    on_token: Callable[[int], None]
    on_finish: Callable[[str], None]
    temperature: float = 0.0
    top_p: float = 1.0
    seed: Optional[int] = None
    cancelled: threading.Event = field(default_factory=threading.Event)
    # filled by the engine
    generated: int = 0
    generator: Optional[torch.Generator] = None

    def cancel(self) -> None:
        """Leave the batch at the next step (client gone, stop string matched)."""
        self.cancelled.set()


class _Batch:
    """The running rows: their requests, KV cache, attention mask, next positions and last tokens."""

    def __init__(self, reqs, cache, mask, next_pos, last):
        self.reqs, self.cache, self.mask, self.next_pos, self.last = reqs, cache, mask, next_pos, last

    def keep(self, rows: list[int]) -> None:
        idx = torch.tensor(rows, dtype=torch.long, device=self.mask.device)  # on the cache's device (CUDA with a GPU)
        self.reqs = [self.reqs[i] for i in rows]
        for layer in self.cache.layers:
            layer.keys, layer.values = layer.keys[idx], layer.values[idx]
        self.mask, self.next_pos, self.last = self.mask[idx], self.next_pos[idx], self.last[idx]
        # columns that are padding for every remaining row cost attention time and memory
        used = self.mask.any(dim=0).nonzero()
        first = int(used[0]) if len(used) else self.mask.shape[1]
        if first > 0:
            self._slice_left(first)

    def _slice_left(self, first: int) -> None:
        for layer in self.cache.layers:
            layer.keys, layer.values = layer.keys[:, :, first:], layer.values[:, :, first:]
        self.mask = self.mask[:, first:]

    def merge(self, other: "_Batch") -> None:
        """Append ``other``'s rows, left-padding the shorter cache so both end at the same column."""
        la, lb = self.mask.shape[1], other.mask.shape[1]
        width = max(la, lb)
        for mine, theirs in zip(self.cache.layers, other.cache.layers):
            mine.keys = torch.cat([_left_pad(mine.keys, width), _left_pad(theirs.keys, width)])
            mine.values = torch.cat([_left_pad(mine.values, width), _left_pad(theirs.values, width)])
        self.mask = torch.cat([_left_pad(self.mask, width), _left_pad(other.mask, width)])
        self.reqs += other.reqs
        self.next_pos = torch.cat([self.next_pos, other.next_pos])
        self.last = torch.cat([self.last, other.last])


def _left_pad(t: torch.Tensor, width: int) -> torch.Tensor:
    """Zeros on the left of the sequence axis (-2 for K/V [B,H,T,D], -1 for masks [B,T]) up to ``width``."""
    axis = -2 if t.dim() == 4 else -1
    missing = width - t.shape[axis]
    if missing == 0:
        return t
    shape = list(t.shape)
    shape[axis] = missing
    return torch.cat([t.new_zeros(shape), t], dim=axis)


def sample_next(logits: torch.Tensor, req: GenRequest) -> int:
    """Greedy at temperature 0; else temperature, nucleus (top_p) and the request's own generator."""
    if req.temperature <= 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.float() / req.temperature, dim=-1)
    if req.top_p < 1.0:
        sorted_p, order = torch.sort(probs, descending=True)
        outside = torch.cumsum(sorted_p, dim=-1) - sorted_p > req.top_p
        sorted_p[outside] = 0.0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_p)
    return int(torch.multinomial(probs, 1, generator=req.generator))


class BatchedEngine:
    """A loaded causal LM served to many requests at once from one background thread."""

    def __init__(self, model, stop_ids: list[int], pad_id: int, max_concurrent: int, max_queue: int):
        self.model = model
        # transformers 5.x renamed the forward's ``past_key_values`` to ``cache`` (the old name warns)
        import inspect

        self._cache_kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        self.device = next(model.parameters()).device
        self.stop_ids = set(stop_ids)
        self.pad_id = pad_id
        self.max_concurrent = max_concurrent
        self.max_queue = max_queue
        self._waiting: queue.Queue[GenRequest] = queue.Queue()
        self._lock = threading.Lock()
        self._in_flight = 0  # waiting + running: the admission count for 429
        self.steps = 0
        self.finished: dict[str, int] = {}  # requests ended, by reason
        self.last_error: Optional[str] = None
        self._thread = threading.Thread(target=self._loop, name="serve-engine", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ admission
    def submit(self, req: GenRequest) -> None:
        with self._lock:
            if self._in_flight >= self.max_concurrent + self.max_queue:
                raise QueueFull(f"{self._in_flight} requests in flight (serve.max_concurrent="
                                f"{self.max_concurrent} + serve.max_queue={self.max_queue})")
            self._in_flight += 1
        if req.temperature > 0:
            req.generator = torch.Generator(device=self.device)  # multinomial needs it on the logits device
            req.generator.manual_seed(req.seed if req.seed is not None else int(time.time_ns() % 2**63))
        self._waiting.put(req)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def _done(self, req: GenRequest, reason: str) -> None:
        with self._lock:
            self._in_flight -= 1
            self.finished[reason] = self.finished.get(reason, 0) + 1
        try:
            req.on_finish(reason)
        except Exception:  # a callback must not kill the engine thread
            pass

    # ------------------------------------------------------------------ the loop
    def _loop(self) -> None:
        batch: Optional[_Batch] = None
        while True:
            new = self._take_waiting(batch)
            try:
                with torch.inference_mode():
                    if batch is not None:
                        batch = self._step(batch)
                    if new:
                        fresh = self._prefill(new)
                        fresh = self._sample_and_drop(fresh, fresh.first_logits)
                        new = []
                        if fresh is not None:
                            if batch is None:
                                batch = fresh
                            else:
                                batch.merge(fresh)
            except Exception as e:  # e.g. out of memory: fail these requests, keep serving others
                for req in (batch.reqs if batch is not None else []) + new:
                    self._done(req, FINISH_ERROR)
                batch = None
                self.last_error = f"{type(e).__name__}: {e}"

    def _take_waiting(self, batch: Optional[_Batch]) -> list[GenRequest]:
        """Waiting requests that fit in the batch; blocks only while nothing runs."""
        room = self.max_concurrent - (len(batch.reqs) if batch is not None else 0)
        out: list[GenRequest] = []
        while len(out) < room:
            try:
                req = self._waiting.get(block=batch is None and not out)
            except queue.Empty:
                break
            if req.cancelled.is_set():
                self._done(req, FINISH_CANCELLED)
                continue
            out.append(req)
        return out

    def _prefill(self, reqs: list[GenRequest]) -> _Batch:
        """The prompts as one left-padded batch: its cache and each row's next-token logits."""
        from transformers import DynamicCache

        width = max(len(r.prompt_ids) for r in reqs)
        ids = torch.full((len(reqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(reqs), width), dtype=torch.long)
        for i, r in enumerate(reqs):
            ids[i, width - len(r.prompt_ids):] = torch.tensor(r.prompt_ids)
            mask[i, width - len(r.prompt_ids):] = 1
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        mask, ids, pos = mask.to(self.device), ids.to(self.device), pos.to(self.device)
        cache = DynamicCache(config=self.model.config)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1,
                         **{self._cache_kw: cache})
        batch = _Batch(list(reqs), cache, mask, mask.sum(-1),
                       torch.zeros(len(reqs), dtype=torch.long, device=self.device))
        batch.first_logits = out.logits[:, -1]
        return batch

    def _step(self, batch: _Batch) -> Optional[_Batch]:
        """Feed every row its last token (one new mask column, explicit positions)."""
        n = len(batch.reqs)
        batch.mask = torch.cat([batch.mask, torch.ones((n, 1), dtype=batch.mask.dtype, device=self.device)], dim=1)
        out = self.model(input_ids=batch.last[:, None], attention_mask=batch.mask,
                         position_ids=batch.next_pos[:, None], use_cache=True, **{self._cache_kw: batch.cache})
        batch.next_pos = batch.next_pos + 1
        self.steps += 1
        return self._sample_and_drop(batch, out.logits[:, -1])

    def _sample_and_drop(self, batch: _Batch, logits: torch.Tensor) -> Optional[_Batch]:
        """Each row samples its token and hands it on; rows that ended leave the batch now."""
        keep = []
        for i, req in enumerate(batch.reqs):
            if req.cancelled.is_set():
                self._done(req, FINISH_CANCELLED)
                continue
            tok = sample_next(logits[i], req)
            req.generated += 1
            batch.last[i] = tok
            try:
                req.on_token(tok)
            except Exception:  # the consumer is gone: end the row
                req.cancel()
            if tok in self.stop_ids:
                self._done(req, FINISH_STOP)
            elif req.generated >= req.max_new_tokens:
                self._done(req, FINISH_LENGTH)
            elif req.cancelled.is_set():
                self._done(req, FINISH_CANCELLED)
            else:
                keep.append(i)
        if not keep:
            return None
        if len(keep) < len(batch.reqs):
            batch.keep(keep)
        return batch
