"""The Llama 3 Instruct chat format, encoded fast and exactly.

Token for token what Meta's ``llama_models.llama3.chat_format.ChatFormat.encode_dialog_prompt``
produces for the messages with each content stripped of leading and trailing whitespace (Meta's
llama3 reference and HF's Llama 3 Instruct template strip; the ``llama_models`` copy does not),
without its trailing assistant header unless ``add_generation_prompt``::

    <|begin_of_text|>
    <|start_header_id|>{role}<|end_header_id|>\\n\\n{content}<|eot_id|>     (per message)
    [<|start_header_id|>assistant<|end_header_id|>\\n\\n]                   (add_generation_prompt)

Text is tokenised with tiktoken directly (``encode_ordinary``: special-token strings inside text are
plain text), each message's content on its own, with Meta's chunking of very long texts; special
tokens are inserted by id. Labels (``encode_for_training``): ``-100`` everywhere except assistant
content tokens and their closing ``<|eot_id|>`` (all assistant turns, or only the last one).
:data:`CHAT_TEMPLATE` is the same format as a Jinja chat template, for the exported tokenizer.
"""

from __future__ import annotations

import threading
from typing import Iterable, Sequence

import tiktoken

from .tokens import (
    BOS_ID,
    END_HEADER_ID,
    EOT_ID,
    IGNORE_INDEX,
    NUM_BASE_TOKENS,
    PAT_STR,
    SPECIAL_TOKEN_IDS,
    START_HEADER_ID,
    meta_tokenizer_model_path,
)

ROLES = ("system", "user", "assistant")
TRAIN_ON = ("all_assistant", "last_assistant")

# Meta's limits (llama_models.llama3.tokenizer): chunks of <= 400k chars, runs of <= 25k
# whitespace / non-whitespace characters. Reproduced so very long texts tokenise identically.
_MAX_ENCODE_CHARS = 400_000
_MAX_NO_WHITESPACE_CHARS = 25_000


def _split_whitespaces_or_nonwhitespaces(s: str, max_len: int):
    current_len = 0
    current_is_space = s[0].isspace() if len(s) > 0 else False
    start = 0
    for i in range(len(s)):
        is_space = s[i].isspace()
        if current_is_space ^ is_space:
            current_len = 1
            current_is_space = is_space
        else:
            current_len += 1
            if current_len > max_len:
                yield s[start:i]
                start = i
                current_len = 1
    yield s[start:]


