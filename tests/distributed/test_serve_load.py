"""A bounded load on loopback: 16 concurrent clients x 4 streamed requests each against the served
quickstart export, zero failures; p50 / p95 latency, aggregate tokens/s and the server's peak RSS
printed. A client that drops its stream mid-answer frees its batch row and the next request is served."""

from __future__ import annotations

import asyncio
import json
import statistics
import time

import httpx
import pytest
from conftest import SERVE_KEY

pytestmark = pytest.mark.slow

CLIENTS, PER_CLIENT, MAX_TOKENS = 16, 4, 24
AUTH = {"Authorization": f"Bearer {SERVE_KEY}"}


def _body(model: str, i: int, **kw) -> dict:
    from llama3zh_dist.quickstart_check import quickstart_pairs

    questions = [q for q, _ in quickstart_pairs()]
    return {"model": model, "messages": [{"role": "user", "content": questions[i % len(questions)]}],
            "temperature": 0, "max_tokens": MAX_TOKENS, "stream": True, "stream_options": {"include_usage": True},
            **kw}


async def _one(http: httpx.AsyncClient, url: str, body: dict) -> tuple[float, int]:
    """(seconds, completion tokens) of one streamed request read to [DONE]."""
    t0 = time.perf_counter()
    tokens, done = 0, False
    async with http.stream("POST", url, json=body, headers=AUTH) as r:
        assert r.status_code == 200, await r.aread()
        async for line in r.aiter_lines():
            if line == "data: [DONE]":
                done = True
            elif line.startswith("data: ") and '"usage"' in line:
                usage = json.loads(line[6:]).get("usage")
                tokens = usage["completion_tokens"] if usage else tokens
    assert done
    return time.perf_counter() - t0, tokens


def _stats(served, model: str) -> dict:
    return httpx.get(served.base_url + "/api/stats", headers=AUTH).json()[model]


def test_sixteen_clients_four_requests_each_without_failures(served, quickstart_export):
    url, model = served.base_url + "/v1/chat/completions", str(quickstart_export)

    async def client(http, c):
        return [await _one(http, url, _body(model, c * PER_CLIENT + k)) for k in range(PER_CLIENT)]

    async def load():
        async with httpx.AsyncClient(timeout=None, limits=httpx.Limits(max_connections=CLIENTS)) as http:
            return await asyncio.gather(*(client(http, c) for c in range(CLIENTS)), return_exceptions=True)

    t0 = time.perf_counter()
    results = asyncio.run(load())
    wall = time.perf_counter() - t0
    failures = [r for r in results if isinstance(r, BaseException)]
    assert not failures, failures[:3]
    done = [x for r in results for x in r]
    assert len(done) == CLIENTS * PER_CLIENT
    lat = sorted(s for s, _ in done)
    tokens = sum(t for _, t in done)
    assert tokens > 0
    p50, p95 = statistics.median(lat), lat[int(0.95 * (len(lat) - 1))]
    print(f"\n[serve load] {CLIENTS} clients x {PER_CLIENT} requests: {len(done)} ok, 0 failed; "
          f"latency p50 {p50:.2f}s p95 {p95:.2f}s; {tokens} tokens in {wall:.1f}s = {tokens / wall:.1f} tokens/s; "
          f"server peak RSS {served.peak_rss_bytes() / 2**20:.0f} MiB")


def test_a_client_that_drops_mid_stream_frees_its_row_and_the_next_request_is_served(served, quickstart_export):
    url, model = served.base_url + "/v1/chat/completions", str(quickstart_export)
    before = _stats(served, model)["finished"].get("cancelled", 0)

    async def drop_then_ask():
        async with httpx.AsyncClient(timeout=None) as http:
            # the memorised answer is ~65 tokens; leave after its first content chunks
            body = _body(model, 0, max_tokens=256)
            async with http.stream("POST", url, json=body, headers=AUTH) as r:
                seen = 0
                async for line in r.aiter_lines():
                    seen += '"content"' in line
                    if seen >= 3:
                        break
            return await _one(http, url, _body(model, 1))

    seconds, tokens = asyncio.run(drop_then_ask())
    assert tokens > 0
    while _stats(served, model)["in_flight"]:  # every row ends (by itself at worst: max 256 tokens)
        time.sleep(0.1)
    # ... and the dropped one ended because its client left, not by running its answer to the end
    assert _stats(served, model)["finished"].get("cancelled", 0) == before + 1
