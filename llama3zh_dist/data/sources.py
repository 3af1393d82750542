"""Sources: where rows come from (files, globs, Hub datasets) and how each format maps to the
canonical conversation ``{"id", "source", "messages": [{"role", "content"}, ...]}``.

Formats (``format:`` of a source in ``conf/data/*.yaml``):

- ``sharegpt``: ``conversations`` of ``{"from", "value"}`` (human/user, gpt/assistant, system), optional ``system``
- ``alpaca``: ``instruction``, optional ``input``, ``output``, optional ``system`` and ``history`` ([[q, a], ...])
- ``zhihu``: Zhihu-KOL ``INSTRUCTION`` / ``RESPONSE``
- ``firefly``: ``conversation`` of ``{"human", "assistant"}``, optional ``system`` (or Firefly-1.1M ``input``/``target``)
- ``messages``: OpenAI ``messages`` of ``{"role", "content"}``
- ``columns``: any column mapping: ``columns: {user: title, assistant: content, system: null, id: null}`` and an
  optional ``prompt_template`` (``str.format`` over the row's fields) that builds the user turn, e.g.
  ``"请以小红书的风格，为标题《{title}》写一篇笔记。"``

Conversion never raises: a row that cannot be converted gets a :class:`Reject` with a reason.
"""

from __future__ import annotations

import glob as _glob
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from ..errors import UserError

FORMATS = ("sharegpt", "alpaca", "zhihu", "firefly", "messages", "columns")
FILE_SUFFIXES = (".jsonl", ".json", ".parquet")

# Reject reasons. Validation reasons count towards data.max_reject_fraction; filter reasons
# (cleaning and mixture decisions) are recorded the same way but do not.
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
)
FILTER_REASONS = ("refusal", "duplicate", "near_duplicate", "downsampled")

_SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bard": "assistant",
    "bing": "assistant",
    "system": "system",
}
_MESSAGE_ROLES = {"system": "system", "user": "user", "assistant": "assistant"}


class Reject(Exception):
    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass
class SourceSpec:
    name: str
    format: str
    files: list[str]  # resolved local paths (empty for a Hub dataset)
    weight: float = 1.0
    hub: str | None = None
    hub_subset: str | None = None
    split: str = "train"
    revision: str | None = None
    columns: dict | None = None
    prompt_template: str | None = None
    system_prompt: str | None = None
    id_field: str | None = None

    def settings(self) -> dict:
        """What of this spec changes the output (for the fingerprint), minus file contents."""
        return {
            "name": self.name,
            "format": self.format,
            "files": [os.path.basename(f) for f in self.files],
            "weight": self.weight,
            "hub": self.hub,
            "hub_subset": self.hub_subset,
            "split": self.split,
            "revision": self.revision,
            "columns": self.columns,
            "prompt_template": self.prompt_template,
            "system_prompt": self.system_prompt,
            "id_field": self.id_field,
        }


# ---------------------------------------------------------------- config -> specs
def repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


def resolve_paths(patterns: list[str], setting: str) -> list[str]:
    """Expand paths/globs: relative ones against the current directory first, then the repo root."""
    out: list[str] = []
    for pat in patterns:
        pat = os.path.expanduser(str(pat))
        candidates = [pat] if os.path.isabs(pat) else [os.path.join(os.getcwd(), pat), str(repo_root() / pat)]
        found: list[str] = []
        for cand in candidates:
            if any(ch in cand for ch in "*?["):
                found = sorted(p for p in _glob.glob(cand, recursive=True) if os.path.isfile(p))
            elif os.path.isfile(cand):
                found = [cand]
            if found:
                break
        if not found:
            where = "" if os.path.isabs(pat) else f" (looked in {os.getcwd()} and {repo_root()})"
            raise UserError(f"{setting}: no file matches {pat!r}{where}. Fix the path or the glob.")
        for f in found:
            if not f.endswith(FILE_SUFFIXES):
                raise UserError(
                    f"{setting}: {f!r} is not a .jsonl, .json or .parquet file; convert it or list only those."
                )
            f = os.path.realpath(f)
            if f not in out:
                out.append(f)
    return out


def _as_list(x) -> list:
    if x is None:
        return []
    if isinstance(x, (str, os.PathLike)):
        return [str(x)]
    return [str(v) for v in x]