class Llama3Encoder:
    """Encodes conversations in the Llama 3 chat format with a tiktoken BPE (picklable)."""

    def __init__(self, mergeable_ranks: dict[bytes, int], key: str | None = None):
        self._ranks = mergeable_ranks
        self.key = key  # "meta" for the llama-models tokenizer: pickles as a name, not 128k ranks
        self.enc = tiktoken.Encoding(
            name="llama3zh",
            pat_str=PAT_STR,
            mergeable_ranks=mergeable_ranks,
            special_tokens=SPECIAL_TOKEN_IDS,
        )
        self._encode = self.enc.encode_ordinary
        self._headers = {
            role: [START_HEADER_ID] + self._encode(role) + [END_HEADER_ID] + self._encode("\n\n")
            for role in ROLES + ("ipython",)
        }

    def __reduce__(self):
        if self.key == "meta":
            return (_meta_encoder, ())
        return (Llama3Encoder, (self._ranks, self.key))

    # -- text
    def encode_text(self, s: str) -> list[int]:
        """Plain text to ids exactly like Meta's ``Tokenizer.encode(s, bos=False, eos=False)``."""
        if len(s) <= _MAX_NO_WHITESPACE_CHARS:
            return self._encode(s)
        out: list[int] = []
        for i in range(0, len(s), _MAX_ENCODE_CHARS):
            for sub in _split_whitespaces_or_nonwhitespaces(s[i : i + _MAX_ENCODE_CHARS], _MAX_NO_WHITESPACE_CHARS):
                out.extend(self._encode(sub))
        return out

    def decode(self, ids: Sequence[int]) -> str:
        return self.enc.decode(list(ids))

    def header_ids(self, role: str) -> list[int]:
        h = self._headers.get(role)
        if h is None:
            h = [START_HEADER_ID] + self._encode(role) + [END_HEADER_ID] + self._encode("\n\n")
        return list(h)

    # -- dialogs
    def encode_messages(self, messages: Sequence[dict]) -> list[list[int]]:
        """Per-message token lists (header + content + eot), without BOS."""
        out = []
        for m in messages:
            out.append(self._headers[m["role"]] + self.encode_text(m["content"].strip()) + [EOT_ID])
        return out

    def encode_dialog(self, messages: Sequence[dict], *, add_generation_prompt: bool = False) -> list[int]:
        ids = [BOS_ID]
        for m in messages:
            ids += self.header_ids(m["role"])
            ids += self.encode_text(m["content"].strip())
            ids.append(EOT_ID)
        if add_generation_prompt:
            ids += self.header_ids("assistant")
        return ids

    def encode_for_training(
        self,
        messages: Sequence[dict],
        train_on: str = "all_assistant",
        *,
        validate: bool = True,
    ) -> tuple[list[int], list[int]]:
        """(input_ids, labels): labels are -100 except assistant content and its ``<|eot_id|>``."""
        if train_on not in TRAIN_ON:
            raise ValueError(f"train_on must be one of {TRAIN_ON}, got {train_on!r}")
        if validate:
            check_messages(messages)
        last_asst = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=-1)
        ids = [BOS_ID]
        labels = [IGNORE_INDEX]
        for i, m in enumerate(messages):
            head = self._headers.get(m["role"]) or self.header_ids(m["role"])
            body = self.encode_text(m["content"].strip())
            body.append(EOT_ID)
            ids += head
            labels += [IGNORE_INDEX] * len(head)
            ids += body
            if m["role"] == "assistant" and (train_on == "all_assistant" or i == last_asst):
                labels += body
            else:
                labels += [IGNORE_INDEX] * len(body)
        return ids, labels


class ConversationError(ValueError):
    """A conversation that does not have the chat structure; ``reason`` is the reject reason
    (``empty_turn``, ``no_assistant_turn``, ``wrong_role_order``, ``unknown_role``)."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def check_messages(messages: Sequence[dict]) -> None:
    """Raise :class:`ConversationError` unless messages follow SPEC: optional system, then
    user/assistant alternating, starting with user, ending with assistant, every content a non-empty
    string."""
    if not messages:
        raise ConversationError("no_assistant_turn", "no messages")
    for i, m in enumerate(messages):
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise ConversationError("unknown_role", f"message {i} has unknown role {role!r}")
        if not isinstance(content, str) or not content.strip():
            raise ConversationError("empty_turn", f"message {i} ({role}) is empty")
    if not any(m["role"] == "assistant" for m in messages):
        raise ConversationError("no_assistant_turn", "no assistant message")
    start = 1 if messages[0]["role"] == "system" else 0
    for i in range(start, len(messages)):
        want = "user" if (i - start) % 2 == 0 else "assistant"
        if messages[i]["role"] != want:
            raise ConversationError("wrong_role_order", f"message {i} is {messages[i]['role']!r}, expected {want!r}")
    if messages[-1]["role"] != "assistant":
        raise ConversationError("wrong_role_order", "ends with a user turn, not an assistant turn")


# ---------------------------------------------------------------- chat template
# Renders exactly what Llama3Encoder below encodes (and Meta's encode_dialog_prompt, minus
# the trailing assistant header unless add_generation_prompt). Content is trimmed (Jinja's ``trim`` is
# Python's ``str.strip()``), as Meta's llama3 reference and HF's Llama 3 Instruct template do and as
# training does: whatever whitespace a serving stack sends around a turn, the model sees the tokens
# it was trained on.
# The {% generation %} block marks assistant content + <|eot_id|>: HF's
# return_assistant_tokens_mask=True then equals the training loss mask.
CHAT_TEMPLATE = (
    "{{- '<|begin_of_text|>' -}}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}"
    "{%- generation -%}{{- message['content'] | trim + '<|eot_id|>' -}}{%- endgeneration -%}"
    "{%- else -%}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}{%- endif -%}"
)
TEMPLATE_VERSION = "llama3-instruct-v2"  # v2: content trimmed in the template and the encoder


# ---------------------------------------------------------------- encoder lookup
_LOCK = threading.Lock()
_META: Llama3Encoder | None = None


def _meta_ranks() -> dict[bytes, int]:
    from llama_models.tokenizer_utils import load_bpe_file

    return load_bpe_file(meta_tokenizer_model_path())


def _meta_encoder() -> Llama3Encoder:
    global _META
    with _LOCK:
        if _META is None:
            _META = Llama3Encoder(_meta_ranks(), key="meta")
    return _META


def _ranks_from_hf(tok) -> dict[bytes, int] | None:
    """Byte-level BPE ranks from a HF fast tokenizer's vocab (ids below the special tokens)."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    dec = {v: k for k, v in bytes_to_unicode().items()}
    ranks = {}
    try:
        for t, i in tok.get_vocab().items():
            if i >= NUM_BASE_TOKENS:
                continue
            ranks[bytes(dec[c] for c in t)] = i
    except KeyError:
        return None
    return ranks


