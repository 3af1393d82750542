"""The Llama 3 tokenizer as a Hugging Face fast tokenizer: loading, checks and fingerprints.

``load_tokenizer(None)`` builds the real Llama 3 tokenizer (128,256 ids) from the ``tokenizer.model``
shipped in the ``llama-models`` package, converted once to a Hugging Face fast tokenizer and cached
under ``~/.cache/llama3zh_dist`` (keyed by the sha256 of that file). ``load_tokenizer(path_or_hub_id)``
loads the tokenizer of a model folder or Hub id. Either way the result carries the 256 Llama 3
special tokens with Meta's ids, ``bos`` = ``<|begin_of_text|>``, ``pad`` = ``<|finetune_right_pad_id|>``
and :data:`~.chat_format.CHAT_TEMPLATE`, which renders exactly the training format of
:mod:`.chat_format`.

Special-token strings typed inside message text (a user writing ``<|eot_id|>``) are plain text for
our encoder. What stock Hugging Face does (transformers 5.x, checked): ``apply_chat_template`` renders
the template to a string and tokenises that string, so by default a typed ``<|eot_id|>`` becomes the
special token 128009; with ``sanitize_control_tokens=True`` it stays text, but HF then tokenises the
text around it separately (``"hi <|eot_id|>"`` -> ``hi`` ``' '`` ``<`` ``|`` ... instead of Meta's ``hi``
``' <|'`` ...), so the ids still differ from Meta's. Handling: the tokenizer returned here is a
:class:`Llama3TokenizerFast` whose ``apply_chat_template(tokenize=True)`` with our template tokenises
through our encoder: same ids as :func:`.chat_format.encode_dialog` in all cases
(``return_assistant_tokens_mask`` too, equal to the training loss mask). Saved folders name the stock
``PreTrainedTokenizerFast`` class, so ``AutoTokenizer.from_pretrained`` loads them anywhere without
custom code; there, look-alikes need ``sanitize_control_tokens=True`` and can differ from Meta as
above, which is why the chat CLI encodes prompts with our encoder, not with HF.

Every message's content is stripped of leading and trailing whitespace first, by our encoder and
by the template (``| trim``), as Meta's llama3 reference and HF's Llama 3 Instruct template do. So
stock HF string rendering also never puts whitespace next to the header's ``"\\n\\n"`` (which the
pre-tokenizer would merge with it): the export's ``apply_chat_template`` gives the training tokens for
any content, edge whitespace included.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from ..errors import UserError
from ..fileio import sha256_file
from ..hub import hub_reachable
from .chat_format import CHAT_TEMPLATE, TEMPLATE_VERSION, get_encoder
from .tokens import BOS, EOT, IGNORE_INDEX, PAD, PAT_STR, SPECIAL_TOKEN_IDS, SPECIAL_TOKENS, meta_tokenizer_model_path

CACHE_DIR = Path(os.environ.get("LLAMA3ZH_CACHE", Path.home() / ".cache" / "llama3zh_dist"))


def _converted_tokenizer_json() -> Path:
    """tokenizer.json for the llama-models BPE, converted once and cached by the file's sha256."""
    model_file = meta_tokenizer_model_path()
    out = CACHE_DIR / f"llama3-tokenizer-{sha256_file(model_file)[:16]}" / "tokenizer.json"
    if out.exists():
        return out
    from transformers.convert_slow_tokenizer import TikTokenConverter

    conv = TikTokenConverter(vocab_file=str(model_file), pattern=PAT_STR, extra_special_tokens=SPECIAL_TOKENS)
    backend = conv.converted()
    out.parent.mkdir(parents=True, exist_ok=True)
    # tokenizers' own save writes the file; temp + rename so concurrent processes never read half of it
    fd, tmp = tempfile.mkstemp(dir=out.parent, suffix=".tmp")
    os.close(fd)
    backend.save(tmp)
    os.replace(tmp, out)
    return out


