"""Prep throughput on one core, against a plain baseline in the same run.

    .venv/bin/python bench/bench_prep.py [--conversations 20000]

Corpus: synthetic Chinese chat (see ``make_corpus``): sentences of real Chinese words (the phrase
list of OpenCC's dictionary), with some English and code, in ShareGPT (multi-turn), Alpaca, Zhihu
and Firefly formats. Figures (tokens = template tokens of the kept samples):

- ours, full pipeline: ``prepare_dataset`` in-process (one core): read, parse, clean, validate,
  tokenise, mask, dedup (exact + MinHash), pack, write Parquet.
- ours, tokenise + mask: ``Llama3Encoder.encode_for_training`` on the parsed conversations.
- baseline: ``datasets.Dataset.map`` calling the stock HF ``tokenizer.apply_chat_template`` per
  example (ids only: no labels, no cleaning, no packing).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _words() -> list[str]:
    import opencc

    path = Path(opencc.__file__).parent / "dictionary" / "STPhrases.txt"
    from llama3zh_dist.data.clean import _traditional_chars

    trad = _traditional_chars()
    words = [line.split("\t", 1)[0] for line in path.read_text(encoding="utf-8").splitlines()]
    # Simplified Chinese words only (the dictionary's keys include characters t2s would rewrite)
    return [w for w in words if 2 <= len(w) <= 4 and trad.isdisjoint(w)]


_PUNCT = ["，", "，", "，", "。", "。", "；", "！", "？", "、"]
_EN = ["Python", "GPU", "AI", "Llama 3", "Transformer", "API", "SQL", "Linux", "HTTP", "JSON", "OK"]
_CODE = "```python\ndef f(x):\n    return [i * i for i in range(x)]\n```"


def _para(rng: random.Random, words: list[str], n_sent: int) -> str:
    out = []
    for _ in range(n_sent):
        k = rng.randint(4, 14)
        s = "".join(rng.choice(words) if rng.random() > 0.04 else f" {rng.choice(_EN)} " for _ in range(k))
        out.append(s + rng.choice(_PUNCT))
    text = "".join(out)
    if rng.random() < 0.02:  # some Traditional Chinese, as scraped corpora have
        text += "這是繁體中文的句子，軟體與網路的說明。"
    if rng.random() < 0.05:
        text += "\n\n" + _CODE
    return text


def make_corpus(folder: Path, n: int, seed: int = 0) -> dict:
    """n conversations spread over four formats; returns the data.sources config."""
    rng = random.Random(seed)
    words = _words()
    folder.mkdir(parents=True, exist_ok=True)
    files = {k: open(folder / f"{k}.jsonl", "w", encoding="utf-8") for k in ("sharegpt", "alpaca", "zhihu", "firefly")}
    for i in range(n):
        kind = rng.choices(list(files), weights=[0.35, 0.25, 0.2, 0.2])[0]
        if kind == "sharegpt":
            turns = []
            for _ in range(rng.randint(1, 4)):
                turns.append({"from": "human", "value": _para(rng, words, rng.randint(1, 3))})
                turns.append({"from": "gpt", "value": _para(rng, words, rng.randint(2, 10))})
            row = {"id": f"c{i}", "conversations": turns}
        elif kind == "alpaca":
            row = {"instruction": _para(rng, words, rng.randint(1, 2)), "input": "", "output": _para(rng, words, rng.randint(1, 5))}
        elif kind == "zhihu":
            row = {"INSTRUCTION": _para(rng, words, 1), "RESPONSE": _para(rng, words, rng.randint(5, 25))}
        else:
            conv = [{"human": _para(rng, words, 1), "assistant": _para(rng, words, rng.randint(2, 8))} for _ in range(rng.randint(1, 3))]
            row = {"conversation_id": i, "conversation": conv}
        files[kind].write(json.dumps(row, ensure_ascii=False) + "\n")
    for f in files.values():
        f.close()
    fmt = {"sharegpt": "sharegpt", "alpaca": "alpaca", "zhihu": "zhihu", "firefly": "firefly"}
    return {k: {"format": fmt[k], "files": [str(folder / f"{k}.jsonl")]} for k in files}


def make_cfg(sources: dict, out_dir: Path, max_seq_len: int = 4096, workers: int = 0, min_rows: int = 0, seed: int = 42):
    from omegaconf import OmegaConf

    from llama3zh_dist.config import load_config

    cfg = load_config(["model=tiny", "data=sample"])
    OmegaConf.set_struct(cfg, False)
    cfg.data.sources = sources
    cfg.data.out_dir = str(out_dir)
    cfg.data.max_seq_len = max_seq_len
    cfg.data.max_reject_fraction = 1.0
    cfg.data.ray.workers = workers
    cfg.data.ray.min_rows = min_rows
    cfg.trainer.seed = seed
    return cfg


def load_conversations(sources: dict) -> list[list[dict]]:
    from llama3zh_dist.data.sources import SourceSpec, to_messages

    convs = []
    for name, s in sources.items():
        spec = SourceSpec(name=name, format=s["format"], files=s["files"])
        with open(s["files"][0], encoding="utf-8") as f:
            for line in f:
                convs.append(to_messages(json.loads(line), spec)[0])
    return convs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--conversations", type=int, default=20000)
    args = ap.parse_args()
    os.environ.setdefault("RAY_DISABLE_IMPORT_WARNING", "1")
    from llama3zh_dist.data.prep import prepare_dataset
    from llama3zh_dist.llama3.chat_format import get_encoder
    from llama3zh_dist.llama3.hf_tokenizer import load_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        sources = make_corpus(tmp / "corpus", args.conversations)
        size = sum(os.path.getsize(s["files"][0]) for s in sources.values())
        print(f"corpus: {args.conversations:,} conversations, {size / 1e6:.1f} MB ({time.perf_counter() - t:.1f}s to generate)")
        convs = load_conversations(sources)

        # warm caches (tokenizer conversion, OpenCC tables) outside the timings
        tok = load_tokenizer(None)
        enc = get_encoder(tok)
        enc.encode_for_training(convs[0])

        # ours: tokenise + mask
        t = time.perf_counter()
        n_tok = 0
        for m in convs:
            ids, labels = enc.encode_for_training(m, validate=False)
            n_tok += len(ids)
        dt_enc = time.perf_counter() - t
        print(f"ours, tokenise+mask (encode_for_training): {n_tok / dt_enc:,.0f} tokens/s ({n_tok:,} tokens in {dt_enc:.1f}s)")

        # ours: full pipeline, in-process
        cfg = make_cfg(sources, tmp / "prepared", workers=0)
        t = time.perf_counter()
        out = prepare_dataset(cfg)
        dt_full = time.perf_counter() - t
        rep = json.loads((out / "data_report.json").read_text())
        print(f"ours, full prep in-process: {rep['tokens'] / dt_full:,.0f} tokens/s ({rep['tokens']:,} tokens of "
              f"{rep['kept']:,} kept samples in {dt_full:.1f}s; packing {rep['packing']['efficiency']:.2%})")

        # ours: full pipeline without the optional cleaning steps (what the pipeline itself costs)
        cfg = make_cfg(sources, tmp / "prepared_noclean", workers=0)
        for k in ("whitespace", "traditional_to_simplified", "exact_dedup"):
            cfg.data.clean[k] = False
        for k in ("near_dedup", "identity", "refusal"):
            cfg.data.clean[k].enabled = False
        t = time.perf_counter()
        out = prepare_dataset(cfg)
        dt_nc = time.perf_counter() - t
        rep_nc = json.loads((out / "data_report.json").read_text())
        print(f"ours, full prep in-process, cleaning steps off: {rep_nc['tokens'] / dt_nc:,.0f} tokens/s "
              f"({rep_nc['tokens']:,} tokens in {dt_nc:.1f}s)")

        # baseline: datasets.map + stock apply_chat_template
        import datasets
        from transformers import AutoTokenizer

        tok.save_pretrained(tmp / "tok")
        stock = AutoTokenizer.from_pretrained(tmp / "tok")
        datasets.disable_caching()
        ds = datasets.Dataset.from_list([{"messages": m} for m in convs])
        t = time.perf_counter()
        mapped = ds.map(
            lambda ex: {"input_ids": stock.apply_chat_template(ex["messages"], tokenize=True, return_dict=False)},
            remove_columns=["messages"],
        )
        dt_base = time.perf_counter() - t
        n_base = sum(len(x) for x in mapped["input_ids"])
        print(f"baseline, datasets.map + apply_chat_template: {n_base / dt_base:,.0f} tokens/s ({n_base:,} tokens in {dt_base:.1f}s)")
        base = n_base / dt_base
        print(f"ratio vs baseline: tokenise+mask {(n_tok / dt_enc) / base:.1f}x; full pipeline "
              f"{(rep['tokens'] / dt_full) / base:.2f}x; full pipeline without cleaning {(rep_nc['tokens'] / dt_nc) / base:.2f}x")


if __name__ == "__main__":
    main()
