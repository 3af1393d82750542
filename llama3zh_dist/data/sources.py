"""Sources: where rows come from (files, globs, Hub datasets) and how each format maps to the
canonical conversation ``{"id", "source", "messages": [{"role", "content"}, ...]}``.

Formats (``format:`` of a source in ``conf/data/*.yaml``): the converters registered in
:mod:`llama3zh_dist.data.formats` (``_CONVERTERS``), each documented by its docstring.

Conversion never raises: a row that cannot be converted gets a :class:`Reject` with a reason.
"""

from __future__ import annotations

import glob as _glob
import json
import os
from pathlib import Path
from typing import Any, Iterator

from ..errors import UserError
from ..schema.data import FORMATS  # the one list: the schema checks data.format against it
from .readers import iter_records
from .formats import (  # noqa: F401  (the conversion API and the reject vocabulary, re-exported)
    FILTER_REASONS, VALIDATION_REASONS, Reject, to_messages, validate_messages,
)
from .source_spec import SourceSpec

FILE_SUFFIXES = (".jsonl", ".json", ".parquet")


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
        roles = get(node, "roles", None)
        roles = OmegaConf.to_container(roles, resolve=True) if roles is not None and not isinstance(roles, dict) else roles
        bad = {k: v for k, v in (roles or {}).items() if v not in ("system", "user", "assistant")}
        if bad:
            raise UserError(f"{prefix}.roles maps {bad}; map each role name to system, user or assistant")
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
                roles=roles,
            )
        )
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise UserError(f"data.sources: duplicate source names {names}")
    return specs


# ---------------------------------------------------------------- reading raw rows
def iter_file_rows(path: str) -> Iterator[tuple[int, str]]:
    """(line, raw text) of every row of a file (see :func:`readers.iter_records`, which also reports an
    unreadable rest of a file as a record; here that is a UserError)."""
    for line, raw, error in iter_records(path):
        if error is not None:
            raise UserError(f"{path}: {error}")
        yield line, raw


def load_hub_dataset(spec: SourceSpec):
    """The Hub dataset of a source (datasets caches it locally). Offline, unknown or gated: UserError in
    seconds (with HF_HUB_OFFLINE=1 a dataset already in the local cache still loads)."""
    try:
        import datasets
    except ImportError as e:  # pragma: no cover
        raise UserError(f"data.sources.{spec.name}.hub needs the datasets package ({e})") from None
    from ..hub import hub_reachable, offline_requested

    if not offline_requested() and not hub_reachable():
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


