"""Shared by the eval tests: a small Llama-3-architecture model folder (fresh weights, the real
128,256-id tokenizer) and benchmark folders in the official layouts written from the bundled set."""

from __future__ import annotations

import csv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BUNDLED_MC = ROOT / "data" / "eval" / "mc_zh"


def make_model_folder(folder: Path, *, max_positions: int = 2048, seed: int = 0) -> Path:
    """save_pretrained of a 2-layer Llama with weights spread wide enough that the four choices get
    clearly different log-likelihoods (a near-uniform model would make every comparison trivial)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from llama3zh_dist.llama3.hf_tokenizer import load_tokenizer

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=128256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_positions,
                      tie_word_embeddings=True, initializer_range=0.2, bos_token_id=128000, eos_token_id=128009)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    load_tokenizer(None).save_pretrained(folder)
    return folder


def write_ceval_layout(root: Path, subject_map: dict[str, str]) -> Path:
    """C-Eval layout (dev/ val/ test/, ``<subject>_<split>.csv``, ``id,question,A,B,C,D,answer,explanation``)
    from bundled CMMLU-layout subjects: {bundled subject: C-Eval subject name}."""
    for src, dst in subject_map.items():
        for split_src, split_dst in (("dev", "dev"), ("test", "val"), ("test", "test")):
            rows = list(csv.DictReader(open(BUNDLED_MC / split_src / f"{src}.csv", encoding="utf-8")))
            (root / split_dst).mkdir(parents=True, exist_ok=True)
            with open(root / split_dst / f"{dst}_{split_dst}.csv", "w", newline="", encoding="utf-8") as f:
                w = csv.writer(f)
                w.writerow(["id", "question", "A", "B", "C", "D", "answer", "explanation"])
                for i, r in enumerate(rows):
                    ans = "" if split_dst == "test" else r["Answer"]
                    w.writerow([i, r["Question"], r["A"], r["B"], r["C"], r["D"], ans, "" if split_dst == "test" else "解析"])
    return root
