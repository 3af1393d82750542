"""Chat samples: the bundled prompts, the per-answer checks, and ``python -m llama3zh_dist.eval``
end to end on a model folder (files written, W&B table read back from the offline run)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from _eval_helpers import ROOT, make_model_folder
from llama3zh_dist.errors import UserError
from llama3zh_dist.eval.chat_samples import (chinese_share, default_prompt_file, distinct_2, generate_conversation,
                                             load_prompts, summarize_chat)


def test_bundled_prompts_cover_the_promised_kinds():
    convs = load_prompts([default_prompt_file()])
    assert len(convs) >= 30
    cats = {c["category"] for c in convs}
    assert {"identity", "code", "knowledge", "ruozhiba", "xiaohongshu", "multi_turn"} <= cats
    assert sum(len(c["turns"]) > 1 for c in convs) >= 3
    five = [c for c in convs if len(c["turns"]) == 5]
    assert five and "前面" in five[0]["turns"][-1]
    assert sum(c["identity"] for c in convs) >= 4
    assert all(chinese_share(t) > 0.25 for c in convs for t in c["turns"] if c["category"] != "code")


def test_user_prompt_files_are_read_and_bad_ones_named(tmp_path):
    mine = tmp_path / "mine.jsonl"
    mine.write_text('{"prompt": "你好"}\n\n{"id": "x", "turns": ["一", "二"], "identity": true}\n', encoding="utf-8")
    convs = load_prompts([mine])
    assert [c["turns"] for c in convs] == [["你好"], ["一", "二"]] and convs[1]["identity"]
    mine.write_text('{"turns": []}\n')
    with pytest.raises(UserError, match="mine.jsonl:1"):
        load_prompts([mine])
    with pytest.raises(UserError, match="does not exist"):
        load_prompts([tmp_path / "none.jsonl"])


def test_check_measures():
    assert chinese_share("你好, world") == pytest.approx(2 / 8)
    assert chinese_share("") == 0.0
    assert distinct_2("你好你好你好") == pytest.approx(2 / 5)
    assert distinct_2("一二三四") == 1.0
    assert distinct_2("\n\n\n\n") == pytest.approx(1 / 3)


def _steered_model(token_id: int):
    """A real Llama whose every greedy step is ``token_id``: the layers add nothing to the residual
    stream, every embedding has a large positive first coordinate, and only ``token_id``'s output row
    reads it."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=128256, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    m = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for layer in m.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        m.model.embed_tokens.weight[:, 0] = 10.0
        m.lm_head.weight.zero_()
        m.lm_head.weight[token_id, 0] = 1.0
    return m


def test_checks_on_a_model_that_stops_and_one_that_runs_on():
    from llama3zh_dist.llama3.hf_tokenizer import load_tokenizer

    tok = load_tokenizer(None)
    conv = {"id": "c", "category": "identity", "turns": ["你是谁？", "再说一遍"], "identity": True}
    eot = tok.convert_tokens_to_ids("<|eot_id|>")
    stops = generate_conversation(_steered_model(eot), tok, conv, max_new_tokens=6, identity_name="好好", device="cpu")
    assert [r["stopped_at_eot"] for r in stops] == [True, True] and stops[0]["answer"] == ""
    assert stops[0]["new_tokens"] == 1 and stops[0]["identity_ok"] is False
    hao = tok.encode("好", add_special_tokens=False)
    assert len(hao) == 1
    runs = generate_conversation(_steered_model(hao[0]), tok, conv, max_new_tokens=6, identity_name="好好", device="cpu")
    r = runs[0]
    assert r["answer"] == "好" * 6 and not r["stopped_at_eot"] and r["new_tokens"] == 6
    assert r["chinese_share"] == 1.0 and r["distinct_2"] == pytest.approx(1 / 5) and r["identity_ok"] is True
    s = summarize_chat(stops + runs)
    assert s == {"n": 4, "stopped_at_eot": 0.5, "chinese_share": 0.5, "distinct_2": pytest.approx((1 + 1 + 0.2 + 0.2) / 4),
                 "identity_ok": 0.5}


def _wandb_table(out: Path) -> dict:
    tables = list((out / "wandb").glob("offline-run-*/files/media/table/eval/chat_samples*.table.json"))
    assert len(tables) == 1, list((out / "wandb").rglob("*"))
    return json.loads(tables[0].read_text())


def test_eval_command_on_an_export_writes_results_items_generations_and_wandb(tmp_path):
    model = make_model_folder(tmp_path / "model")
    mine = tmp_path / "mine.jsonl"
    mine.write_text('{"id": "mine", "prompt": "用一句话介绍杭州。"}\n', encoding="utf-8")
    out = tmp_path / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "llama3zh_dist.eval", f"model.path={model}", "eval.benchmarks=[cmmlu,chat]",
         "eval.cmmlu.path=data/eval/mc_zh", "eval.subjects=[nutrition,chinese_food_culture]",
         "eval.chat.max_new_tokens=4", f"eval.chat.prompts=[data/eval/chat_prompts.jsonl,{mine}]", f"eval.out_dir={out}"],
        cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "cmmlu    overall" in proc.stdout and "chat samples (39)" in proc.stdout
    assert "wandb:" not in proc.stdout + proc.stderr  # no library noise on the console
    results = json.loads((out / "results.json").read_text())
    assert results["cmmlu"]["n"] == 25 and set(results["cmmlu"]["subjects"]) == {"nutrition", "chinese_food_culture"}
    assert set(results["cmmlu"]["categories"]) == {"Other", "Social Science", "China specific"}
    items = [json.loads(x) for x in (out / "items.jsonl").read_text().splitlines()]
    assert len(items) == 25 and set(items[0]) == {"benchmark", "subject", "index", "answer", "predicted", "loglik"}
    gens = [json.loads(x) for x in (out / "generations.jsonl").read_text().splitlines()]
    assert len(gens) == 39 and gens[-1]["id"] == "mine"
    assert results["chat"]["n"] == 39 and results["chat"]["identity_ok"] is not None
    table = _wandb_table(out)
    cols = table["columns"]
    assert cols[:5] == ["id", "category", "turn", "prompt", "answer"]
    rows = [dict(zip(cols, row)) for row in table["data"]]
    assert [r["answer"] for r in rows] == [g["answer"] for g in gens]
    assert [r["distinct_2"] for r in rows] == pytest.approx([g["distinct_2"] for g in gens])
