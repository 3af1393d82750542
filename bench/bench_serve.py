"""Benchmark: the server's batching against plain ``generate``, same model, same requests, same run.

    .venv/bin/python bench/bench_serve.py --model runs/quickstart/export [--clients 8] [--max-tokens 64]

1. starts ``python -m llama3zh_dist.serve model.path=<export>`` on a free loopback port;
2. sends ``--clients`` greedy chat requests at once (one client each, the quickstart questions) and
   measures the wall time until the last answer: aggregate completion tokens / s;
3. answers the same requests one after another in this process with ``model.generate`` (same
   export, same prompt ids, same stop ids, greedy) and measures the same;
4. prints both side by side, their ratio (the promise: batching >= 2x) and one JSON line; exits 1
   when the ratio is under 2 or the answers differ in token counts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

# Like for like: the server sets passive OpenMP waiting for itself (llama3zh_dist/serve/__main__.py);
# plain generate here gets the same setting (it measured no different either way).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "distributed"))


def _requests(n: int) -> list[list[dict]]:
    from llama3zh_dist.quickstart_check import quickstart_pairs

    qs = [q for q, _ in quickstart_pairs()]
    return [[{"role": "user", "content": qs[i % len(qs)]}] for i in range(n)]


def served(model: str, convs: list, max_tokens: int) -> tuple[float, list[int]]:
    """(seconds, completion tokens per request) with every request sent at once."""
    import httpx
    from _serve_helpers import ServeProcess

    server = ServeProcess([f"model.path={model}", f"serve.max_concurrent={len(convs)}"])
    try:
        url = server.base_url + "/v1/chat/completions"

        async def one(http, msgs):
            r = await http.post(url, json={"model": model, "messages": msgs, "temperature": 0, "max_tokens": max_tokens})
            r.raise_for_status()
            return r.json()["usage"]["completion_tokens"]

        async def all_at_once():
            async with httpx.AsyncClient(timeout=None) as http:
                await one(http, convs[0])  # warm-up (first-call allocations), not timed
                t0 = time.perf_counter()
                counts = await asyncio.gather(*(one(http, m) for m in convs))
                return time.perf_counter() - t0, counts

        return asyncio.run(all_at_once())
    finally:
        server.stop()


def sequential(model: str, convs: list, max_tokens: int) -> tuple[float, list[int]]:
    """(seconds, completion tokens per request) answering one request after another with generate."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from llama3zh_dist.llama3.chat_format import get_encoder

    tok = AutoTokenizer.from_pretrained(model, local_files_only=True)
    lm = AutoModelForCausalLM.from_pretrained(model, local_files_only=True).eval()
    stops = GenerationConfig.from_pretrained(model).eos_token_id
    enc = get_encoder(tok)

    def gen(msgs):
        ids = torch.tensor([enc.encode_dialog(msgs, add_generation_prompt=True)], device=lm.device)
        with torch.no_grad():
            out = lm.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens, do_sample=False,
                              eos_token_id=stops, pad_token_id=tok.pad_token_id, temperature=None, top_p=None, top_k=None)
        return out.shape[1] - ids.shape[1]

    gen(convs[0])  # warm-up, not timed
    t0 = time.perf_counter()
    counts = [gen(m) for m in convs]
    return time.perf_counter() - t0, counts


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="an export folder (run.dir/export)")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=64)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model = str(Path(args.model).absolute())
    convs = _requests(args.clients)
    t_batch, n_batch = served(model, convs, args.max_tokens)
    t_seq, n_seq = sequential(model, convs, args.max_tokens)
    rate_batch, rate_seq = sum(n_batch) / t_batch, sum(n_seq) / t_seq
    ratio = rate_batch / rate_seq
    print(f"{'':34}{'tokens':>8}{'seconds':>10}{'tokens/s':>10}")
    print(f"{f'server, {args.clients} concurrent clients':34}{sum(n_batch):>8}{t_batch:>10.2f}{rate_batch:>10.1f}")
    print(f"{'plain generate, one after another':34}{sum(n_seq):>8}{t_seq:>10.2f}{rate_seq:>10.1f}")
    print(f"batching: {ratio:.2f}x the tokens/s of sequential generate (promise: >= 2x)")
    print(json.dumps({"clients": args.clients, "max_tokens": args.max_tokens, "served_tokens": sum(n_batch),
                      "served_seconds": round(t_batch, 3), "served_tokens_per_s": round(rate_batch, 1),
                      "generate_tokens": sum(n_seq), "generate_seconds": round(t_seq, 3),
                      "generate_tokens_per_s": round(rate_seq, 1), "ratio": round(ratio, 2)}))
    same = n_batch == n_seq
    if not same:
        print(f"answers differ in length: served {n_batch} vs generate {n_seq}", file=sys.stderr)
    return 0 if ratio >= 2 and same else 1


if __name__ == "__main__":
    sys.exit(main())
