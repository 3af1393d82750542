"""Aggregate scored items into accuracies, and write ``results.json`` / ``items.jsonl`` / the console table.

Accuracy per subject, per category (items of every subject in that category, as the harness's
``weight_by_size`` group mean) and overall (all items), for each benchmark.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..fileio import atomic_write_text
from .subjects import CATEGORIES, categories_of


def _acc(rows: list[dict]) -> dict:
    scored = [r for r in rows if r["answer"] is not None]
    n = len(scored)
    return {"accuracy": (sum(r["predicted"] == r["answer"] for r in scored) / n) if n else None, "n": n}


def summarize(items: list[dict]) -> dict:
    """{benchmark: {"accuracy", "n", "categories": {...}, "subjects": {...}}} from item records."""
    out: dict[str, dict] = {}
    for bench in dict.fromkeys(r["benchmark"] for r in items):
        rows = [r for r in items if r["benchmark"] == bench]
        subjects = list(dict.fromkeys(r["subject"] for r in rows))
        by_cat = {c: [r for r in rows if c in categories_of(bench, r["subject"])] for c in CATEGORIES}
        out[bench] = {
            **_acc(rows),
            "categories": {c: _acc(v) for c, v in by_cat.items() if v},
            "subjects": {s: _acc([r for r in rows if r["subject"] == s]) for s in subjects},
        }
    return out


def wandb_metrics(results: dict) -> dict[str, float]:
    """Flat scalars: ``eval/cmmlu``, ``eval/cmmlu/<category>``, ``eval/chat/<check>``."""
    flat: dict[str, float] = {}
    for bench, r in results.items():
        if bench == "chat":
            for k, v in r.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "n":
                    flat[f"eval/chat/{k}"] = float(v)
            continue
        if r.get("accuracy") is not None:
            flat[f"eval/{bench}"] = r["accuracy"]
        for cat, v in r.get("categories", {}).items():
            if v["accuracy"] is not None:
                flat[f"eval/{bench}/{cat}"] = v["accuracy"]
    return flat


def write_outputs(out_dir: Path, results: dict, items: list[dict], generations: list[dict] | None) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    if items:
        atomic_write_text(out_dir / "items.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in items))
    if generations is not None:
        atomic_write_text(out_dir / "generations.jsonl",
                      "".join(json.dumps(g, ensure_ascii=False) + "\n" for g in generations))
    atomic_write_text(out_dir / "results.json", json.dumps(results, ensure_ascii=False, indent=2) + "\n")
    from ..export.card import refresh_after_eval

    refresh_after_eval(out_dir)  # the run's export card shows the new scores (no-op without one)


def _pct(v) -> str:
    return "   -  " if v is None else f"{100 * v:5.1f}%"


def console_table(results: dict) -> str:
    lines = []
    for bench, r in results.items():
        if bench == "chat":
            lines.append(f"chat samples ({r['n']}): stopped at <|eot_id|> {_pct(r['stopped_at_eot'])}, "
                         f"Chinese share {_pct(r['chinese_share'])}, distinct-2 {r['distinct_2']:.3f}, "
                         f"identity name {_pct(r['identity_ok'])}")
            continue
        lines.append(f"{bench:<8} overall {_pct(r['accuracy'])}  (n={r['n']})")
        for cat, v in r["categories"].items():
            lines.append(f"  {cat:<16} {_pct(v['accuracy'])}  (n={v['n']})")
    return "\n".join(lines)
