"""The export's ``README.md``: a Hugging Face model card written from the run's own files.

Sources (all in ``run.dir``): ``config.yaml`` (model, data mixture, trainer, cluster), ``data_report.json``
(read / kept / repaired / rejected per source), ``metrics.jsonl`` (steps, tokens, wall time, validation
loss), ``eval/*/results.json`` and ``generations.jsonl`` (scores, chat samples), and the export folder
itself (dtype, GGUF files). Nothing is typed in by hand, so the card is rewritten whenever those files
change: at export, and after a later evaluation of the run (:func:`refresh_after_eval`).

The YAML header follows the Hub's model card metadata (``base_model``, ``language``, ``license``,
``library_name``, ``tags``, ``datasets``, ``model-index``), which ``huggingface_hub.ModelCard`` parses.
"""

from __future__ import annotations

import json
import pathlib

CARD = "README.md"


def _read_json(p: pathlib.Path):
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None


def _run_config(run_dir: pathlib.Path) -> dict:
    p = run_dir / "config.yaml"
    if not p.is_file():
        return {}
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(p), resolve=False)


def training_summary(run_dir: pathlib.Path) -> dict:
    """Steps, tokens, wall time and validation losses from ``metrics.jsonl`` (the last record of a step
    wins, so a resumed run counts each step once)."""
    steps: dict[int, dict] = {}
    vals: dict[int, float] = {}
    p = run_dir / "metrics.jsonl"
    for line in (p.read_text().splitlines() if p.is_file() else []):
        try:
            r = json.loads(line)
        except ValueError:
            continue
        if "loss" in r and "step" in r:
            steps[int(r["step"])] = r
        if r.get("val_loss") is not None and "step" in r:
            vals[int(r["step"])] = float(r["val_loss"])
    out: dict = {"steps": max(steps) if steps else 0,
                 "tokens": sum(int(r.get("tokens") or 0) for r in steps.values()),
                 "supervised_tokens": sum(int(r.get("supervised_tokens") or 0) for r in steps.values())}
    if steps:
        first = steps[min(steps)]
        step_s = (first.get("tokens") or 0) / first["tokens_per_s"] if first.get("tokens_per_s") else 0.0
        out["wall_seconds"] = float(steps[max(steps)]["time"]) - float(first["time"]) + step_s
        out["world_size"] = int(steps[max(steps)].get("world_size") or 0)
    if vals:
        out["final_val_loss"] = vals[max(vals)]
        best = min(vals, key=lambda s: (vals[s], s))
        out["best_val_loss"], out["best_val_step"] = vals[best], best
    return out


def _evaluations(run_dir: pathlib.Path) -> dict[str, dict]:
    """eval folder name -> {"results", "generations"}; the export's own evaluation first."""
    found = {}
    for rj in sorted((run_dir / "eval").glob("*/results.json")):
        res = _read_json(rj)
        if not isinstance(res, dict):
            continue
        gens = []
        g = rj.parent / "generations.jsonl"
        if g.is_file():
            for line in g.read_text().splitlines():
                try:
                    gens.append(json.loads(line))
                except ValueError:
                    pass
        found[rj.parent.name] = {"results": res, "generations": gens}
    return dict(sorted(found.items(), key=lambda kv: kv[0] != "export"))


BENCH_DATASETS = {"cmmlu": ("CMMLU", "haonan-li/cmmlu"), "ceval": ("C-Eval", "ceval/ceval-exam")}


def _model_index(name: str, evals: dict) -> list[dict]:
    if not evals:
        return []
    results = next(iter(evals.values()))["results"]
    rows = []
    for bench, r in results.items():
        if bench not in BENCH_DATASETS or r.get("accuracy") is None:
            continue
        pretty, hub_id = BENCH_DATASETS[bench]
        rows.append({"task": {"type": "multiple-choice", "name": "Multiple choice"},
                     "dataset": {"name": pretty, "type": hub_id},
                     "metrics": [{"type": "accuracy", "value": r["accuracy"], "name": f"{pretty} accuracy"}]})
    return [{"name": name, "results": rows}] if rows else []


