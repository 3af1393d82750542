"""What a serving engine reads from an export folder: the arguments vLLM's engine gets for it.

vLLM picks its model implementation from ``config.json``'s ``architectures`` (so an export must name
it, see :func:`.hf_files.architecture_of`), its dtype from ``torch_dtype``/``dtype``, the context from
``max_position_embeddings`` and the stop tokens from ``generation_config.json``.
"""

from __future__ import annotations

import json
import pathlib

from typing import Optional

from llama3zh_dist.errors import UserError


def export_dtype(folder: pathlib.Path, wanted: str = "auto") -> str:
    """``wanted``, or for ``auto`` the dtype the export was written in (config.json)."""
    if wanted != "auto":
        return wanted
    cfg = json.loads((folder / "config.json").read_text())
    return str(cfg.get("torch_dtype") or cfg.get("dtype") or "float32")


def context_length(folder: pathlib.Path, wanted: Optional[int] = None) -> int:
    """``wanted`` capped at the model's ``max_position_embeddings`` (8192 when config.json has none)."""
    cfg = json.loads((folder / "config.json").read_text())
    limit = int(cfg.get("max_position_embeddings") or 8192)
    return min(wanted, limit) if wanted else limit


def engine_fields(folder, dtype: str = "auto", max_model_len: Optional[int] = None) -> dict:
    """The vLLM engine keywords an export folder alone decides (the server adds its own on top)."""
    folder = pathlib.Path(folder)
    return {"model": str(folder), "tokenizer": str(folder), "dtype": export_dtype(folder, dtype),
            "max_model_len": context_length(folder, max_model_len), "generation_config": str(folder),
            "trust_remote_code": False}


def vllm_engine_args(export_dir) -> dict:
    """``{"engine_args": <vllm.EngineArgs keyword arguments>, "architecture", "stop_token_ids"}``."""
    export_dir = pathlib.Path(export_dir)
    cfg = json.loads((export_dir / "config.json").read_text())
    archs = cfg.get("architectures") or []
    if not archs:
        raise UserError(f"{export_dir}/config.json names no architecture: vLLM cannot pick a model class; "
                        "export again with this version")
    gen_file = export_dir / "generation_config.json"
    gen = json.loads(gen_file.read_text()) if gen_file.is_file() else {}
    eos = gen.get("eos_token_id", [])
    return {"engine_args": engine_fields(export_dir),
            "architecture": archs[0], "stop_token_ids": eos if isinstance(eos, list) else [eos]}
