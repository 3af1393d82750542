"""An export loaded for serving: its tokenizer, chat template, stop ids and one engine.

Prompts are token ids built here for every backend. With the export's template being ours
(:data:`~llama3zh_dist.llama3.chat_format.CHAT_TEMPLATE`) they come from the same encoder that
prepared the training data, so text that looks like a control token (a user typing ``<|eot_id|>``)
stays text exactly as in training; stock Hugging Face rendering would turn it into the special
token. An export with another template is rendered by Hugging Face with
``sanitize_control_tokens=True``. Generation stops at the ids of the export's
``generation_config.json`` (``<|eot_id|>``, ``<|end_of_text|>``).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from ..errors import UserError
from ..export.engine_args import context_length, engine_fields, export_dtype
from ..llama3.chat_format import CHAT_TEMPLATE, get_encoder
from ..llama3.tokens import STOP_TOKENS


def resolve_backend(wanted: str) -> str:
    """``auto``: vLLM when it is installed and a GPU is present, else transformers."""
    if wanted != "auto":
        return wanted
    import torch

    return "vllm" if importlib.util.find_spec("vllm") is not None and torch.cuda.is_available() else "transformers"


def stop_token_ids(folder: Path, tokenizer) -> list[int]:
    """The export's generation_config eos ids; Llama 3's <|eot_id|> / <|end_of_text|> if it has none."""
    path = folder / "generation_config.json"
    ids = json.loads(path.read_text()).get("eos_token_id") if path.exists() else None
    if ids is None:
        ids = tokenizer.convert_tokens_to_ids(list(STOP_TOKENS))
    ids = [ids] if isinstance(ids, int) else list(ids)
    return [int(i) for i in ids if i is not None]


def vllm_engine_args(folder: Path, model_id: str, serve) -> dict:
    """The exact ``vllm.AsyncEngineArgs`` keywords ``backend=auto`` uses with a GPU and vLLM.

    Tokenizer and generation config come from the export folder itself (its stop ids are vLLM's
    default stop); prompts reach vLLM as token ids built by :meth:`ServedModel.prompt_ids` (the
    export's chat template, look-alike control tokens kept as text), so vLLM's own template
    rendering is never used for them. Self-contained: reads only the export's config.json.
    """
    return {
        **engine_fields(folder, serve.dtype, serve.max_model_len),
        "served_model_name": [model_id],
        "max_num_seqs": int(serve.max_concurrent),
        "gpu_memory_utilization": float(serve.gpu_memory_utilization),
        "tokenizer_mode": "auto",
        "enable_prefix_caching": True,
        "seed": 0,
    }


class ServedModel:
    """One export, loaded once, answering every request for its model id."""

    def __init__(self, folder: Path, model_id: str, serve, trust_remote_code: bool = False):
        from transformers import AutoTokenizer

        self.folder, self.model_id = Path(folder), model_id
        if not (self.folder / "config.json").exists():
            raise UserError(f"no exported model at {self.folder} (config.json missing): pass an export folder "
                            "(run.dir/export, or a checkpoint exported with export.step=N)")
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.folder), local_files_only=True,
                                                       trust_remote_code=trust_remote_code)
        self.ours = self.tokenizer.chat_template == CHAT_TEMPLATE
        self.encoder = get_encoder(self.tokenizer) if self.ours else None
        self.stop_ids = stop_token_ids(self.folder, self.tokenizer)
        self.max_model_len = context_length(self.folder, serve.max_model_len)
        self.backend = resolve_backend(serve.backend)
        if self.backend == "vllm":
            from .vllm_backend import VllmEngine

            self.engine = VllmEngine(vllm_engine_args(self.folder, model_id, serve), self.stop_ids)
        else:
            self.engine = self._transformers_engine(serve, trust_remote_code)

    def _transformers_engine(self, serve, trust_remote_code: bool):
        import torch
        from transformers import AutoModelForCausalLM

        from .engine import BatchedEngine

        device = "cuda" if torch.cuda.is_available() else "cpu"
        model = AutoModelForCausalLM.from_pretrained(
            str(self.folder), local_files_only=True, trust_remote_code=trust_remote_code,
            dtype=getattr(torch, export_dtype(self.folder, serve.dtype)),
        ).to(device).eval()
        pad = self.tokenizer.pad_token_id
        return BatchedEngine(model, self.stop_ids, pad if pad is not None else self.stop_ids[0],
                             serve.max_concurrent, serve.max_queue)

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        """The conversation + the assistant header, as training encoded it."""
        if self.ours:
            return self.encoder.encode_dialog(messages, add_generation_prompt=True)
        return list(self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                       return_dict=False, sanitize_control_tokens=True))