def _header(cfg: dict, report: dict | None, evals: dict, name: str, gguf_files: list[str]) -> dict:
    model = cfg.get("model") or {}
    meta: dict = {}
    if model.get("path"):
        meta["base_model"] = str(model["path"])
    meta.update({"language": ["zh", "en"], "license": "llama3", "library_name": "transformers",
                 "pipeline_tag": "text-generation",
                 "tags": ["llama", "llama-3", "chinese", "sft", "llama3zh_dist"] + (["gguf"] if gguf_files else [])})
    sources = list((report or {}).get("sources") or {})
    if sources:
        meta["datasets"] = sources
    mi = _model_index(name, evals)
    if mi:
        meta["model-index"] = mi
    return meta


def _fmt_int(n) -> str:
    return f"{int(n):,}"


def _data_section(report: dict | None) -> list[str]:
    if not report:
        return ["No `data_report.json` in the run folder."]
    lines = ["| source | weight | read | kept | repaired | rejected | train samples | train tokens |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, s in report.get("sources", {}).items():
        repaired = sum((s.get("repairs") or {}).values())
        lines.append(f"| {name} | {s.get('weight', '')} | {_fmt_int(s['read'])} | {_fmt_int(s['kept'])} | "
                     f"{_fmt_int(repaired)} | {_fmt_int(s['rejected'])} | {_fmt_int(s.get('train_samples', 0))} | "
                     f"{_fmt_int(s.get('tokens', 0))} |")
    lines.append(f"| **total** | | {_fmt_int(report['read'])} | {_fmt_int(report['kept'])} | "
                 f"{_fmt_int(sum((report.get('repairs') or {}).get('rows', {}).values()))} | "
                 f"{_fmt_int(report['rejected'])} | {_fmt_int(report.get('train_samples', 0))} | "
                 f"{_fmt_int(report.get('tokens', 0))} |")
    reasons = report.get("by_reason") or {}
    if reasons:
        lines += ["", "Rejected rows by reason: " + ", ".join(f"{k} {v}" for k, v in reasons.items()) + "."]
    return lines


def _training_section(cfg: dict, t: dict) -> list[str]:
    tr, cl, data = cfg.get("trainer") or {}, cfg.get("cluster") or {}, cfg.get("data") or {}
    nodes = cl.get("nodes", 1)
    per_node = cl.get("nproc_per_node", "?")
    device = "GPUs" if str(cl.get("device", "cuda")) != "cpu" else "CPU ranks"
    rows = [("optimizer steps", _fmt_int(t["steps"])), ("tokens trained", _fmt_int(t["tokens"])),
            ("supervised tokens", _fmt_int(t["supervised_tokens"])),
            ("global batch", f"{tr.get('global_batch_size')} rows x {data.get('max_seq_len')} tokens "
                             f"(micro-batch {tr.get('micro_batch_size')})"),
            ("learning rate", f"{tr.get('lr')} peak, {tr.get('warmup_ratio')} warm-up, "
                              "cosine decay to "
                              f"{tr.get('min_lr_ratio')} x peak"),
            ("nodes x GPUs", f"{nodes} x {per_node} {device} ({t.get('world_size', '?')} ranks, ZeRO-3)"),
            ("wall time", f"{t['wall_seconds'] / 3600:.2f} h ({t['wall_seconds']:.0f} s)" if "wall_seconds" in t else "-")]
    if "final_val_loss" in t:
        rows += [("final validation loss", f"{t['final_val_loss']:.4f}"),
                 ("best validation loss", f"{t['best_val_loss']:.4f} (step {t['best_val_step']})")]
    return ["| setting | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.2f}"


def _eval_section(evals: dict) -> list[str]:
    if not evals:
        return ["Not evaluated yet: `python -m llama3zh_dist.eval run.dir=<run>` adds the scores here.", ""]
    lines = []
    for where, e in evals.items():
        lines += [f"`eval/{where}/results.json`:", "", "| benchmark | category | accuracy (%) | n |", "|---|---|---:|---:|"]
        for bench, r in e["results"].items():
            if bench == "chat":
                continue
            lines.append(f"| {bench} | overall | {_pct(r.get('accuracy'))} | {r.get('n')} |")
            for cat, v in (r.get("categories") or {}).items():
                lines.append(f"| {bench} | {cat} | {_pct(v.get('accuracy'))} | {v.get('n')} |")
        chat = e["results"].get("chat")
        if chat:
            lines += ["", f"Chat checks ({chat.get('n')} prompts): " + ", ".join(
                f"{k} {v:.3f}" for k, v in chat.items() if k != "n" and isinstance(v, (int, float)))]
        lines.append("")
    return lines


def _samples_section(evals: dict, limit: int = 3) -> list[str]:
    gens = next((e["generations"] for e in evals.values() if e["generations"]), [])
    lines = []
    for g in gens[:limit]:
        prompt = g.get("prompt") or (g.get("messages") or [{}])[-1].get("content", "")
        answer = g.get("response", g.get("output", g.get("generation", "")))
        lines += [f"> **User:** {str(prompt).strip()}", ">", f"> **Assistant:** {str(answer).strip()}", ""]
    return lines


def _usage_section(repo: str, gguf_files: list[str]) -> list[str]:
    lines = ["```python", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
             f'tok = AutoTokenizer.from_pretrained("{repo}")',
             f'model = AutoModelForCausalLM.from_pretrained("{repo}", dtype="auto")',
             'ids = tok.apply_chat_template([{"role": "user", "content": "你好"}], add_generation_prompt=True,',
             '                              return_tensors="pt")',
             "print(tok.decode(model.generate(ids, max_new_tokens=128)[0][ids.shape[1]:], skip_special_tokens=True))",
             "```", "", "vLLM (the generation config stops at `<|eot_id|>`):", "", "```bash",
             f"vllm serve {repo}", "```"]
    if gguf_files:
        lines += ["", "llama.cpp (the GGUF carries the chat template and `<|eot_id|>` as end of turn):", "",
                  "```bash", f"llama-cli -m {repo}/{gguf_files[0]} -cnv", "```"]
    return lines


def render_card(export_dir: pathlib.Path, run_dir: pathlib.Path | None) -> str:
    import yaml

    export_dir = pathlib.Path(export_dir)
    run_dir = pathlib.Path(run_dir) if run_dir else None
    cfg = _run_config(run_dir) if run_dir else {}
    report = _read_json(run_dir / "data_report.json") if run_dir else None
    evals = _evaluations(run_dir) if run_dir else {}
    t = training_summary(run_dir) if run_dir else {"steps": 0, "tokens": 0, "supervised_tokens": 0}
    name = str((cfg.get("run") or {}).get("name") or export_dir.resolve().parent.name)
    gguf_files = sorted(str(p.relative_to(export_dir)) for p in (export_dir / "gguf").glob("*.gguf"))
    econf = _read_json(export_dir / "config.json") or {}
    head = yaml.safe_dump(_header(cfg, report, evals, name, gguf_files), allow_unicode=True, sort_keys=False)
    body = [f"# {name}", "",
            f"A Llama 3 architecture chat model ({econf.get('num_hidden_layers')} layers, hidden size "
            f"{econf.get('hidden_size')}, {econf.get('torch_dtype', econf.get('dtype'))} weights) fine-tuned "
            "for Chinese and English chat with full-parameter SFT by llama3zh_dist"
            + (f", starting from `{cfg['model']['path']}`." if (cfg.get("model") or {}).get("path")
               else ", trained from freshly initialised weights."),
            "", "## Data", ""] + _data_section(report) + ["", "## Training", ""] + _training_section(cfg, t) + \
        ["", "## Evaluation", ""] + _eval_section(evals)
    samples = _samples_section(evals)
    if samples:
        body += ["## Chat samples", ""] + samples
    files = ["safetensors weights", "tokenizer with its chat template"] + gguf_files
    body += ["## Files", "", ", ".join(files) + "; `SHA256SUMS` lists the checksum of every file.", "",
             "## Usage", ""] + _usage_section(str(export_dir), gguf_files)
    return "---\n" + head + "---\n\n" + "\n".join(body).rstrip() + "\n"


def write_card(export_dir, run_dir) -> pathlib.Path:
    """Write ``export_dir/README.md`` from the run's files and list it in ``SHA256SUMS``."""
    from llama3zh_dist.fileio import atomic_write_text

    from .sums import update_sums

    p = pathlib.Path(export_dir) / CARD
    atomic_write_text(p, render_card(export_dir, run_dir))
    update_sums(export_dir, [CARD])
    return p


def refresh_after_eval(eval_out_dir) -> pathlib.Path | None:
    """After ``results.json`` of ``run.dir/eval/<name>`` is written: rewrite the run's export card, when
    the run has an export with a card. Returns the card or None."""
    run_dir = pathlib.Path(eval_out_dir).resolve().parent.parent
    export = run_dir / "export"
    if not (export / CARD).is_file() or not (run_dir / "config.yaml").is_file():
        return None
    return write_card(export, run_dir)
