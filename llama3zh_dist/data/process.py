"""Per-row work of data prep, run in parallel by Ray Data (or in-process for small inputs).

``process_batch`` takes raw rows (``source``, ``file``, ``line``, ``raw`` JSON text, ``error``: why a
reader could not read it, or null) and returns one
output row per input row: either ``status == ""`` with the tokenised sample (``input_ids``,
``labels``) and its statistics/dedup keys, or ``status == <reject reason>`` with the raw text.
It never drops a row, so kept + rejected = read holds by construction.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import numpy as np
import pyarrow as pa

from ..llama3.tokens import BOS_ID, IGNORE_INDEX
from .clean import (
    IdentityRewriter,
    RefusalFilter,
    band_hashes,
    char_stats,
    dedup_text,
    exact_key,
    minhash_signature,
    normalize_whitespace,
    to_simplified,
)
from .repair import repair_messages
from .formats import row_id
from .sources import Reject, SourceSpec, to_messages, validate_messages

OUTPUT_SCHEMA = pa.schema(
    [
        ("source", pa.string()),
        ("file", pa.int32()),
        ("line", pa.int64()),
        ("id", pa.string()),
        ("status", pa.string()),
        ("detail", pa.string()),
        ("raw", pa.string()),
        ("input_ids", pa.list_(pa.int32())),
        ("labels", pa.list_(pa.int32())),
        ("n_tokens", pa.int32()),
        ("n_sup", pa.int32()),
        ("n_turns", pa.int16()),
        ("truncated", pa.bool_()),
        ("zh_chars", pa.int64()),
        ("chars", pa.int64()),
        ("key", pa.binary(16)),
        ("sig", pa.list_(pa.uint32())),
        ("bands", pa.list_(pa.uint64())),  # LSH band hashes of sig (clean.band_hashes)
        ("ws_changed", pa.bool_()),
        ("t2s_changed", pa.bool_()),
        ("identity_changed", pa.bool_()),
        ("repairs", pa.string()),  # JSON {repair: times} of the repairs made to this row, null if none
    ]
)

_CACHE: dict[str, Any] = {}
_IGNORE_RUN = [IGNORE_INDEX] * 16


def _tools(settings: dict):
    key = settings["key"]
    t = _CACHE.get(key)
    if t is None:
        c = settings["clean"]
        ident = c["identity"]
        t = {
            "specs": {name: SourceSpec(**s) for name, s in settings["specs"].items()},
            "identity": IdentityRewriter(ident["name"], ident["owner"], ident.get("rules")) if ident["enabled"] else None,
            "refusal": RefusalFilter(c["refusal"]["phrases"]) if c["refusal"]["enabled"] else None,
        }
        _CACHE.clear()
        _CACHE[key] = t
    return t


def _row_id(spec_name: str, raw_id: str | None, file_idx: int, line: int, multi_file: bool) -> str:
    if raw_id is not None:
        return f"{spec_name}:{raw_id}"
    return f"{spec_name}:{file_idx}:{line}" if multi_file else f"{spec_name}:{line}"


def _clean(msgs: list[dict], clean: dict, identity) -> tuple[bool, bool, bool]:
    """Clean every turn in place; (whitespace, t2s, identity) changed anything. Every turn is
    stripped regardless (the canonical form, see llama3/chat_format.py)."""
    ws = t2s = ident = False
    for m in msgs:
        c = m["content"]
        if clean["whitespace"]:
            c2 = normalize_whitespace(c)
            ws |= c2 != c.strip()
        else:
            c2 = c.strip()
        if clean["traditional_to_simplified"]:
            c3 = to_simplified(c2)
            t2s |= c3 != c2
            c2 = c3
        if identity is not None and m["role"] == "assistant":
            c3 = identity(c2)
            ident |= c3 != c2
            c2 = c3
        m["content"] = c2
    return ws, t2s, ident


def _check_refusal(msgs: list[dict], refusal) -> None:
    if refusal is None:
        return
    for m in msgs:
        if m["role"] == "assistant":
            hit = refusal.match(m["content"])
            if hit:
                raise Reject("refusal", f"assistant text contains {hit!r}")


def _fit(msgs: list[dict], per_msg: list[list[int]], max_len: int, overlong: str):
    """(msgs, per_msg, truncated) within ``max_len`` tokens: cut after the last assistant turn that
    fits (``overlong=truncate``), or reject as ``too_long``."""
    total = 1 + sum(len(t) for t in per_msg)
    if total <= max_len:
        return msgs, per_msg, False
    if overlong != "truncate":
        raise Reject("too_long", f"{total} tokens > data.max_seq_len={max_len}")
    start = 1 if msgs[0]["role"] == "system" else 0
    keep, run = 0, 1
    for i, t in enumerate(per_msg):
        run += len(t)
        if run > max_len:
            break
        if msgs[i]["role"] == "assistant" and i > start:
            keep = i + 1
    if keep == 0:
        raise Reject("too_long", f"{total} tokens; even the first exchange exceeds data.max_seq_len={max_len}")
    return msgs[:keep], per_msg[:keep], True


def _ids_and_labels(msgs: list[dict], per_msg: list[list[int]], all_turns: bool, h: int):
    """(ids, labels, supervised tokens): loss on assistant content + <|eot_id|> (``h``: header length)."""
    last_asst = len(msgs) - 1
    ids = [BOS_ID]
    labels = [IGNORE_INDEX]
    n_sup = 0
    for i, (m, t) in enumerate(zip(msgs, per_msg)):
        ids += t
        if m["role"] == "assistant" and (all_turns or i == last_asst):
            labels += _IGNORE_RUN[:h] if h <= len(_IGNORE_RUN) else [IGNORE_INDEX] * h
            labels += t[h:]
            n_sup += len(t) - h
        else:
            labels += [IGNORE_INDEX] * len(t)
    if n_sup == 0:
        raise Reject("no_supervised_tokens", "no assistant token to learn from")
    return ids, labels, n_sup


def _dedup_fields(msgs: list[dict], clean: dict) -> dict:
    nd = clean["near_dedup"]
    norm = dedup_text(msgs) if (clean["exact_dedup"] or nd["enabled"]) else ""
    return {
        "key": exact_key(norm) if clean["exact_dedup"] else None,
        "sig": minhash_signature(norm, nd["num_perm"], nd["ngram"]).astype(np.uint32) if nd["enabled"] else None,
    }


def _messages(raw: str, error: str | None, spec: SourceSpec, settings: dict, repairs: Counter, out: dict) -> list[dict]:
    """Parse and convert one raw row (its own id into ``out``); Reject if unreadable."""
    if error is not None:  # the unreadable rest of a file (readers.iter_records)
        raise Reject("bad_json", error)
    try:
        obj = json.loads(raw)
    except (json.JSONDecodeError, ValueError) as e:
        raise Reject("bad_json", str(e)[:200]) from None
    # rejects carry the row's own id too
    out["id"] = _row_id(spec.name, row_id(obj, spec), out["file"], out["line"], settings["multi_file"][spec.name])
    msgs, _ = to_messages(obj, spec, settings["repair"], repairs)
    return msgs


def process_row(source: str, file_idx: int, line: int, raw: str, settings: dict, error: str | None = None) -> dict:
    """One raw row -> its output record (OUTPUT_SCHEMA): tokens and stats if kept, else the reject
    reason and detail. Parse, convert, clean, repair, validate, refusal filter, tokenise, fit."""
    tools = _tools(settings)
    clean = settings["clean"]
    limit = settings["raw_max_chars"]
    # raw is kept for every row: filters decided later in the driver (duplicates, down-sampling)
    # write it to rejects.jsonl too
    out: dict[str, Any] = {
        "source": source, "file": file_idx, "line": line, "status": "", "detail": "",
        "raw": raw if len(raw) <= limit else raw[:limit] + "…[truncated]",
        "id": _row_id(source, None, file_idx, line, settings["multi_file"][source]),
    }
    repairs: Counter = Counter()
    try:
        msgs = _messages(raw, error, tools["specs"][source], settings, repairs, out)
        ws, t2s, ident = _clean(msgs, clean, tools["identity"])
        msgs = repair_messages(msgs, settings["repair"], repairs)
        try:
            validate_messages(msgs)
        except Reject as r:  # say what the repairs left, so "no messages" is not a mystery
            raise Reject(r.reason, f"{r.detail} (after repairs {dict(repairs)})" if repairs else r.detail) from None
        _check_refusal(msgs, tools["refusal"])
        # tokenise: per message header + content + eot, as Meta's reference
        per_msg = settings["encoder"].encode_messages(msgs)
        msgs, per_msg, truncated = _fit(msgs, per_msg, settings["max_seq_len"], settings["overlong"])
        ids, labels, n_sup = _ids_and_labels(msgs, per_msg, settings["train_on"] == "all_assistant",
                                             settings["assistant_header_len"])
        zh, nonspace = char_stats("".join(m["content"] for m in msgs))
        out.update(input_ids=ids, labels=labels, n_tokens=len(ids), n_sup=n_sup, n_turns=len(msgs),
                   truncated=truncated, zh_chars=zh, chars=nonspace, ws_changed=ws, t2s_changed=t2s,
                   identity_changed=ident, **_dedup_fields(msgs, clean))
    except Reject as r:
        out.update(status=r.reason, detail=r.detail)
    if repairs:
        out["repairs"] = json.dumps(dict(sorted(repairs.items())))
    return out


def _list_array(lists: list, value_type) -> pa.Array:
    """list<value_type> from Python lists (None = null) via one flat numpy buffer (fast)."""
    from itertools import chain

    lens = np.fromiter((len(x) if x is not None else 0 for x in lists), dtype=np.int64, count=len(lists))
    offsets = np.zeros(len(lists) + 1, dtype=np.int32)
    np.cumsum(lens, out=offsets[1:])
    values = np.fromiter(chain.from_iterable(x for x in lists if x is not None), dtype=value_type.to_pandas_dtype(),
                         count=int(offsets[-1]))
    mask = pa.array([x is None for x in lists], pa.bool_())
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(values, value_type), mask=mask)


def _band_column(sigs: list, nd: dict) -> pa.Array:
    """The LSH band hashes of a batch's signatures, computed for the batch at once (vectorised)."""
    have = [k for k, s in enumerate(sigs) if s is not None]
    out: list = [None] * len(sigs)
    if have:
        bands = band_hashes(np.stack([sigs[k] for k in have]), nd["threshold"], nd["num_perm"])
        for k, row in zip(have, bands):
            out[k] = row
    return _list_array(out, pa.uint64())


def process_batch(batch: pa.Table, settings: dict) -> pa.Table:
    src = batch.column("source").to_pylist()
    fil = batch.column("file").to_pylist()
    lin = batch.column("line").to_pylist()
    raw = batch.column("raw").to_pylist()
    err = batch.column("error").to_pylist() if "error" in batch.column_names else [None] * len(raw)
    rows = [process_row(s, f, l, r, settings, e) for s, f, l, r, e in zip(src, fil, lin, raw, err)]
    cols = {}
    for field in OUTPUT_SCHEMA:
        vals = [r.get(field.name) for r in rows]
        if field.name in ("input_ids", "labels"):
            cols[field.name] = _list_array(vals, pa.int32())
        elif field.name == "sig":
            cols[field.name] = _list_array(vals, pa.uint32())
        elif field.name == "bands":
            cols[field.name] = _band_column([r.get("sig") for r in rows], settings["clean"]["near_dedup"])
        else:
            cols[field.name] = pa.array(vals, field.type)
    return pa.table(cols, schema=OUTPUT_SCHEMA)