# ---------------------------------------------------------------- apply_chat_template through our encoder
def _ours(tok, tools, documents, continue_final_message, kwargs, tokenizer_kwargs, sanitize_control_tokens,
          chat_template, tokenize) -> bool:
    """Is this a plain chat rendering with our template (which our encoder does token for token)?"""
    return bool(
        tokenize and not tools and not documents and not continue_final_message and not kwargs
        and not tokenizer_kwargs and sanitize_control_tokens is not False
        and (chat_template or tok.chat_template) == CHAT_TEMPLATE
    )


def _encode_conversations(tok, convs, add_generation_prompt: bool, truncation, max_length):
    """(ids, assistant masks) per conversation: the training ids and loss mask (+ header if asked)."""
    enc = get_encoder(tok)
    all_ids, all_masks = [], []
    for conv in convs:
        msgs = [{"role": m["role"], "content": m["content"]} for m in conv]
        ids, labels = enc.encode_for_training(msgs, train_on="all_assistant", validate=False)
        if add_generation_prompt:
            head = enc.header_ids("assistant")
            ids, labels = ids + head, labels + [IGNORE_INDEX] * len(head)
        if truncation and max_length is not None:
            ids, labels = ids[:max_length], labels[:max_length]
        all_ids.append(ids)
        all_masks.append([0 if x == IGNORE_INDEX else 1 for x in labels])
    return all_ids, all_masks


def _chat_batch_encoding(tok, all_ids, all_masks, batched, *, padding, max_length, return_tensors,
                         return_dict, return_assistant_tokens_mask):
    """What ``apply_chat_template(tokenize=True)`` returns, in HF's shapes, for our ids."""
    from transformers import BatchEncoding

    if not return_dict:
        if return_tensors:
            return BatchEncoding({"input_ids": all_ids if batched else all_ids[0]}, tensor_type=return_tensors)["input_ids"]
        return all_ids if batched else all_ids[0]
    data = {"input_ids": all_ids, "attention_mask": [[1] * len(x) for x in all_ids]}
    if return_assistant_tokens_mask:
        data["assistant_masks"] = all_masks
    if padding:
        out = tok.pad({k: v for k, v in data.items() if k != "assistant_masks"}, padding=padding,
                      max_length=max_length, return_tensors=None)
        data.update(out)
        if return_assistant_tokens_mask:
            width = max(len(x) for x in data["input_ids"])
            data["assistant_masks"] = [m + [0] * (width - len(m)) for m in all_masks]
    if not batched:
        data = {k: v[0] for k, v in data.items()}
    return BatchEncoding(data, tensor_type=return_tensors)


