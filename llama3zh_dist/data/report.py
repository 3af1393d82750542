"""What prep tells: per-row records (``rejects.jsonl``, ``repairs.jsonl``) and the console report."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from .sources import FILTER_REASONS, VALIDATION_REASONS
from .spill import Rows


def write_rejects(path: Path, rejects: Iterable[dict], files_of: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for r in rejects:
            files = files_of.get(r["source"], [])
            rec = {
                "source": r["source"],
                "line": r["line"],
                "id": r["id"],
                "reason": r["reason"],
                "raw": r["raw"],
                "file": files[r["file"]] if r["file"] < len(files) else None,
                "detail": r["detail"],
            }
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")


def write_repairs(path: Path, rows: Rows, kept_rows: np.ndarray, files_of: dict) -> dict[str, dict]:
    """``repairs.jsonl``: one record per row a repair changed (whether kept or rejected later; each
    record says which), in processing order, a window of rows at a time. Returns per source:
    repair -> rows it changed."""
    idx = np.flatnonzero(rows.column("repairs").is_valid().to_numpy(zero_copy_only=False))
    counts: dict[str, Counter] = defaultdict(Counter)
    kept = np.isin(idx, kept_rows)
    with open(path, "w", encoding="utf-8") as f:
        k = 0
        for part in rows.gather(["source", "file", "line", "id", "repairs"], idx):
            for r in part.to_pylist():
                fixes = json.loads(r["repairs"])
                counts[r["source"]].update({name: 1 for name in fixes})
                files = files_of.get(r["source"], [])
                rec = {"source": r["source"], "file": files[r["file"]] if r["file"] < len(files) else None,
                       "line": r["line"], "id": r["id"], "repairs": fixes, "kept": bool(kept[k])}
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
                k += 1
    return {k: dict(sorted(v.items())) for k, v in counts.items()}


# ---------------------------------------------------------------- data_report.json
HIST_EDGES = [0, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768]


def _source_reports(rows, v, split, specs, meta: dict) -> dict:
    """Per source: read / kept / rejected by reason, the mixture and the tokens it contributes."""
    n_tok, n_sup, trunc = rows.numpy("n_tokens"), rows.numpy("n_sup"), rows.numpy("truncated")
    counts = v.counts()  # [source, reason]
    kept_src, train_src = v.source[split.kept_rows], v.source[split.train_idx]
    out = {}
    for code, spec in enumerate(specs):
        name = spec.name
        k_idx = split.kept_rows[kept_src == code]
        t_idx = split.train_idx[train_src == code]
        rej = {v.reasons[r]: int(c) for r, c in enumerate(counts[code]) if r and c}
        out[name] = {
            "format": spec.format,
            "files": meta["files"].get(name, []),
            "read": meta["read"].get(name, 0),
            "kept": int(len(k_idx)),
            "rejected": int(sum(rej.values())),
            "by_reason": dict(sorted(rej.items())),
            "weight": spec.weight,
            "train_samples": int(len(t_idx)),
            "val_samples": split.mixture[name]["val"],
            "tokens": int(n_tok[t_idx].sum()) if len(t_idx) else 0,
            "supervised_tokens": int(n_sup[t_idx].sum()) if len(t_idx) else 0,
            "truncated": int(trunc[k_idx].sum()) if len(k_idx) else 0,
        }
    for name, s in out.items():
        assert s["kept"] + s["rejected"] == s["read"], f"row accounting broken for source {name}: {s}"
    return out


def _length_stats(lengths: np.ndarray) -> dict:
    if not len(lengths):
        return {"min": 0, "mean": 0.0, "p50": 0.0, "p95": 0.0, "max": 0}
    return {"min": int(lengths.min()), "mean": float(lengths.mean()), "p50": float(np.percentile(lengths, 50)),
            "p95": float(np.percentile(lengths, 95)), "max": int(lengths.max())}


def _cleaning(rows, kept: np.ndarray, clean, removed: dict, all_reasons: Counter) -> dict:
    def kept_sum(col: str) -> int:
        return int(rows.numpy(col)[kept].sum()) if len(kept) else 0

    return {
        "whitespace_changed": kept_sum("ws_changed"),
        "traditional_to_simplified_changed": kept_sum("t2s_changed"),
        "identity_rewritten": kept_sum("identity_changed"),
        "exact_duplicates_removed": removed["exact"],
        "near_duplicates_removed": removed["near"],
        "refusals_removed": int(all_reasons.get("refusal", 0)),
        "truncated_at_turn_boundary": kept_sum("truncated"),
        "enabled": {
            "whitespace": bool(clean.whitespace),
            "traditional_to_simplified": bool(clean.traditional_to_simplified),
            "exact_dedup": bool(clean.exact_dedup),
            "near_dedup": bool(clean.near_dedup.enabled),
            "identity": bool(clean.identity.enabled),
            "refusal": bool(clean.refusal.enabled),
        },
    }


def build_report(rows: Rows, v, split, packed, removed: dict, specs, meta: dict, dc) -> dict:
    """``data_report.json`` (less what the write step adds): counts per source and per reason,
    cleaning, mixture, lengths and packing. ``split.kept_rows``: every kept row (train or val)."""
    sources = _source_reports(rows, v, split, specs, meta)
    all_reasons: Counter = Counter()
    for s in sources.values():
        all_reasons.update(s["by_reason"])
    val_reasons = {r: c for r, c in all_reasons.items() if r in VALIDATION_REASONS}
    kept = split.kept_rows
    lengths = packed.lengths
    tokens, sup = int(lengths.sum()), int(packed.supervised.sum())
    zh, chars = rows.numpy("zh_chars"), rows.numpy("chars")
    hist = np.histogram(np.clip(lengths, 0, HIST_EDGES[-1] - 1), bins=HIST_EDGES)[0] if len(lengths) else np.zeros(len(HIST_EDGES) - 1)
    return {
        "read": int(sum(meta["read"].values())),
        "kept": int(len(kept)),
        "rejected": int(sum(all_reasons.values())),
        "rejected_validation": int(sum(val_reasons.values())),
        "by_reason": dict(sorted(all_reasons.items())),
        "validation_by_reason": dict(sorted(val_reasons.items())),
        "filter_reasons": list(FILTER_REASONS),
        "train_samples": int(len(split.train_idx)),
        "val_samples": int(len(split.val_idx)),
        "tokens": tokens,
        "supervised_tokens": sup,
        "supervised_share": sup / tokens if tokens else 0.0,
        "chinese_char_share": float(zh[kept].sum() / max(chars[kept].sum(), 1)) if len(kept) else 0.0,
        "length_histogram": {"edges": HIST_EDGES, "counts": [int(x) for x in hist]},
        "length_stats": _length_stats(lengths),
        "cleaning": _cleaning(rows, kept, dc.clean, removed, all_reasons),
        "mixture": split.mixture,
        "packing": {
            "enabled": bool(dc.packing),
            "max_seq_len": int(dc.max_seq_len),
            "rows": packed.rows,
            "efficiency": packed.efficiency,
            "samples_per_row": (len(lengths) / packed.rows) if packed.rows else 0.0,
        },
        "sources": sources,
    }


def add_repairs(report: dict, repair_counts: dict, read_errors: dict, repair_cfg, switches, out_dir: Path) -> None:
    """Per source: the repairs made and the read errors (truncated files); totals and switches."""
    for name, src in report["sources"].items():
        src["repairs"] = repair_counts.get(name, {})
        src["read_errors"] = read_errors.get(name, [])
    total: Counter = Counter()
    for c in repair_counts.values():
        total.update(c)
    report["repairs"] = {
        "rows": dict(sorted(total.items())),
        "enabled": {k: bool(getattr(repair_cfg, k)) for k in switches},
        "file": str(out_dir / "repairs.jsonl"),
    }


def reject_records(rows: Rows, v) -> Iterator[dict]:
    """One record per rejected row, in input order, for ``rejects.jsonl``, read back from the spill a
    window of rows at a time."""
    idx = v.rejected()
    texts = rows.gather(["raw"], idx)
    start = 0
    for where in rows.gather(["file", "line", "id", "detail"], idx):
        part = idx[start:start + where.num_rows]
        start += where.num_rows
        raw = next(texts).column(0).to_pylist()
        cols = where.to_pydict()
        details = v.details(part, cols["detail"])
        for k, i in enumerate(part.tolist()):
            yield {"source": v.names[v.source[i]], "file": int(cols["file"][k]), "line": int(cols["line"][k]),
                   "id": cols["id"][k], "reason": v.reasons[v.reason[i]], "detail": details[k], "raw": raw[k]}


# ---------------------------------------------------------------- console report
def format_report(report: dict) -> str:
    lines = []
    p = report["packing"]
    lines.append(f"data report: {report.get('name', '')}  ({report.get('out_dir', '')})")
    lines.append(
        f"  rows read {report['read']:,}  kept {report['kept']:,}  rejected {report['rejected']:,}"
        f" (validation {report['rejected_validation']:,})"
    )
    lines.append(f"  {'source':<16}{'read':>9}{'kept':>9}{'rejected':>10}{'weight':>8}{'samples':>9}{'sup.tokens':>12}")
    for name, s in report["sources"].items():
        lines.append(
            f"  {name:<16}{s['read']:>9,}{s['kept']:>9,}{s['rejected']:>10,}{s['weight']:>8.2f}"
            f"{s['train_samples']:>9,}{s['supervised_tokens']:>12,}"
        )
        for r, c in s["by_reason"].items():
            lines.append(f"      - {r}: {c:,}")
    rep = report.get("repairs", {}).get("rows", {})
    if rep:
        lines.append("  repaired rows: " + ", ".join(f"{k} {v:,}" for k, v in rep.items()))
    for name, s in report["sources"].items():
        for err in s.get("read_errors", []):
            lines.append(f"  {name}: {err}")
    c = report["cleaning"]
    lines.append(
        "  cleaning: whitespace {whitespace_changed}, t2s {traditional_to_simplified_changed}, identity "
        "{identity_rewritten}, duplicates {exact_duplicates_removed}, near-duplicates {near_duplicates_removed}, "
        "refusals {refusals_removed}, truncated {truncated_at_turn_boundary}".format(**c)
    )
    lines.append(
        f"  train samples {report['train_samples']:,}  val samples {report['val_samples']:,}  tokens {report['tokens']:,}"
        f"  supervised {report['supervised_share']:.1%}  Chinese chars {report['chinese_char_share']:.1%}"
    )
    lines.append(
        f"  packing {'on' if p['enabled'] else 'off'}: {p['rows']:,} rows of {p['max_seq_len']}"
        f"  efficiency {p['efficiency']:.2%}  ({p['samples_per_row']:.2f} samples/row)"
    )
    h = report["length_histogram"]
    total = max(sum(h["counts"]), 1)
    lines.append("  sample length (tokens):")
    for lo, hi, n in zip(h["edges"][:-1], h["edges"][1:], h["counts"]):
        if n:
            bar = "#" * max(1, int(40 * n / total))
            lines.append(f"    {lo:>6}-{hi - 1:<6} {n:>8,} {bar}")
    lines.append(f"  rejects: {report.get('rejects_file', '')}")
    return "\n".join(lines)
