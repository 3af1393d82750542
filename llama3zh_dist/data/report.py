"""What prep tells: per-row records (``rejects.jsonl``, ``repairs.jsonl``) and the console report."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa


def write_rejects(path: Path, rejects: list[dict], files_of: dict) -> None:
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


def repair_records(rows: pa.Table, kept_rows: np.ndarray) -> tuple[list[dict], dict[str, dict]]:
    """Per-row records of the repairs made, and per source: repair -> rows it changed (all rows
    read, whether kept or rejected later; each record says which)."""
    col = rows.column("repairs")
    idx = np.flatnonzero(col.is_valid().to_numpy(zero_copy_only=False))
    if len(idx) == 0:
        return [], {}
    kept = set(kept_rows.tolist())
    take = pa.array(idx, pa.int64())
    sub = rows.select(["source", "file", "line", "id", "status", "repairs"]).take(take).to_pylist()
    records, counts = [], defaultdict(Counter)
    for i, r in zip(idx.tolist(), sub):
        fixes = json.loads(r["repairs"])
        counts[r["source"]].update({k: 1 for k in fixes})
        records.append({"source": r["source"], "file": r["file"], "line": r["line"], "id": r["id"], "repairs": fixes,
                        "kept": i in kept})
    return records, {k: dict(sorted(v.items())) for k, v in counts.items()}


def write_repairs(path: Path, records: list[dict], files_of: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            files = files_of.get(r["source"], [])
            rec = dict(r, file=files[r["file"]] if r["file"] < len(files) else None)
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")


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