def _build_tokenizer_class():
    """Define :class:`Llama3TokenizerFast` on first use: importing transformers costs ~1 s, which
    the Ray prep workers (they only need the constants and tiktoken) should not pay."""
    from transformers import PreTrainedTokenizerFast

    class Llama3TokenizerFast(PreTrainedTokenizerFast):
        """PreTrainedTokenizerFast whose ``apply_chat_template(tokenize=True)`` with our template returns
        exactly the ids of :func:`llama3zh_dist.llama3.chat_format.encode_dialog` (Meta's reference
        format): message text is always plain text, header and content are encoded separately as Meta
        does.

        Stock HF renders the template to a string and tokenizes that string, which (a) turns
        ``<|eot_id|>`` typed by a user into the special token and (b) even with
        ``sanitize_control_tokens=True`` splits the text around such look-alikes (``"hi <|eot_id|>"``
        becomes ``hi``+`` ``+``<``... instead of Meta's ``hi``+`` <|``...). So for our template we
        tokenise with our encoder; other templates, tools/documents and ``tokenize=False`` go to HF.
        Saved folders name the stock ``PreTrainedTokenizerFast`` class so they load without custom code
        (there, pass ``sanitize_control_tokens=True`` to keep look-alikes as text).
        """

        def apply_chat_template(self, conversation, tools=None, documents=None, chat_template=None,
                                add_generation_prompt=False, continue_final_message=False, tokenize=True,
                                sanitize_control_tokens=None, padding=False, truncation=False, max_length=None,
                                return_tensors=None, return_dict=True, return_assistant_tokens_mask=False,
                                tokenizer_kwargs=None, **kwargs):
            batched = isinstance(conversation, (list, tuple)) and len(conversation) > 0 and isinstance(
                conversation[0], (list, tuple))
            convs = conversation if batched else [conversation]
            if _ours(self, tools, documents, continue_final_message, kwargs, tokenizer_kwargs,
                     sanitize_control_tokens, chat_template, tokenize) and all(
                    isinstance(m, dict) for c in convs for m in c):
                ids, masks = _encode_conversations(self, convs, add_generation_prompt, truncation, max_length)
                return _chat_batch_encoding(self, ids, masks, batched, padding=padding, max_length=max_length,
                                            return_tensors=return_tensors, return_dict=return_dict,
                                            return_assistant_tokens_mask=return_assistant_tokens_mask)
            return super().apply_chat_template(
                conversation, tools=tools, documents=documents, chat_template=chat_template,
                add_generation_prompt=add_generation_prompt, continue_final_message=continue_final_message,
                tokenize=tokenize, sanitize_control_tokens=bool(sanitize_control_tokens), padding=padding,
                truncation=truncation, max_length=max_length, return_tensors=return_tensors,
                return_dict=return_dict, return_assistant_tokens_mask=return_assistant_tokens_mask,
                tokenizer_kwargs=tokenizer_kwargs, **kwargs,
            )

        def save_pretrained(self, save_directory, *args, **kwargs):
            out = super().save_pretrained(save_directory, *args, **kwargs)
            cfg_path = Path(save_directory) / "tokenizer_config.json"
            if cfg_path.exists():  # the stock class: the folder loads anywhere without our code
                cfg = json.loads(cfg_path.read_text())
                cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
                cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")
            return out

    Llama3TokenizerFast.__module__ = __name__
    Llama3TokenizerFast.__qualname__ = "Llama3TokenizerFast"
    return Llama3TokenizerFast


_CLASS = None


def __getattr__(name):  # module attribute, built lazily (pickle finds it by name too)
    global _CLASS
    if name == "Llama3TokenizerFast":
        if _CLASS is None:
            _CLASS = _build_tokenizer_class()
        return _CLASS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ---------------------------------------------------------------- loading
def _is_meta(model_path) -> bool:
    return model_path is None or str(model_path) in ("", "null", "None")


def _hf_backend(model_path, trust_remote_code: bool):
    """(backend tokenizer, model_max_length) of a model folder or Hub id; UserError if it cannot load."""
    from transformers import AutoTokenizer

    try:
        try:  # a local folder, or a Hub id already in the local cache: no network round trips
            hf = AutoTokenizer.from_pretrained(str(model_path), trust_remote_code=trust_remote_code,
                                               local_files_only=True)
        except OSError:
            if os.path.isdir(str(model_path)) or not hub_reachable():
                raise
            hf = AutoTokenizer.from_pretrained(str(model_path), trust_remote_code=trust_remote_code)
    except OSError as e:
        why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if not os.path.isdir(str(model_path)) and not hub_reachable():
            why = "not a local folder, not in the local Hugging Face cache, and the Hub is unreachable"
        raise UserError(
            f"model.path={model_path!r}: cannot load its tokenizer ({why}). Point model.path at a local "
            "Hugging Face model folder (or model=tiny for the bundled Llama 3 tokenizer), or make the Hub "
            "reachable (HF_TOKEN for gated models)."
        ) from None
    backend = getattr(hf, "backend_tokenizer", None) or getattr(hf, "_tokenizer", None)
    if backend is None:
        raise UserError(f"model.path={model_path!r}: its tokenizer is not a fast (tokenizers) tokenizer")
    return backend, getattr(hf, "model_max_length", 131072)


