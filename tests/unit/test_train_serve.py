"""Train = serve: stock ``AutoTokenizer`` of an export's tokenizer folder renders exactly the tokens
prep trained on, whatever whitespace a serving stack leaves around each turn."""

from __future__ import annotations

import json
import random

import pyarrow as pa
import pyarrow.parquet as pq
from omegaconf import OmegaConf

from llama3zh_dist.data.prep import prepare_dataset
from llama3zh_dist.llama3.chat_format import CHAT_TEMPLATE
from llama3zh_dist.llama3.hf_tokenizer import load_tokenizer

_EDGES = [" ", "  ", "\n", "\n\n", "\t", " \n ", "\r\n", "\u3000", "\n\t ", ""]
_BODIES = [
    "你好，请介绍一下你自己。",
    "为什么天空是蓝色的？因为瑞利散射。",
    "Explain transformers in one paragraph.",
    "```python\ndef fib(n):\n    return n if n < 2 else fib(n-1) + fib(n-2)\n```",
    "第一段。\n\n第二段：列表\n- 一\n- 二",
    "naïve café — “quotes” and ‘apostrophes’ 😀",
    "12 × 37 = 444",
]


def _edge(rng: random.Random, k: int) -> str:
    return _EDGES[k % (len(_EDGES) - 1)] if rng.random() < 0.9 else ""


def _conversations(n: int) -> list[list[dict]]:
    rng = random.Random(7)
    convs = []
    for i in range(n):
        msgs = []
        roles = (["system"] if i % 2 == 0 else []) + ["user", "assistant"] * rng.randint(1, 3)
        for j, role in enumerate(roles):
            body = f"{rng.choice(_BODIES)}（第{i}组第{j}句）"
            # leading and trailing whitespace in every role; every kind of edge over the set
            msgs.append({"role": role, "content": _edge(rng, i + j) + body + _edge(rng, i * 3 + j + 1)})
        convs.append(msgs)
    return convs


def test_export_tokenizer_renders_exactly_the_training_tokens_with_edge_whitespace(tmp_path):
    from transformers import AutoTokenizer

    from llama3zh_dist.config import load_config

    convs = _conversations(60)
    with open(tmp_path / "chat.jsonl", "w", encoding="utf-8") as f:
        for i, msgs in enumerate(convs):
            f.write(json.dumps({"id": f"c{i}", "messages": msgs}, ensure_ascii=False) + "\n")
    cfg = load_config(["model=tiny", "data=sample"])
    OmegaConf.set_struct(cfg, False)
    cfg.data.sources = {"chat": {"format": "messages", "files": [str(tmp_path / "chat.jsonl")]}}
    cfg.data.out_dir = str(tmp_path / "prepared")
    cfg.data.max_seq_len = 2048
    cfg.data.ray.workers = 0
    for k in ("traditional_to_simplified", "exact_dedup"):  # content changes other than trimming are not under test
        cfg.data.clean[k] = False
    for k in ("near_dedup", "identity", "refusal"):
        cfg.data.clean[k].enabled = False
    out = prepare_dataset(cfg)
    trained = {}
    for r in pa.concat_tables([pq.read_table(p) for p in sorted(out.glob("part-*.parquet"))]).to_pylist():
        starts = [i for i, p in enumerate(r["position_ids"]) if p == 0] + [len(r["position_ids"])]
        for sid, a, b in zip(r["sample_ids"], starts, starts[1:]):
            trained[sid] = r["input_ids"][a:b]
    assert len(trained) == len(convs)

    # an export's tokenizer folder: what export writes (save_pretrained), loaded by stock AutoTokenizer
    load_tokenizer(None).save_pretrained(tmp_path / "export")
    served = AutoTokenizer.from_pretrained(tmp_path / "export")
    assert type(served).__name__ != "Llama3TokenizerFast" and served.chat_template == CHAT_TEMPLATE  # stock HF class
    header = served.encode("<|start_header_id|>assistant<|end_header_id|>\n\n", add_special_tokens=False)
    untrimmed = CHAT_TEMPLATE.replace(" | trim", "")
    differs_untrimmed = 0
    for i, msgs in enumerate(convs):
        ids = trained[f"chat:c{i}"]
        assert served.apply_chat_template(msgs, tokenize=True, return_dict=False) == ids
        # serving: the history up to the last answer, with the generation prompt = the training
        # tokens up to where the last answer starts
        last = max(k for k in range(len(ids) - len(header) + 1) if ids[k : k + len(header)] == header)
        prompt = served.apply_chat_template(msgs[:-1], add_generation_prompt=True, tokenize=True, return_dict=False)
        assert prompt == ids[: last + len(header)]
        old = served.apply_chat_template(msgs, chat_template=untrimmed, tokenize=True, return_dict=False)
        differs_untrimmed += old != ids
    assert differs_untrimmed > 50  # the untrimmed template would not have matched: the test can fail
