"""Repair before reject: unambiguous fixes of a converted conversation, each a switch in ``data.repair``.

Published chat dumps are dirty in known ways (ShareGPT chunks that start with the assistant, turns
of one role split in two, share-site banners as system turns, empty or unanswered turns). Each fix
below changes only what it names and is recorded per row (``repairs.jsonl``) and per source
(``data_report.json``). What no switch can fix is rejected later by
:func:`llama3zh_dist.data.sources.validate_messages` with its reason.

Order (each step sees the result of the one before):

1. ``banner_system``: system turns containing a share-site banner phrase are dropped;
2. ``leading_assistant``: assistant turns before the first user turn (a continuation chunk) are dropped;
3. ``merge_consecutive``: consecutive turns of one role are joined (``"\\n\\n"``; empty parts skipped);
4. ``empty_pairs``: a user/assistant pair of which either side is empty is removed, as is an
   empty system turn;
5. ``trailing_user``: a final user turn without an answer is dropped.

Role aliases (``bing``/``chatgpt``/``bard``/``chatbot`` -> assistant, ``user`` -> user, ...) are resolved
during format conversion (:func:`resolve_role`) and recorded as ``role_aliases``.
"""

from __future__ import annotations

from collections import Counter
from typing import Iterable

REPAIRS = ("role_aliases", "banner_system", "leading_assistant", "merge_consecutive", "empty_pairs", "trailing_user")

# Share-site banners that dumps carry as their only system turn (case-insensitive substrings).
DEFAULT_BANNER_PHRASES = ["typingmind", "chathub", "sharegpt"]

# Roles whose meaning is clear but whose name is not the format's own (role_aliases switch).
ROLE_ALIASES = {
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "bing": "assistant",
    "chatgpt": "assistant",
    "bard": "assistant",
    "chatbot": "assistant",
    "claude": "assistant",
    "model": "assistant",
}

# Tool-call turns: training them as chat turns would teach the wrong thing; rejected unless the
# source maps them (``data.sources.<name>.roles: {observation: user}``).
TOOL_ROLES = ("function_call", "observation", "tool", "function", "tool_call", "tool_response", "ipython")

DEFAULTS = {
    "role_aliases": True,
    "banner_system": True,
    "leading_assistant": True,
    "merge_consecutive": True,
    "empty_pairs": True,
    "trailing_user": True,
    "banner_phrases": DEFAULT_BANNER_PHRASES,
}


class RoleError(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def resolve_role(name: str, own: dict, user_map: dict | None, settings: dict, counts: Counter) -> str:
    """Canonical role of a turn whose role field is ``name``.

    ``own``: the format's own role names; ``user_map``: the source's ``roles`` mapping (wins over
    everything). Aliases count as a ``role_aliases`` repair; tool-call roles and unknown names raise
    :class:`RoleError`."""
    key = name.strip().lower()
    if user_map:
        mapped = user_map.get(name, user_map.get(key))
        if mapped is not None:
            return mapped
    role = own.get(key)
    if role is not None:
        return role
    if settings.get("role_aliases", True) and key in ROLE_ALIASES:
        counts["role_aliases"] += 1
        return ROLE_ALIASES[key]
    if key in TOOL_ROLES:
        raise RoleError("tool_call_role", f"role {name!r} is a tool-call turn; map it with the source's roles setting to keep it")
    raise RoleError("unknown_role", f"role {name!r}")


def _empty(m: dict) -> bool:
    return not m["content"].strip()


def _drop_banners(msgs: list[dict], phrases: Iterable[str], counts: Counter) -> list[dict]:
    low = [p.lower() for p in phrases if p]
    out = []
    for m in msgs:
        if m["role"] == "system" and any(p in m["content"].lower() for p in low):
            counts["banner_system"] += 1
            continue
        out.append(m)
    return out


def _drop_leading_assistant(msgs: list[dict], counts: Counter) -> list[dict]:
    start = 1 if msgs and msgs[0]["role"] == "system" else 0
    i = start
    while i < len(msgs) and msgs[i]["role"] == "assistant":
        i += 1
    if i > start:
        counts["leading_assistant"] += i - start
        return msgs[:start] + msgs[i:]
    return msgs


def _merge_consecutive(msgs: list[dict], counts: Counter) -> list[dict]:
    out: list[dict] = []
    for m in msgs:
        if out and out[-1]["role"] == m["role"]:
            counts["merge_consecutive"] += 1
            prev = out[-1]
            if _empty(prev):
                prev["content"] = m["content"]
            elif not _empty(m):
                prev["content"] = prev["content"].rstrip() + "\n\n" + m["content"].lstrip()
            continue
        out.append(dict(m))
    return out


def _remove_empty_pairs(msgs: list[dict], counts: Counter) -> list[dict]:
    out: list[dict] = []
    i = 0
    while i < len(msgs):
        m = msgs[i]
        if m["role"] == "system" and _empty(m):
            counts["empty_pairs"] += 1
            i += 1
            continue
        nxt = msgs[i + 1] if i + 1 < len(msgs) else None
        if m["role"] == "user" and nxt is not None and nxt["role"] == "assistant" and (_empty(m) or _empty(nxt)):
            counts["empty_pairs"] += 1
            i += 2
            continue
        out.append(m)
        i += 1
    return out


def _drop_trailing_user(msgs: list[dict], counts: Counter) -> list[dict]:
    if len(msgs) >= 2 and msgs[-1]["role"] == "user" and any(m["role"] == "assistant" for m in msgs):
        counts["trailing_user"] += 1
        return msgs[:-1]
    return msgs


def repair_messages(msgs: list[dict], settings: dict, counts: Counter) -> list[dict]:
    """The conversation with every switched-on repair applied; ``counts`` gets one entry per fix made."""
    if settings.get("banner_system", True):
        msgs = _drop_banners(msgs, settings.get("banner_phrases") or (), counts)
    if settings.get("leading_assistant", True):
        msgs = _drop_leading_assistant(msgs, counts)
    if settings.get("merge_consecutive", True):
        msgs = _merge_consecutive(msgs, counts)
    if settings.get("empty_pairs", True):
        msgs = _remove_empty_pairs(msgs, counts)
    if settings.get("trailing_user", True):
        msgs = _drop_trailing_user(msgs, counts)
    return msgs