def load_tokenizer(model_path: str | None, trust_remote_code: bool = False):
    """Return the Llama 3 fast tokenizer with our chat template, bos, pad and special tokens.

    ``model_path``: a local Hugging Face model folder or Hub id, or None for the real Llama 3
    tokenizer from the llama-models package (no model files needed).
    """
    cls = __getattr__("Llama3TokenizerFast")
    common = dict(bos_token=BOS, eos_token=EOT, pad_token=PAD, clean_up_tokenization_spaces=False)
    if _is_meta(model_path):
        tok = cls(tokenizer_file=str(_converted_tokenizer_json()), model_max_length=131072, **common)
    else:
        backend, max_len = _hf_backend(model_path, trust_remote_code)
        tok = cls(tokenizer_object=backend, model_max_length=max_len, **common)
    _check_special_tokens(tok, model_path)
    if _is_meta(model_path):
        tok._llama3zh_encoder = get_encoder(None)  # same BPE by construction: skip the vocab comparison
        tok._llama3zh_is_meta = True
    tok.chat_template = CHAT_TEMPLATE
    tok.padding_side = "right"
    return tok


def _check_special_tokens(tok, model_path) -> None:
    ids = tok.convert_tokens_to_ids(SPECIAL_TOKENS)
    bad = [t for t, i in zip(SPECIAL_TOKENS, ids) if SPECIAL_TOKEN_IDS[t] != i]
    if bad:
        raise UserError(
            f"model.path={model_path!r}: not a Llama 3 tokenizer ({len(bad)} of the 256 special tokens missing "
            f"or at other ids, e.g. {bad[0]}). Use a Llama 3 model folder."
        )
    # make sure every special token is registered as special (Meta base checkpoints on the Hub are)
    missing = [t for t in SPECIAL_TOKENS if t not in set(tok.all_special_tokens) and t not in tok.get_added_vocab()]
    if missing:
        tok.add_special_tokens({"additional_special_tokens": missing}, replace_additional_special_tokens=False)


def load_encoder(model_path, trust_remote_code: bool = False):
    """(Llama 3 encoder, tokenizer fingerprint) for ``model.path`` (None: the llama-models tokenizer,
    whose encoder needs only its BPE file, not the HF tokenizer)."""
    if _is_meta(model_path):
        return get_encoder(None), meta_tokenizer_fingerprint()
    tok = load_tokenizer(model_path, trust_remote_code=trust_remote_code)
    try:
        encoder = get_encoder(tok)
    except ValueError as e:
        raise UserError(f"model.path={model_path!r}: {e}") from None
    return encoder, tokenizer_fingerprint(tok)


# ---------------------------------------------------------------- fingerprints
def meta_tokenizer_fingerprint() -> str:
    """Fingerprint of the llama-models tokenizer (what ``load_tokenizer(None)`` builds), from the
    sha256 of its tokenizer.model: no need to build the HF tokenizer to know it."""
    h = hashlib.sha256()
    h.update(b"llama-models:" + sha256_file(meta_tokenizer_model_path()).encode())
    h.update(PAT_STR.encode())
    h.update(CHAT_TEMPLATE.encode())
    h.update(TEMPLATE_VERSION.encode())
    return h.hexdigest()[:32]


def tokenizer_fingerprint(tok) -> str:
    """A short hash of what decides token ids: vocab, merges, pre-tokenizer, special tokens, template."""
    if getattr(tok, "_llama3zh_is_meta", False):
        return meta_tokenizer_fingerprint()
    h = hashlib.sha256()
    h.update(tok.backend_tokenizer.to_str().encode())
    h.update(CHAT_TEMPLATE.encode())
    h.update(TEMPLATE_VERSION.encode())
    return h.hexdigest()[:32]
