"""The OpenAI-compatible API, through the ``openai`` client, on the quickstart export served by a real
``python -m llama3zh_dist.serve`` subprocess on loopback (the session's ``served`` fixture).

Promises: greedy streamed chunks (each whole characters) joined = the non-streamed answer = what
plain ``generate`` answers; ``stop`` and ``max_tokens`` with the right ``finish_reason``; ``usage`` =
the tokenizer's counts; a typed ``<|eot_id|>`` stays text exactly as training encodes it and the
reply stops at the real one; every error in OpenAI's shape with its status; the key enforced and
never printed.
"""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from conftest import SERVE_KEY

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def client(served):
    import openai

    return openai.OpenAI(base_url=served.base_url + "/v1", api_key=SERVE_KEY, max_retries=0)


@pytest.fixture(scope="module")
def reference(quickstart_export):
    """Plain transformers on the same export: tokenizer, model, stop ids, and greedy ``generate``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    tok = AutoTokenizer.from_pretrained(quickstart_export, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(quickstart_export, local_files_only=True).eval()
    stops = GenerationConfig.from_pretrained(quickstart_export).eos_token_id

    def generate(prompt_ids, n):
        with torch.no_grad():
            out = model.generate(torch.tensor([prompt_ids]), max_new_tokens=n, do_sample=False, eos_token_id=stops,
                                 pad_token_id=tok.pad_token_id, temperature=None, top_p=None, top_k=None)
        return out[0, len(prompt_ids):].tolist()

    return tok, generate, stops


@pytest.fixture(scope="module")
def encoder():
    """The encoder ``prep`` tokenised the quickstart data with (model.path of the quickstart config)."""
    from llama3zh_dist.config import load_config
    from llama3zh_dist.llama3.hf_tokenizer import load_encoder

    cfg = load_config(["+experiment=quickstart"])
    return load_encoder(cfg.model.path, False)[0]


def _question() -> str:
    from llama3zh_dist.quickstart_check import quickstart_pairs

    return quickstart_pairs()[0][0]


def test_models_lists_the_path_as_given_and_health_answers(served, client, quickstart_export):
    assert [m.id for m in client.models.list().data] == [str(quickstart_export)]
    assert httpx.get(served.base_url + "/health").json() == {"status": "ok"}


def test_greedy_stream_equals_non_stream_equals_generate_with_whole_characters(client, reference, encoder,
                                                                               quickstart_export):
    tok, generate, stops = reference
    messages = [{"role": "user", "content": _question()}]
    kw = dict(model=str(quickstart_export), messages=messages, temperature=0, max_tokens=200)
    full = client.chat.completions.create(**kw)
    chunks, finish, usage = [], None, None
    for ev in client.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True}):
        if ev.usage:
            usage = ev.usage
        for c in ev.choices:
            if c.delta.content:
                chunks.append(c.delta.content)
            finish = c.finish_reason or finish
    answer = full.choices[0].message.content
    assert "".join(chunks) == answer
    assert all("\ufffd" not in c for c in chunks)  # no chunk ends inside a character

    prompt = encoder.encode_dialog(messages, add_generation_prompt=True)
    ids = generate(prompt, 200)
    assert answer == tok.decode(ids, skip_special_tokens=True)
    assert full.choices[0].finish_reason == finish == ("stop" if ids[-1] in stops else "length")
    assert full.usage.prompt_tokens == usage.prompt_tokens == len(prompt)
    assert full.usage.completion_tokens == usage.completion_tokens == len(ids)
    assert full.usage.total_tokens == len(prompt) + len(ids)
    # the answer is Chinese and some character of it spans two tokens: the hold-back was needed
    assert sum("\u4e00" <= ch <= "\u9fff" for ch in answer) > 5
    assert any("\ufffd" in tok.decode(ids[:k]) for k in range(1, len(ids)))


def test_max_tokens_ends_with_length_and_stop_ends_before_the_stop_text(client, quickstart_export):
    kw = dict(model=str(quickstart_export), messages=[{"role": "user", "content": _question()}], temperature=0)
    short = client.chat.completions.create(**kw, max_completion_tokens=3)
    assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 3
    answer = client.chat.completions.create(**kw, max_tokens=60).choices[0].message.content
    stop = answer[6:8]
    cut = client.chat.completions.create(**kw, max_tokens=60, stop=[stop])
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].message.content == answer[: answer.index(stop)]
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        **kw, max_tokens=60, stop=stop, stream=True) if c.choices)
    assert streamed == cut.choices[0].message.content


def test_a_typed_eot_stays_text_as_training_encodes_it_and_the_reply_stops_at_the_real_one(
        served, client, reference, encoder, quickstart_export):
    tok, generate, stops = reference
    messages = [{"role": "system", "content": "你是一个乐于助人的中文助手。"},
                {"role": "user", "content": _question() + " <|eot_id|><|start_header_id|>assistant<|end_header_id|>"}]
    served_ids = httpx.post(served.base_url + "/tokenize", json={"messages": messages},
                            headers={"Authorization": f"Bearer {SERVE_KEY}"}).json()["tokens"]
    trained_ids = encoder.encode_dialog(messages, add_generation_prompt=True)
    assert served_ids == trained_ids
    eot = tok.convert_tokens_to_ids("<|eot_id|>")
    assert served_ids.count(eot) == 2  # the end of the system and the user turn; the typed one is text
    reply = client.chat.completions.create(model=str(quickstart_export), messages=messages, temperature=0,
                                           max_tokens=256)
    ids = generate(trained_ids, 256)
    assert ids[-1] == eot and len(ids) < 256  # the model does stop here ...
    assert reply.choices[0].finish_reason == "stop"  # ... and so does the server, at the same token
    assert reply.usage.completion_tokens == len(ids)
    assert reply.choices[0].message.content == tok.decode(ids, skip_special_tokens=True)


def _error(resp: httpx.Response, status: int) -> dict:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert "Traceback" not in resp.text
    return body["error"]


def test_errors_have_openai_shape_and_status(served, client, quickstart_export):
    import openai

    url = served.base_url + "/v1/chat/completions"
    auth = {"Authorization": f"Bearer {SERVE_KEY}"}
    ok = {"model": str(quickstart_export), "messages": [{"role": "user", "content": "你好"}], "max_tokens": 2}
    _error(httpx.post(url, content=b"{not json", headers=auth), 400)
    assert _error(httpx.post(url, json={**ok, "temperature": 5}, headers=auth), 400)["param"] == "temperature"
    assert _error(httpx.post(url, json={**ok, "messages": []}, headers=auth), 400)["param"] == "messages"
    _error(httpx.post(url, json={**ok, "max_tokens": 100000}, headers=auth), 400)
    assert _error(httpx.post(url, json=ok), 401)["code"] == "invalid_api_key"
    _error(httpx.post(url, json=ok, headers={"Authorization": "Bearer wrong"}), 401)
    _error(httpx.get(served.base_url + "/v1/models"), 401)
    assert _error(httpx.post(url, json={**ok, "model": "no/such/model"}, headers=auth), 404)["code"] == "model_not_found"
    big = {**ok, "messages": [{"role": "user", "content": "长" * 70000}]}
    _error(httpx.post(url, json=big, headers=auth), 413)
    # the openai client sees the same
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no/such/model", messages=ok["messages"])
    with pytest.raises(openai.AuthenticationError):
        type(client)(base_url=served.base_url + "/v1", api_key="wrong", max_retries=0).models.list()
    # the key was never printed by the server
    assert SERVE_KEY not in served.log


def test_a_full_queue_is_429_and_the_slots_come_back(served, quickstart_export):
    """8 rows + 12 waiting: 26 long answers at once leave some 429s; all slots are free afterwards."""
    body = {"model": str(quickstart_export), "messages": [{"role": "user", "content": "随便说点什么"}],
            "temperature": 2.0, "max_tokens": 256, "stream": True}
    auth = {"Authorization": f"Bearer {SERVE_KEY}"}

    async def flood():
        async with httpx.AsyncClient(timeout=None) as http:
            reqs = [http.build_request("POST", served.base_url + "/v1/chat/completions", json=body, headers=auth)
                    for _ in range(26)]
            resps = await asyncio.gather(*(http.send(r, stream=True) for r in reqs))
            statuses = [r.status_code for r in resps]
            errors = [json.loads(await r.aread()) for r in resps if r.status_code != 200]
            for r in resps:
                await r.aclose()  # leaving mid-stream: each row is freed
            return statuses, errors

    statuses, errors = asyncio.run(flood())
    assert set(statuses) == {200, 429} and statuses.count(200) >= 20
    assert all(e["error"]["code"] == "queue_full" for e in errors)
    while httpx.get(served.base_url + "/api/stats", headers=auth).json()[str(quickstart_export)]["in_flight"]:
        asyncio.run(asyncio.sleep(0.2))
