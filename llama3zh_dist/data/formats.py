"""Format conversion: one parsed row of a source -> canonical messages ``[{"role", "content"}, ...]``,
and the structure check of SPEC (see :mod:`llama3zh_dist.data.sources` for the formats).

Conversion never raises anything but :class:`Reject` (with a reason). Role aliases are resolved here
(:func:`llama3zh_dist.data.repair.resolve_role`); the other repairs run on the cleaned messages.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..llama3.chat_format import ConversationError, check_messages
from .repair import DEFAULTS as REPAIR_DEFAULTS, RoleError, resolve_role

if TYPE_CHECKING:
    from .source_spec import SourceSpec

# Each format's own role names; aliases and tool-call roles: see repair.resolve_role.
_SHAREGPT_ROLES = {"human": "user", "gpt": "assistant", "system": "system"}
_MESSAGE_ROLES = {"system": "system", "user": "user", "assistant": "assistant"}


# Reject reasons: the one vocabulary. Validation reasons count towards data.max_reject_fraction;
# filter reasons (cleaning and mixture decisions) are recorded the same way but do not. A reason in
# neither would be recorded but counted nowhere, so making one is refused at once (check_reason).
VALIDATION_REASONS = (
    "bad_json",
    "not_an_object",
    "missing_field",
    "wrong_type",
    "unknown_role",
    "wrong_role_order",
    "empty_turn",
    "no_assistant_turn",
    "too_long",
    "no_supervised_tokens",
    "non_text_content",
    "tool_call_role",
)
FILTER_REASONS = ("refusal", "duplicate", "near_duplicate", "downsampled")


def check_reason(reason: str) -> str:
    """``reason``, if it is in the vocabulary; a new reason must be added to one of the two lists."""
    if reason not in VALIDATION_REASONS and reason not in FILTER_REASONS:
        raise ValueError(
            f"reject reason {reason!r} is not in VALIDATION_REASONS or FILTER_REASONS "
            "(llama3zh_dist/data/formats.py): add it to VALIDATION_REASONS if it should count towards "
            "data.max_reject_fraction, else to FILTER_REASONS"
        )
    return reason


class Reject(Exception):
    def __init__(self, reason: str, detail: str = ""):
        check_reason(reason)
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


# ---------------------------------------------------------------- format conversion
def _str_field(obj: dict, key: str, *, required: bool = True, allow_empty: bool = False) -> str | None:
    if key not in obj or obj[key] is None:
        if required:
            raise Reject("missing_field", f"no {key!r}")
        return None
    v = obj[key]
    if not isinstance(v, str):
        raise Reject("wrong_type", f"{key!r} is {type(v).__name__}, not a string")
    return v


def _list_field(obj: dict, key: str) -> list:
    if key not in obj or obj[key] is None:
        raise Reject("missing_field", f"no {key!r}")
    v = obj[key]
    if not isinstance(v, list):
        raise Reject("wrong_type", f"{key!r} is {type(v).__name__}, not a list")
    return v


def _text_of_parts(parts: list, where: str) -> str:
    """OpenAI (``{"type": "text", "text": ...}``) and LLaMA-Factory (``{"type": "text", "value": ...}``)
    content parts, joined as text the way chat templates render them (no separator)."""
    out = []
    for k, p in enumerate(parts):
        if isinstance(p, str):
            out.append(p)
            continue
        if not isinstance(p, dict):
            raise Reject("wrong_type", f"{where} content[{k}] is {type(p).__name__}, not a content part")
        kind = p.get("type", "text")
        text = p.get("text", p.get("value"))
        if kind != "text":
            raise Reject("non_text_content", f"{where} content[{k}] is a {kind!r} part; only text is trained on")
        if not isinstance(text, str):
            raise Reject("wrong_type", f"{where} content[{k}] has no string 'text'")
        out.append(text)
    return "".join(out)


def _msg(role: str, content: Any, where: str) -> dict:
    if isinstance(content, list):
        return {"role": role, "content": _text_of_parts(content, where)}
    if not isinstance(content, str):
        raise Reject("wrong_type", f"{where} content is {type(content).__name__ if content is not None else 'null'}")
    return {"role": role, "content": content}


def _role(name: str, own: dict, spec: SourceSpec, ctx: dict, where: str) -> str:
    try:
        return resolve_role(name, own, spec.roles, ctx["repair"], ctx["counts"])
    except RoleError as e:
        raise Reject(e.reason, f"{where}: {e.detail}") from None


def _conv_sharegpt(obj: dict, spec: SourceSpec, ctx: dict) -> list[dict]:
    """``conversations`` of ``{"from", "value"}`` (human/user, gpt/assistant, system), optional ``system``."""
    turns = _list_field(obj, "conversations")
    msgs = []
    sys_ = _str_field(obj, "system", required=False)
    if sys_ and sys_.strip():
        msgs.append({"role": "system", "content": sys_})
    for i, t in enumerate(turns):
        if not isinstance(t, dict):
            raise Reject("wrong_type", f"conversations[{i}] is {type(t).__name__}, not an object")
        frm = t.get("from", t.get("role"))
        if not isinstance(frm, str):
            raise Reject("missing_field" if frm is None else "wrong_type", f"conversations[{i}] has no string 'from'")
        role = _role(frm, _SHAREGPT_ROLES, spec, ctx, f"conversations[{i}].from")
        msgs.append(_msg(role, t.get("value", t.get("content")), f"conversations[{i}]"))
    return msgs


def _conv_alpaca(obj: dict, spec: SourceSpec, ctx: dict) -> list[dict]:
    """``instruction``, optional ``input``, ``output``, optional ``system`` and ``history`` ([[q, a], ...])."""
    instruction = _str_field(obj, "instruction")
    inp = _str_field(obj, "input", required=False) or ""
    output = _str_field(obj, "output")
    msgs = []
    sys_ = _str_field(obj, "system", required=False)
    if sys_ and sys_.strip():
        msgs.append({"role": "system", "content": sys_})
    hist = obj.get("history")
    if hist is not None:
        if not isinstance(hist, list):
            raise Reject("wrong_type", "'history' is not a list of [question, answer] pairs")
        for i, pair in enumerate(hist):
            if not isinstance(pair, (list, tuple)) or len(pair) != 2:
                raise Reject("wrong_type", f"history[{i}] is not a [question, answer] pair")
            msgs.append(_msg("user", pair[0], f"history[{i}][0]"))
            msgs.append(_msg("assistant", pair[1], f"history[{i}][1]"))
    user = instruction if not inp.strip() else (instruction.rstrip() + "\n\n" + inp.strip() if instruction.strip() else inp)
    msgs.append({"role": "user", "content": user})
    msgs.append({"role": "assistant", "content": output})
    return msgs


def _conv_zhihu(obj: dict, spec: SourceSpec, ctx: dict) -> list[dict]:
    """Zhihu-KOL ``INSTRUCTION`` / ``RESPONSE``."""
    return [
        {"role": "user", "content": _str_field(obj, "INSTRUCTION")},
        {"role": "assistant", "content": _str_field(obj, "RESPONSE")},
    ]


def _conv_firefly(obj: dict, spec: SourceSpec, ctx: dict) -> list[dict]:
    """``conversation`` of ``{"human", "assistant"}``, optional ``system`` (or Firefly-1.1M ``input``/``target``)."""
    msgs = []
    sys_ = _str_field(obj, "system", required=False)
    if sys_ and sys_.strip():
        msgs.append({"role": "system", "content": sys_})
    if "conversation" not in obj and "input" in obj and "target" in obj:  # Firefly-1.1M single turn
        return msgs + [
            {"role": "user", "content": _str_field(obj, "input")},
            {"role": "assistant", "content": _str_field(obj, "target")},
        ]
    turns = _list_field(obj, "conversation")
    for i, t in enumerate(turns):
        if not isinstance(t, dict):
            raise Reject("wrong_type", f"conversation[{i}] is {type(t).__name__}, not an object")
        unknown = [k for k in t if k not in ("human", "assistant")]
        if unknown:
            raise Reject("unknown_role", f"conversation[{i}] has key {unknown[0]!r} (want human/assistant)")
        if "human" not in t:
            raise Reject("wrong_role_order", f"conversation[{i}] has no 'human' turn")
        msgs.append(_msg("user", t["human"], f"conversation[{i}].human"))
        if "assistant" in t:
            msgs.append(_msg("assistant", t["assistant"], f"conversation[{i}].assistant"))
    return msgs


def _conv_messages(obj: dict, spec: SourceSpec, ctx: dict) -> list[dict]:
    """OpenAI ``messages`` of ``{"role", "content"}``."""
    turns = _list_field(obj, "messages")
    msgs = []
    for i, t in enumerate(turns):
        if not isinstance(t, dict):
            raise Reject("wrong_type", f"messages[{i}] is {type(t).__name__}, not an object")
        role = t.get("role")
        if not isinstance(role, str):
            raise Reject("missing_field" if role is None else "wrong_type", f"messages[{i}] has no string 'role'")
        msgs.append(_msg(_role(role, _MESSAGE_ROLES, spec, ctx, f"messages[{i}].role"), t.get("content"), f"messages[{i}]"))
    return msgs


class _Fields(dict):
    def __missing__(self, key):
        raise Reject("missing_field", f"prompt_template needs field {key!r}")


def _conv_columns(obj: dict, spec: SourceSpec, ctx: dict) -> list[dict]:
    """any column mapping: ``columns: {user: title, assistant: content, system: null, id: null}`` and an
    optional ``prompt_template`` (``str.format`` over the row's fields) that builds the user turn, e.g.
    ``"请以小红书的风格，为标题《{title}》写一篇笔记。"``."""
    cols = spec.columns or {}
    msgs = []
    if cols.get("system"):
        s = _str_field(obj, cols["system"], required=False)
        if s and s.strip():
            msgs.append({"role": "system", "content": s})
    if spec.prompt_template:
        fields = _Fields()
        for k, v in obj.items():
            if v is None:
                continue
            if not isinstance(v, (str, int, float)):
                continue
            fields[k] = v
        for k in [cols.get("user")] if cols.get("user") else []:
            _str_field(obj, k)  # type check the mapped column
        try:
            user = spec.prompt_template.format_map(fields)
        except (IndexError, ValueError) as e:
            raise Reject("wrong_type", f"prompt_template: {e}") from None
    else:
        user = _str_field(obj, cols["user"])
    msgs.append({"role": "user", "content": user})
    msgs.append({"role": "assistant", "content": _str_field(obj, cols["assistant"])})
    return msgs


# The registry of formats (``format:`` of a source): name -> converter, whose docstring describes the
# rows it reads. ``schema/data.py`` FORMATS names the same formats for config checks (tested equal).
_CONVERTERS = {
    "sharegpt": _conv_sharegpt,
    "alpaca": _conv_alpaca,
    "zhihu": _conv_zhihu,
    "firefly": _conv_firefly,
    "messages": _conv_messages,
    "columns": _conv_columns,
}

_DEFAULT_ID_FIELDS = ("id", "conversation_id", "ID", "uid")


def to_messages(obj: Any, spec: SourceSpec, repair: dict | None = None, counts=None) -> tuple[list[dict], str | None]:
    """(messages, raw id) of one parsed row in the source's format; raises :class:`Reject`.

    ``repair``: the ``data.repair`` switches (role aliases are resolved here); ``counts``: a Counter
    that gets the repairs made."""
    if not isinstance(obj, dict):
        raise Reject("not_an_object", f"row is a JSON {type(obj).__name__}, not an object")
    from collections import Counter

    ctx = {"repair": REPAIR_DEFAULTS if repair is None else repair, "counts": Counter() if counts is None else counts}
    msgs = _CONVERTERS[spec.format](obj, spec, ctx)
    if spec.system_prompt and not (msgs and msgs[0]["role"] == "system"):
        msgs.insert(0, {"role": "system", "content": spec.system_prompt})
    return msgs, row_id(obj, spec)


def row_id(obj: Any, spec: "SourceSpec") -> str | None:
    """The row's own id (``spec.id_field`` or a usual id field), None if it has none."""
    if not isinstance(obj, dict):
        return None
    for k in [spec.id_field] if spec.id_field else _DEFAULT_ID_FIELDS:
        v = obj.get(k) if k else None
        if isinstance(v, (str, int)) and not isinstance(v, bool) and str(v).strip():
            return str(v).strip()
    return None


def validate_messages(msgs: list[dict]) -> None:
    """SPEC structure (:func:`llama3zh_dist.llama3.chat_format.check_messages`); raises
    :class:`Reject` with the reason."""
    try:
        check_messages(msgs)
    except ConversationError as e:
        raise Reject(e.reason, e.detail) from None
