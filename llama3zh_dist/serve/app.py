"""The HTTP app (FastAPI): OpenAI's chat completions, the web chat and its compare-mode votes.

    GET  /health                   {"status": "ok"}
    GET  /v1/models                the served model ids (the paths as given)
    POST /v1/chat/completions      OpenAI's request and response, SSE with "stream": true
    GET  /                         the web chat (static/index.html)
    POST /tokenize                 vLLM's: the prompt ids of a conversation (train = serve, checkable)
    GET  /api/stats                requests in flight and ended, per model
    GET  /api/page                 what the page needs: model count, compare mode, key required
    POST /api/match                compare mode: a new A/B match for a conversation (models hidden)
    POST /api/match/{id}/{a|b}     that side's answer, streamed like /v1/chat/completions
    POST /api/vote                 the vote: appended to votes.jsonl, names revealed

Every error is OpenAI's shape with its status; an unexpected failure is a 500 with a one-line
message, never a stack trace.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import random
import time
import uuid
from pathlib import Path
from typing import Optional

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .engine import FINISH_ERROR, FINISH_LENGTH, GenRequest, QueueFull
from .detok import IncrementalDetokenizer
from .models import ServedModel
from .protocol import (APIError, ChatCompletionRequest, bad_request, chunk_body, completion_body, completion_id,
                       parse_request, usage)
from .votes import VoteBook

STATIC = Path(__file__).parent / "static"


class Completion:
    """One request on one model: prompt ids in, safe text pieces out, counts and finish reason."""

    def __init__(self, sm: ServedModel, req: ChatCompletionRequest, max_tokens_cap: int):
        messages = req.conversation()
        self.prompt = sm.prompt_ids(messages)
        room = sm.max_model_len - len(self.prompt)
        if room < 1:
            raise bad_request(f"the conversation is {len(self.prompt)} tokens; this model's context is "
                              f"{sm.max_model_len} (serve.max_model_len)", "messages", "context_length_exceeded")
        asked = req.limit()
        if asked is not None and asked > max_tokens_cap:
            raise bad_request(f"max_tokens={asked} is over this server's cap of {max_tokens_cap} (serve.max_tokens)",
                              "max_tokens")
        self.max_new = min(asked or max_tokens_cap, room)
        self.detok = IncrementalDetokenizer(sm.tokenizer, req.stop, skip_ids=set(sm.stop_ids))
        self.completion_tokens = 0
        self.finish: Optional[str] = None
        self.text_parts: list[str] = []
        loop = asyncio.get_running_loop()
        self._q: asyncio.Queue = asyncio.Queue()
        put = lambda item: loop.call_soon_threadsafe(self._q.put_nowait, item)  # noqa: E731
        self.gen = GenRequest(self.prompt, self.max_new, on_token=lambda t: put(("token", t)),
                              on_finish=lambda r: put(("end", r)), temperature=req.temperature,
                              top_p=req.top_p, seed=req.seed)
        try:
            sm.engine.submit(self.gen)
        except QueueFull:
            raise APIError(429, "the server is busy (request queue full); retry shortly",
                           "rate_limit_exceeded", None, "queue_full") from None

    async def pieces(self):
        """Text pieces, each whole characters; ends with ``finish`` set. Cancels the row if left early."""
        try:
            while self.finish is None:
                kind, value = await self._q.get()
                if kind == "token":
                    self.completion_tokens += 1
                    text = self.detok.add(value)
                    if self.detok.stopped:  # a stop string matched: this is the end
                        self.gen.cancel()
                        self.finish = "stop"
                else:
                    if value == FINISH_ERROR:
                        raise APIError(500, "generation failed on the server", "server_error")
                    text = self.detok.finish()
                    self.finish = "length" if value == FINISH_LENGTH else "stop"
                if text:
                    self.text_parts.append(text)
                    yield text
        finally:
            if self.finish is None:
                self.gen.cancel()  # the client left: free the batch row now

    @property
    def text(self) -> str:
        return "".join(self.text_parts)


async def _until_done_or_gone(comp: Completion, request: Request) -> None:
    """Collect a non-streamed answer; a client that hangs up meanwhile frees its batch row (Starlette
    cancels a streaming response's generator itself, but not a plain handler)."""
    async def drain():
        async for _ in comp.pieces():
            pass

    task = asyncio.ensure_future(drain())
    while not task.done():
        await asyncio.wait({task}, timeout=0.5)
        if not task.done() and await request.is_disconnected():
            task.cancel()  # pieces() cancels the row on its way out
            raise APIError(499, "the client closed the request", "invalid_request_error")
    task.result()


def _sse(obj) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def create_app(models: dict[str, ServedModel], serve, api_key: Optional[str], out_dir: Path) -> FastAPI:
    """``models``: model id -> loaded export (the first is the default; two = compare mode)."""
    app = FastAPI(title="llama3zh_dist serve", docs_url=None, redoc_url=None, openapi_url=None)
    ids = list(models)
    compare = len(ids) == 2
    votes = VoteBook(out_dir)
    matches: dict[str, dict] = {}

    # ------------------------------------------------------------------ errors
    @app.exception_handler(APIError)
    async def _api_error(_, e: APIError):
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_, e: StarletteHTTPException):
        return JSONResponse(APIError(e.status_code, str(e.detail), "invalid_request_error").body(),
                            status_code=e.status_code)

    @app.exception_handler(Exception)
    async def _unexpected(_, e: Exception):
        return JSONResponse(APIError(500, f"internal error ({type(e).__name__})", "server_error").body(),
                            status_code=500)

    # ------------------------------------------------------------------ helpers
    def check_key(request: Request) -> None:
        if not api_key:
            return
        given = request.headers.get("authorization", "")
        token = given[7:] if given.lower().startswith("bearer ") else ""
        if not hmac.compare_digest(token.encode(), api_key.encode()):
            raise APIError(401, "missing or incorrect API key: send 'Authorization: Bearer <key>'",
                           "invalid_request_error", None, "invalid_api_key")

    async def read_json(request: Request):
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > serve.max_request_bytes:
            raise APIError(413, f"request body over {serve.max_request_bytes} bytes (serve.max_request_bytes)",
                           "invalid_request_error", None, "request_too_large")
        body = bytearray()
        async for part in request.stream():
            body += part
            if len(body) > serve.max_request_bytes:
                raise APIError(413, f"request body over {serve.max_request_bytes} bytes (serve.max_request_bytes)",
                               "invalid_request_error", None, "request_too_large")
        try:
            return json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise bad_request(f"the request body is not valid JSON: {e}") from None

    def model_for(name: str) -> ServedModel:
        if name not in models:
            raise APIError(404, f"the model {name!r} does not exist; served: {', '.join(ids)}",
                           "invalid_request_error", "model", "model_not_found")
        return models[name]

    async def answer(request: Request, req: ChatCompletionRequest, sm: ServedModel, shown_model: str,
                     on_done=None):
        """The response for one completion: JSON, or SSE chunks when ``stream``."""
        comp = Completion(sm, req, serve.max_tokens)
        cid = completion_id()
        if not req.stream:
            await _until_done_or_gone(comp, request)
            if on_done:
                on_done(comp)
            return JSONResponse(completion_body(cid, shown_model, comp.text, comp.finish, len(comp.prompt),
                                                comp.completion_tokens))
        created = int(time.time())
        include_usage = bool(req.stream_options and req.stream_options.include_usage)

        async def events():
            yield _sse(chunk_body(cid, shown_model, created, {"role": "assistant", "content": ""}, None))
            try:
                async for text in comp.pieces():
                    yield _sse(chunk_body(cid, shown_model, created, {"content": text}, None))
            except APIError as e:
                yield _sse(e.body())
                return
            if on_done:
                on_done(comp)
            yield _sse(chunk_body(cid, shown_model, created, {}, comp.finish))
            if include_usage:
                yield _sse({"id": cid, "object": "chat.completion.chunk", "created": created, "model": shown_model,
                            "choices": [], "usage": usage(len(comp.prompt), comp.completion_tokens)})
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    # ------------------------------------------------------------------ OpenAI API
    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/v1/models")
    async def list_models(request: Request):
        check_key(request)
        now = int(time.time())
        return {"object": "list", "data": [{"id": i, "object": "model", "created": now, "owned_by": "llama3zh_dist",
                                            "root": str(models[i].folder)} for i in ids]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        check_key(request)
        req = parse_request(await read_json(request))
        sm = model_for(req.model)
        return await answer(request, req, sm, req.model)

    @app.post("/tokenize")
    async def tokenize(request: Request):
        """vLLM's /tokenize for chat messages: the prompt ids a completion would start from."""
        check_key(request)
        payload = await read_json(request)
        req = parse_request(dict(payload, model=payload.get("model") or ids[0]) if isinstance(payload, dict) else payload)
        tokens = model_for(req.model).prompt_ids(req.conversation())
        return {"count": len(tokens), "max_model_len": model_for(req.model).max_model_len, "tokens": tokens}

    @app.get("/api/stats")
    async def stats(request: Request):
        """Per model: requests in flight and requests ended by reason (stop, length, cancelled)."""
        check_key(request)
        return {i: {"in_flight": m.engine.in_flight, "finished": dict(m.engine.finished)} for i, m in models.items()}

    # ------------------------------------------------------------------ the web chat
    @app.get("/")
    async def page():
        return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8")

    @app.get("/static/{name}")
    async def static(name: str):
        path = STATIC / name
        if "/" in name or not path.is_file():
            raise APIError(404, f"no static file {name!r}", "invalid_request_error")
        return FileResponse(path)

    @app.get("/api/page")
    async def page_info():
        return {"compare": compare, "models": 2 if compare else 1, "key_required": bool(api_key),
                "default_model": None if compare else ids[0], "max_tokens": serve.max_tokens}

    @app.post("/api/match")
    async def new_match(request: Request):
        check_key(request)
        if not compare:
            raise bad_request("compare mode is off: start the server with serve.compare=<second export>")
        payload = await read_json(request)
        if isinstance(payload, dict):
            payload["model"] = ids[0]
        req = parse_request(payload)  # validates the conversation and the sampling settings once
        order = ids[:] if random.random() < 0.5 else ids[::-1]
        mid = uuid.uuid4().hex
        while len(matches) >= 1000:  # a bounded memory of unvoted matches
            matches.pop(next(iter(matches)))
        matches[mid] = {"messages": req.conversation(), "request": payload, "a": {"model": order[0]},
                        "b": {"model": order[1]},
                        "sampling": {k: payload.get(k) for k in ("temperature", "top_p", "max_tokens", "stop", "seed")
                                     if payload.get(k) is not None}}
        return {"match_id": mid}

    @app.post("/api/match/{mid}/{side}")
    async def match_answer(mid: str, side: str, request: Request):
        check_key(request)
        match = matches.get(mid)
        if match is None or side not in ("a", "b"):
            raise APIError(404, "no such match (it was voted on, or the server restarted)", "invalid_request_error")
        payload = dict(match["request"], model=match[side]["model"], stream=True)
        req = parse_request(payload)

        def done(comp: Completion):
            match[side]["answer"] = comp.text

        return await answer(request, req, models[match[side]["model"]], f"model {side.upper()}", done)

    @app.post("/api/vote")
    async def vote(request: Request):
        check_key(request)
        payload = await read_json(request)
        if not isinstance(payload, dict) or payload.get("vote") not in ("a", "b", "tie", "both_bad"):
            raise bad_request("vote must be one of a, b, tie, both_bad", "vote")
        match = matches.get(str(payload.get("match_id")))
        if match is None:
            raise APIError(404, "no such match (already voted, or the server restarted)", "invalid_request_error")
        if "answer" not in match["a"] or "answer" not in match["b"]:
            raise bad_request("both answers must be complete before the vote", "vote")
        matches.pop(str(payload["match_id"]))
        votes.append(match["messages"], match["a"], match["b"], match["sampling"], payload["vote"])
        return {"a": match["a"]["model"], "b": match["b"]["model"], "votes_file": str(votes.path)}

    return app
