"""Evaluate one exported model folder in this process: benchmarks, chat samples, files, table, W&B."""

from __future__ import annotations

import secrets
import sys
from pathlib import Path

from omegaconf import DictConfig

from ..config import redact
from .chat_samples import generate_conversation, load_prompts, summarize_chat, wandb_table
from .results import console_table, summarize, wandb_metrics, write_outputs
from .runner import load_benchmarks, score_benchmarks, selected_benchmarks


def load_model(folder: Path, cfg: DictConfig):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own progress lines say what is happening
    from ..quiet import no_progress_bars_off_a_terminal

    no_progress_bars_off_a_terminal()  # huggingface_hub's bars too
    trust = bool(cfg.model.get("trust_remote_code", False))
    tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True, trust_remote_code=trust)
    if torch.cuda.is_available():
        # device_map="auto" spreads a model larger than one GPU (70B in bf16) over all visible GPUs.
        model = AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True, trust_remote_code=trust,
                                                     dtype="auto", device_map="auto").eval()
        return model, tok, model.get_input_embeddings().weight.device
    model = AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True, trust_remote_code=trust,
                                                 dtype="auto").eval()
    return model, tok, torch.device("cpu")


def run_chat_samples(model, tok, cfg: DictConfig, device, *, convs: list[dict] | None = None,
                     synced: bool = False) -> list[dict]:
    ev = cfg.eval
    convs = load_prompts(list(ev.chat.prompts)) if convs is None else convs
    records = []
    for i, conv in enumerate(convs):
        records += generate_conversation(model, tok, conv, max_new_tokens=int(ev.chat.max_new_tokens),
                                         identity_name=ev.chat.get("identity_name"), device=device, synced=synced)
        if not synced:
            print(f"chat samples: {i + 1}/{len(convs)} conversations", file=sys.stderr, flush=True)
    return records


def _wandb_eval_run(cfg: DictConfig, out: Path, tag: str):
    """A W&B run of its own for an evaluation after training (grouped with the training run)."""
    mode = cfg.logger.mode
    if mode == "disabled":
        return None
    import os

    import wandb

    if mode == "online" and not os.environ.get("WANDB_API_KEY"):
        mode = "offline"
    return wandb.init(project=cfg.logger.project, entity=cfg.logger.entity, group=cfg.logger.group or cfg.run.name,
                      name=f"{cfg.run.name}-eval-{tag}", id=secrets.token_hex(4), job_type="eval", dir=str(out),
                      mode=mode, config=redact(cfg),
                      settings=wandb.Settings(console="off", silent=True, x_disable_stats=True,
                                                      x_save_requirements=False))


def log_to_wandb(run, results: dict, generations: list[dict] | None, step: int | None = None) -> None:
    if run is None:
        return
    payload: dict = dict(wandb_metrics(results))
    if generations:
        payload["eval/chat_samples"] = wandb_table(generations)
    run.log(payload, step=step)


def evaluate_model_folder(cfg: DictConfig, folder: Path, out: Path, *, tag: str = "export") -> dict:
    """Evaluate ``folder``; write ``out``/results.json, items.jsonl, generations.jsonl; return the results."""
    names = selected_benchmarks(cfg.eval)
    benches = load_benchmarks(cfg.eval)  # data problems surface before the model loads
    convs = load_prompts(list(cfg.eval.chat.prompts)) if "chat" in names else None
    print(f"evaluating {folder}: {', '.join(names)} -> {out}", file=sys.stderr, flush=True)
    model, tok, device = load_model(folder, cfg)
    items = score_benchmarks(model, tok, benches, cfg.eval, device) if benches else []
    results = summarize(items)
    generations = None
    if convs is not None:
        generations = run_chat_samples(model, tok, cfg, device, convs=convs)
        results["chat"] = summarize_chat(generations)
    write_outputs(out, results, items, generations)
    print(console_table(results), flush=True)
    run = _wandb_eval_run(cfg, out, tag)
    try:
        log_to_wandb(run, results, generations)
    finally:
        if run is not None:
            run.finish()
    print(f"results: {out / 'results.json'}", file=sys.stderr, flush=True)
    return results