def source_specs(data_cfg) -> list[SourceSpec]:
    """The sources of ``cfg.data``: either ``data.sources`` (a mapping name -> source) or the one-off
    ``data.format`` + ``data.files`` (``data=files``)."""
    from omegaconf import OmegaConf

    def get(node, key, default=None):
        try:
            v = node.get(key, default)
        except Exception:
            return default
        return default if v is None else v

    sources = get(data_cfg, "sources", None)
    raw: list[tuple[str, Any, str]] = []
    if sources:
        for name, node in sources.items():
            if node is None:  # a source switched off with `data.sources.x=null`
                continue
            raw.append((str(name), node, f"data.sources.{name}"))
    else:
        if OmegaConf.is_missing(data_cfg, "format") or OmegaConf.is_missing(data_cfg, "files"):
            raise UserError(
                "data: no sources. Use a dataset config (data=sample) or give data.files=[...] and "
                "data.format=<" + "|".join(FORMATS) + ">."
            )
        raw.append((str(get(data_cfg, "name", "files")), data_cfg, "data"))
    specs = []
    for name, node, prefix in raw:
        fmt = get(node, "format", None)
        if fmt not in FORMATS:
            raise UserError(f"{prefix}.format={fmt!r} is not a known format; use one of: {', '.join(FORMATS)}")
        hub = get(node, "hub", None)
        files = _as_list(get(node, "files", None))
        if not hub and not files:
            raise UserError(f"{prefix}.files is empty; list .jsonl/.json/.parquet files or globs (or set {prefix}.hub)")
        columns = get(node, "columns", None)
        columns = OmegaConf.to_container(columns, resolve=True) if columns is not None and not isinstance(columns, dict) else columns
        if fmt == "columns":
            if not columns or not columns.get("assistant"):
                raise UserError(f"{prefix}.columns.assistant must name the response column for format=columns")
            if not columns.get("user") and not get(node, "prompt_template", None):
                raise UserError(f"{prefix}: format=columns needs columns.user or a prompt_template")
        weight = float(get(node, "weight", 1.0))
        if weight < 0:
            raise UserError(f"{prefix}.weight={weight} must be >= 0")
        specs.append(
            SourceSpec(
                name=name,
                format=fmt,
                files=[] if hub else resolve_paths(files, f"{prefix}.files"),
                weight=weight,
                hub=hub,
                hub_subset=get(node, "hub_subset", None),
                split=str(get(node, "split", "train")),
                revision=get(node, "revision", None),
                columns=columns,
                prompt_template=get(node, "prompt_template", None),
                system_prompt=get(node, "system_prompt", None),
                id_field=get(node, "id_field", None),
            )
        )
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise UserError(f"data.sources: duplicate source names {names}")
    return specs


# ---------------------------------------------------------------- reading raw rows
def iter_file_rows(path: str) -> Iterator[tuple[int, str]]:
    """(line, raw text) for every row of a file; line is 1-based (JSON arrays and Parquet: row index).

    JSONL rows are the lines as written (parsed later, so a bad line becomes a ``bad_json`` reject);
    blank lines are not rows. JSON and Parquet rows are re-serialised to JSON text.
    """
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
        line = 0
        for batch in pf.iter_batches(batch_size=4096):
            for row in batch.to_pylist():
                line += 1
                yield line, json.dumps(row, ensure_ascii=False, default=str)
        return
    if path.endswith(".json"):
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
        try:
            obj = json.loads(text)
        except json.JSONDecodeError:
            obj = None
        if obj is not None:
            if isinstance(obj, dict):
                lists = [v for v in obj.values() if isinstance(v, list)]
                obj = lists[0] if len(lists) == 1 and len(obj) <= 2 else [obj]
            if not isinstance(obj, list):
                obj = [obj]
            for i, row in enumerate(obj, 1):
                yield i, json.dumps(row, ensure_ascii=False)
            return
        # not one JSON document: read it as JSON lines
    with open(path, "rb") as f:
        for i, raw in enumerate(f, 1):
            s = raw.decode("utf-8", errors="replace").strip()
            if s:
                yield i, s


def load_hub_dataset(spec: SourceSpec):
    """The Hub dataset of a source (datasets caches it locally). Offline, unknown or gated: UserError in
    seconds (with HF_HUB_OFFLINE=1 a dataset already in the local cache still loads)."""
    try:
        import datasets
    except ImportError as e:  # pragma: no cover
        raise UserError(f"data.sources.{spec.name}.hub needs the datasets package ({e})") from None
    from ..tokenizer import hub_reachable

    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    if not offline and not hub_reachable():
        raise UserError(
            f"data.sources.{spec.name}.hub={spec.hub!r}: the Hugging Face Hub is unreachable from this machine. "
            "Download the dataset where the Hub is reachable and list its files under "
            f"data.sources.{spec.name}.files, or set HF_HUB_OFFLINE=1 if it is already in the local cache."
        )
    try:
        return datasets.load_dataset(spec.hub, spec.hub_subset, split=spec.split, revision=spec.revision)
    except Exception as e:  # offline, gated, unknown name
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise UserError(
            f"data.sources.{spec.name}.hub={spec.hub!r}: cannot load it from the Hugging Face Hub "
            f"({type(e).__name__}: {first}). Without Hub access, download the dataset elsewhere and list its "
            f"files under data.sources.{spec.name}.files instead."
        ) from None


