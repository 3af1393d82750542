"""The Hugging Face files of an export besides the weights: ``config.json`` (in the export dtype) and
``generation_config.json`` (stops on ``<|eot_id|>`` and ``<|end_of_text|>``)."""

from __future__ import annotations

import copy
import json
import pathlib

import torch

from llama3zh_dist.errors import UserError
from llama3zh_dist.llama3.tokens import BOS, BOS_ID, PAD, PAD_ID, STOP_TOKEN_IDS, STOP_TOKENS

DTYPES = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16,
          "float32": torch.float32, "fp32": torch.float32}
DTYPE_NAMES = {torch.bfloat16: "bfloat16", torch.float16: "float16", torch.float32: "float32"}

# Llama 3 generation defaults (ids of the real Llama 3 tokenizer).
GENERATION_DEFAULTS = {"bos_token_id": BOS_ID, "eos_token_id": list(STOP_TOKEN_IDS), "pad_token_id": PAD_ID}


def resolve_dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        if dtype in DTYPE_NAMES:
            return dtype
    elif str(dtype).replace("torch.", "") in DTYPES:
        return DTYPES[str(dtype).replace("torch.", "")]
    raise UserError(f"export.dtype={dtype!r} is not supported: use bfloat16, float16 or float32")



def write_generation_config(path: pathlib.Path, tokenizer, hf_config) -> None:
    from transformers import GenerationConfig

    ids = dict(GENERATION_DEFAULTS)
    vocab = tokenizer.get_vocab() if tokenizer is not None and hasattr(tokenizer, "get_vocab") else {}
    named = {"bos_token_id": [BOS], "eos_token_id": list(STOP_TOKENS), "pad_token_id": [PAD]}
    for key, toks in named.items():
        if all(t in vocab for t in toks):
            got = [vocab[t] for t in toks]
            ids[key] = got if key == "eos_token_id" else got[0]
    gen = GenerationConfig(do_sample=False, **ids)
    gen.save_pretrained(path)


def architecture_of(hf_config) -> list[str]:
    """The model class names ``config.json`` must carry: llama.cpp's converter and vLLM pick the model
    implementation from ``architectures``, which a config built from ``model.arch`` (from scratch) lacks."""
    if getattr(hf_config, "architectures", None):
        return list(hf_config.architectures)
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    name = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(getattr(hf_config, "model_type", ""))
    if not name:
        raise UserError(f"model_type {getattr(hf_config, 'model_type', None)!r} has no causal-LM class in "
                        "transformers; the export cannot name its architecture")
    return [name]


def write_config(path: pathlib.Path, hf_config, dtype: torch.dtype) -> None:
    cfg = copy.deepcopy(hf_config)
    cfg.architectures = architecture_of(hf_config)
    cfg.dtype = dtype  # transformers 5 writes it as "dtype"; 4.x reads "torch_dtype" (set below)
    cfg.save_pretrained(path)
    f = path / "config.json"
    data = json.loads(f.read_text())
    data["torch_dtype"] = DTYPE_NAMES[dtype]  # read by transformers 4.x; 5.x reads "dtype"
    if "dtype" in data:
        data["dtype"] = DTYPE_NAMES[dtype]
    f.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
