"""Evaluation during training, on the ZeRO-3 engine itself, every ``eval.every_steps``.

Multiple-choice items are dealt round-robin over the data-parallel ranks (``runner.score_benchmarks``);
chat conversations too, each rank generating its share with ``synced_gpus=True``. ZeRO-3 forwards are
collective (each layer's parameters are all-gathered as it runs), so every rank makes the same
number of forward calls and of ``generate`` calls whatever its share: a rank with fewer items pads
with forwards on one token, a rank with fewer turns with one-token generations. Rank 0 writes
``run.dir/eval/step_<N>/`` and the step's record gets ``eval/<benchmark>`` (metrics.jsonl, W&B).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from omegaconf import DictConfig

from ..collectives import Collectives
from .chat_samples import generate_conversation, load_prompts, summarize_chat
from .results import console_table, summarize, wandb_metrics, write_outputs
from .runner import load_benchmarks, score_benchmarks, selected_benchmarks


class TrainingEvaluator:
    def __init__(self, cfg: DictConfig, run_dir: Path, *, rank: int, world_size: int, device):
        self.cfg, self.run_dir, self.rank, self.world_size, self.device = cfg, Path(run_dir), rank, world_size, device
        self.every = int(cfg.eval.get("every_steps") or 0)
        if not self.every:
            return
        from ..llama3.hf_tokenizer import load_tokenizer

        names = selected_benchmarks(cfg.eval)
        self.benches = load_benchmarks(cfg.eval)
        self.convs = load_prompts(list(cfg.eval.chat.prompts)) if "chat" in names else None
        self.tok = load_tokenizer(cfg.model.path, bool(cfg.model.get("trust_remote_code", False)))

    def due(self, step: int) -> bool:
        return bool(self.every) and step % self.every == 0

    def _max(self, n: int) -> int:
        return int(Collectives(self.device).max([n])[0])  # counts of forwards: exact in float32

    def _gather(self, obj) -> list:
        return Collectives(self.device).gather_objects(obj)

    def _chat(self, model) -> list[dict]:
        mine = list(range(self.rank, len(self.convs), self.world_size))
        ev = self.cfg.eval
        # Agree on the number of generate calls before the first one: a rank that asked after its own
        # share would meet the others inside their generate's collectives.
        turns = sum(len(self.convs[p]["turns"]) for p in mine)
        pad = self._max(turns) - turns
        local = []
        for pos in mine:
            recs = generate_conversation(model, self.tok, self.convs[pos], max_new_tokens=int(ev.chat.max_new_tokens),
                                         identity_name=ev.chat.get("identity_name"), device=self.device, synced=True)
            local.append((pos, recs))
        if pad:
            filler = {"id": "-", "category": "-", "turns": ["。"] * pad, "identity": False}
            generate_conversation(model, self.tok, filler, max_new_tokens=1, identity_name=None,
                                  device=self.device, synced=True)
        merged = sorted((x for part in self._gather(local) for x in part), key=lambda x: x[0])
        return [r for _, recs in merged for r in recs]

    @torch.no_grad()
    def run(self, engine, step: int, wandb_run=None) -> dict:
        """Evaluate the engine's current weights; returns the flat ``eval/...`` figures (every rank)."""
        model = engine.module
        was_training = model.training
        forwards = [0]
        hook = model.register_forward_hook(lambda *_: forwards.__setitem__(0, forwards[0] + 1))
        engine.eval()
        try:
            items = score_benchmarks(model, self.tok, self.benches, self.cfg.eval, self.device, rank=self.rank,
                                     world_size=self.world_size, all_reduce_max=self._max, all_gather=self._gather,
                                     show_progress=True) if self.benches else []
            results = summarize(items)
            generations = None
            if self.convs is not None:
                generations = self._chat(model)
                results["chat"] = summarize_chat(generations)
        finally:
            hook.remove()
            if was_training:
                engine.train()
        per_rank = self._gather(forwards[0])  # equal by construction; shown so that a log proves it
        if self.rank == 0:
            out = self.run_dir / "eval" / f"step_{step}"
            write_outputs(out, results, items, generations)
            print(f"eval at step {step} -> {out} (forward passes per rank: {per_rank})\n{console_table(results)}",
                  file=sys.stderr, flush=True)
            if wandb_run is not None and generations:
                from .chat_samples import wandb_table

                wandb_run.log({"eval/chat_samples": wandb_table(generations)}, step=step, commit=False)
        return wandb_metrics(results)