def iter_hub_rows(spec: SourceSpec) -> Iterator[tuple[int, str]]:
    ds = load_hub_dataset(spec)
    for i, row in enumerate(ds, 1):
        yield i, json.dumps(row, ensure_ascii=False, default=str)


def hub_fingerprint(spec: SourceSpec) -> str:
    """Identity of a Hub dataset version (datasets' fingerprint of the loaded split)."""
    ds = load_hub_dataset(spec)
    return str(getattr(ds, "_fingerprint", "")) or f"{spec.hub}@{spec.revision}"


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


def _msg(role: str, content: Any, where: str) -> dict:
    if not isinstance(content, str):
        raise Reject("wrong_type", f"{where} content is {type(content).__name__ if content is not None else 'null'}")
    return {"role": role, "content": content}


def _conv_sharegpt(obj: dict, spec: SourceSpec) -> list[dict]:
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
        role = _SHAREGPT_ROLES.get(frm.strip().lower())
        if role is None:
            raise Reject("unknown_role", f"conversations[{i}].from={frm!r}")
        msgs.append(_msg(role, t.get("value", t.get("content")), f"conversations[{i}]"))
    return msgs


def _conv_alpaca(obj: dict, spec: SourceSpec) -> list[dict]:
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


def _conv_zhihu(obj: dict, spec: SourceSpec) -> list[dict]:
    return [
        {"role": "user", "content": _str_field(obj, "INSTRUCTION")},
        {"role": "assistant", "content": _str_field(obj, "RESPONSE")},
    ]


def _conv_firefly(obj: dict, spec: SourceSpec) -> list[dict]:
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


def _conv_messages(obj: dict, spec: SourceSpec) -> list[dict]:
    turns = _list_field(obj, "messages")
    msgs = []
    for i, t in enumerate(turns):
        if not isinstance(t, dict):
            raise Reject("wrong_type", f"messages[{i}] is {type(t).__name__}, not an object")
        role = t.get("role")
        if not isinstance(role, str):
            raise Reject("missing_field" if role is None else "wrong_type", f"messages[{i}] has no string 'role'")
        r = _MESSAGE_ROLES.get(role)
        if r is None:
            raise Reject("unknown_role", f"messages[{i}].role={role!r}")
        msgs.append(_msg(r, t.get("content"), f"messages[{i}]"))
    return msgs


class _Fields(dict):
    def __missing__(self, key):
        raise Reject("missing_field", f"prompt_template needs field {key!r}")


def _conv_columns(obj: dict, spec: SourceSpec) -> list[dict]:
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


_CONVERTERS = {
    "sharegpt": _conv_sharegpt,
    "alpaca": _conv_alpaca,
    "zhihu": _conv_zhihu,
    "firefly": _conv_firefly,
    "messages": _conv_messages,
    "columns": _conv_columns,
}

_DEFAULT_ID_FIELDS = ("id", "conversation_id", "ID", "uid")


def to_messages(obj: Any, spec: SourceSpec) -> tuple[list[dict], str | None]:
    """(messages, raw id) of one parsed row in the source's format; raises :class:`Reject`."""
    if not isinstance(obj, dict):
        raise Reject("not_an_object", f"row is a JSON {type(obj).__name__}, not an object")
    msgs = _CONVERTERS[spec.format](obj, spec)
    if spec.system_prompt and not (msgs and msgs[0]["role"] == "system"):
        msgs.insert(0, {"role": "system", "content": spec.system_prompt})
    raw_id = None
    for k in [spec.id_field] if spec.id_field else _DEFAULT_ID_FIELDS:
        v = obj.get(k) if k else None
        if isinstance(v, (str, int)) and not isinstance(v, bool) and str(v).strip():
            raw_id = str(v).strip()
            break
    return msgs, raw_id


def validate_messages(msgs: list[dict]) -> None:
    """SPEC structure: optional system first, then user/assistant alternating from user, ending with
    assistant, every content non-empty. Raises :class:`Reject` with the reason."""
    if not msgs:
        raise Reject("no_assistant_turn", "no messages")
    for i, m in enumerate(msgs):
        if not m["content"].strip():
            raise Reject("empty_turn", f"message {i} ({m['role']}) is empty")
    if not any(m["role"] == "assistant" for m in msgs):
        raise Reject("no_assistant_turn", "no assistant message")
    start = 1 if msgs[0]["role"] == "system" else 0
    for i in range(start, len(msgs)):
        want = "user" if (i - start) % 2 == 0 else "assistant"
        if msgs[i]["role"] != want:
            raise Reject("wrong_role_order", f"message {i} is {msgs[i]['role']!r}, expected {want!r}")
    if msgs[-1]["role"] != "assistant":
        raise Reject("wrong_role_order", "ends with a user turn, not an assistant turn")
