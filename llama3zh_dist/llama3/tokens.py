"""The Llama 3 special tokens with Meta's ids, the pre-tokenizer pattern and the llama-models BPE file.

The 256 special tokens follow the 128,000 BPE ids in Meta's order (``llama_models.llama3.tokenizer``);
every Llama 3 / 3.1 tokenizer has them at these ids (checked when a tokenizer is loaded).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError

NUM_BASE_TOKENS = 128000
NUM_SPECIAL_TOKENS = 256

_NAMED_SPECIALS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>",
    "<|step_id|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eom_id|>",
    "<|eot_id|>",
    "<|python_tag|>",
    "<|image|>",
]
SPECIAL_TOKENS: list[str] = _NAMED_SPECIALS + [
    f"<|reserved_special_token_{2 + i}|>" for i in range(NUM_SPECIAL_TOKENS - len(_NAMED_SPECIALS))
]
SPECIAL_TOKEN_IDS: dict[str, int] = {t: NUM_BASE_TOKENS + i for i, t in enumerate(SPECIAL_TOKENS)}
VOCAB_SIZE = NUM_BASE_TOKENS + NUM_SPECIAL_TOKENS  # 128,256

BOS = "<|begin_of_text|>"
END_OF_TEXT = "<|end_of_text|>"
PAD = "<|finetune_right_pad_id|>"
START_HEADER = "<|start_header_id|>"
END_HEADER = "<|end_header_id|>"
EOM = "<|eom_id|>"
EOT = "<|eot_id|>"

BOS_ID = SPECIAL_TOKEN_IDS[BOS]  # 128000
END_OF_TEXT_ID = SPECIAL_TOKEN_IDS[END_OF_TEXT]  # 128001
PAD_ID = SPECIAL_TOKEN_IDS[PAD]  # 128004
START_HEADER_ID = SPECIAL_TOKEN_IDS[START_HEADER]  # 128006
END_HEADER_ID = SPECIAL_TOKEN_IDS[END_HEADER]  # 128007
EOM_ID = SPECIAL_TOKEN_IDS[EOM]  # 128008
EOT_ID = SPECIAL_TOKEN_IDS[EOT]  # 128009
STOP_TOKENS = (EOT, END_OF_TEXT)  # a chat turn ends at either
STOP_TOKEN_IDS = (EOT_ID, END_OF_TEXT_ID)

# Label of a token that takes no loss (PyTorch's cross_entropy ignore_index default).
IGNORE_INDEX = -100

# The Llama 3 pre-tokenizer pattern (llama_models.llama3.tokenizer.Tokenizer.pat_str).
PAT_STR = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def meta_tokenizer_model_path() -> Path:
    """Path of ``llama_models/llama3/tokenizer.model`` (the real Llama 3 BPE ranks)."""
    import llama_models

    path = Path(llama_models.__file__).parent / "llama3" / "tokenizer.model"
    if not path.exists():
        raise UserError(
            f"the llama-models package has no {path}; reinstall it (pip install llama-models) or set model.path"
        )
    return path
