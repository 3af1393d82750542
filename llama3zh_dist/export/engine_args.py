"""What a serving engine reads from an export folder: the arguments vLLM's engine gets for it.

vLLM picks its model implementation from ``config.json``'s ``architectures`` (so an export must name
it, see :func:`.hf_files.architecture_of`), its dtype from ``torch_dtype``/``dtype``, the context from
``max_position_embeddings`` and the stop tokens from ``generation_config.json``.
"""

from __future__ import annotations

import json
import pathlib

from llama3zh_dist.errors import UserError


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
    return {"engine_args": {"model": str(export_dir), "tokenizer": str(export_dir),
                            "dtype": cfg.get("torch_dtype") or cfg.get("dtype") or "auto",
                            "max_model_len": int(cfg["max_position_embeddings"]),
                            "trust_remote_code": False, "generation_config": "auto"},
            "architecture": archs[0], "stop_token_ids": eos if isinstance(eos, list) else [eos]}
