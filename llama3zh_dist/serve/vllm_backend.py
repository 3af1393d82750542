"""The vLLM backend (``backend=auto`` with vLLM installed and a GPU): same interface as
:class:`~.engine.BatchedEngine`, so the HTTP layer, detokenising and stop strings are shared.

vLLM batches continuously and pages its KV cache itself; this adapter only hands it token-id
prompts (built by our encoder, see :mod:`.models`) and forwards each new token id. Not exercised on
the CPU-only development machine: :func:`.models.vllm_engine_args` (the exact engine arguments) is
tested there instead.
"""

from __future__ import annotations

import asyncio
import threading
import uuid

from .engine import FINISH_CANCELLED, FINISH_LENGTH, FINISH_STOP, GenRequest, QueueFull


class VllmEngine:
    def __init__(self, engine_args: dict, stop_ids: list[int]):
        from vllm import AsyncEngineArgs, AsyncLLMEngine

        self.stop_ids = list(stop_ids)
        self.max_in_flight = 4 * int(engine_args["max_num_seqs"])
        self._in_flight = 0
        self.finished: dict[str, int] = {}
        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._loop.run_forever, name="serve-vllm", daemon=True).start()
        self.llm = asyncio.run_coroutine_threadsafe(self._make(AsyncLLMEngine, AsyncEngineArgs(**engine_args)),
                                                    self._loop).result()

    @staticmethod
    async def _make(cls, args):
        return cls.from_engine_args(args)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def submit(self, req: GenRequest) -> None:
        if self._in_flight >= self.max_in_flight:
            raise QueueFull(f"{self._in_flight} requests in flight")
        self._in_flight += 1
        asyncio.run_coroutine_threadsafe(self._run(req), self._loop)

    async def _run(self, req: GenRequest) -> None:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = SamplingParams(temperature=req.temperature, top_p=req.top_p, seed=req.seed,
                                max_tokens=req.max_new_tokens, stop_token_ids=self.stop_ids,
                                detokenize=False, skip_special_tokens=True)
        rid, seen, reason = uuid.uuid4().hex, 0, FINISH_CANCELLED
        try:
            async for out in self.llm.generate(TokensPrompt(prompt_token_ids=req.prompt_ids), params, rid):
                if req.cancelled.is_set():
                    await self.llm.abort(rid)
                    break
                ids = out.outputs[0].token_ids
                for t in ids[seen:]:
                    req.on_token(int(t))
                seen = len(ids)
                if out.finished:
                    reason = FINISH_LENGTH if out.outputs[0].finish_reason == "length" else FINISH_STOP
        finally:
            self._in_flight -= 1
            self.finished[reason] = self.finished.get(reason, 0) + 1
            req.on_finish(reason)
