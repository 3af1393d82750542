"""The model shape a plan is made for, found without loading (or even having) any weights.

In order: ``model.arch`` for ``init=random``; the ``config.json`` of a local ``model.path``; the
Hub cache's copy of it; the published shapes of the Llama 3 checkpoints below (so a login node
without the weights can still plan the 8B and 70B runs).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from ..errors import UserError
from ..flops import ModelShape

_LLAMA3_8B = dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                  num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=False)
_LLAMA3_70B = dict(vocab_size=128256, hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
                   num_attention_heads=64, num_key_value_heads=8, tie_word_embeddings=False)
# config.json of the Meta checkpoints (3.1 and 3.3 share the 3.0 shapes; only RoPE scaling differs).
KNOWN_SHAPES = {
    **{f"meta-llama/{n}": _LLAMA3_8B for n in ("Meta-Llama-3-8B", "Meta-Llama-3-8B-Instruct", "Llama-3.1-8B",
                                               "Llama-3.1-8B-Instruct", "Meta-Llama-3.1-8B")},
    **{f"meta-llama/{n}": _LLAMA3_70B for n in ("Meta-Llama-3-70B", "Meta-Llama-3-70B-Instruct", "Llama-3.1-70B",
                                                "Llama-3.1-70B-Instruct", "Meta-Llama-3.1-70B", "Llama-3.3-70B-Instruct")},
}


def _hub_cached_config(repo_id: str) -> dict | None:
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo_id, "config.json")
    except Exception:
        return None
    return json.loads(Path(found).read_text()) if isinstance(found, str) else None


def model_shape(cfg: DictConfig) -> tuple[ModelShape, str]:
    """(shape, where it came from) for ``cfg.model``."""
    m = cfg.model
    if m.init == "random":
        if not m.arch:
            raise UserError("model.init=random needs model.arch (see conf/model/tiny.yaml)")
        return ModelShape.from_config(OmegaConf.to_container(m.arch, resolve=True)), "model.arch"
    path = str(m.path or "")
    local = Path(os.path.expanduser(path))
    if path and (local / "config.json").is_file():
        return ModelShape.from_config(json.loads((local / "config.json").read_text())), f"{local}/config.json"
    cached = _hub_cached_config(path) if path.count("/") == 1 else None
    if cached:
        return ModelShape.from_config(cached), f"{path} (Hub cache)"
    if path in KNOWN_SHAPES:
        return ModelShape.from_config(KNOWN_SHAPES[path]), f"{path} (published config.json)"
    raise UserError(
        f"model.path={path or None}: cannot find its config.json to plan for; point model.path at a local "
        "Hugging Face model folder (only config.json is needed to plan)"
    )