_PROBE = "Hello 世界!  \n\n  代码: def f(x):\n\treturn x**2 # 🤖 <|eot_id|> 123456 naïve Ünïcödé ’s 了吗？"


def get_encoder(tokenizer=None) -> Llama3Encoder:
    """The fast encoder for a tokenizer (None: the llama-models Llama 3 tokenizer).

    A HF tokenizer with the Llama 3 vocabulary maps to the same tiktoken BPE; the result is cached
    on the tokenizer object. Raises ValueError if the vocabulary is not byte-level BPE we can mirror.
    """
    if tokenizer is None:
        return _meta_encoder()
    if isinstance(tokenizer, Llama3Encoder):
        return tokenizer
    cached = getattr(tokenizer, "_llama3zh_encoder", None)
    if cached is not None:
        return cached
    meta = _meta_encoder()
    ranks = _ranks_from_hf(tokenizer)
    if ranks is None:
        raise ValueError("tokenizer vocabulary is not byte-level BPE; cannot build the Llama 3 encoder")
    enc = meta if ranks == meta._ranks else Llama3Encoder(ranks)
    probe_hf = tokenizer.encode(_PROBE, add_special_tokens=False, split_special_tokens=True)
    if probe_hf != enc.encode_text(_PROBE):
        raise ValueError("tokenizer does not tokenise like its byte-level BPE ranks; not a Llama 3 tokenizer")
    try:
        tokenizer._llama3zh_encoder = enc
    except Exception:  # pragma: no cover
        pass
    return enc


def encode_dialog(tokenizer_or_encoder, messages: Sequence[dict], *, add_generation_prompt: bool = False) -> list[int]:
    """Token ids of a conversation in the Llama 3 chat format (Meta's reference, token for token).

    ``tokenizer_or_encoder``: a :class:`Llama3Encoder`, a HF tokenizer with the Llama 3 vocabulary,
    or None for the llama-models tokenizer. With ``add_generation_prompt`` the assistant header is
    appended for the model to complete (what Meta's ``encode_dialog_prompt`` always does).
    """
    return get_encoder(tokenizer_or_encoder).encode_dialog(messages, add_generation_prompt=add_generation_prompt)


def encode_for_training(
    messages: Sequence[dict],
    train_on: str = "all_assistant",
    *,
    encoder=None,
) -> tuple[list[int], list[int]]:
    """(input_ids, labels) for one conversation; labels -100 except assistant content + ``<|eot_id|>``
    (every assistant turn, or only the last with ``train_on="last_assistant"``)."""
    return get_encoder(encoder).encode_for_training(messages, train_on)


def iter_supervised_spans(labels: Iterable[int]):
    """(start, end) index pairs of runs of supervised labels."""
    start = None
    i = -1
    for i, x in enumerate(labels):
        if x != IGNORE_INDEX and start is None:
            start = i
        elif x == IGNORE_INDEX and start is not None:
            yield start, i
            start = None
    if start is not None:
        yield start, i + 1
