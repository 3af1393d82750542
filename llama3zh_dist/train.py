"""Full-parameter SFT recipe: one rank of a DeepSpeed ZeRO-3 run.

Supports: Llama 3 (8B, 70B, or a tiny random model on CPU) with FlashAttention-2 / SDPA, packed
rows without cross-sample attention, loss per supervised token over the whole global batch,
gradient checkpointing and clipping, cosine LR with warmup, atomic verified checkpoints with
bit-exact resume (model, optimizer, scheduler, RNG, data position, W&B run), preemption by
SIGUSR1/SIGTERM (save at the same step on every rank, exit 75 = requeue), a NaN/Inf guard that
skips bad steps, collective timeouts, validation loss per source, and export at the end.

Read top to bottom: ``setup()``, ``train()``, ``save_checkpoint()``, ``run_rank()``.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import os
import random
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from omegaconf import DictConfig

from . import EXIT_REQUEUE
from .checkpoint import CheckpointManager
from .checkpoint_layout import TOKENIZER_DIR
from .collectives import Collectives, training_device
from .config import save_config
from .data.loader import StepBatches, ValidationBatches
from .deepspeed_config import build_deepspeed_config, build_optimizer, model_config_of, start_lr_schedule, write_deepspeed_config
from .errors import UserError
from .fault_injection import FaultInjector
from .flops import ModelShape, micro_batch_flops
from .metrics import MetricsLogger, peak_flops_per_device
from .model import build_model, init_untrained_token_rows, supervised_loss_sum, supervised_token_losses
from .pretrained import HostMemoryPeak, checkpoint_bytes
from .quiet import silence_known_noise
from .rank_guards import PreemptionSignals, Watchdog
from .rendezvous import init_distributed

log = logging.getLogger("llama3zh_dist")

# Prompts whose logits every checkpoint keeps, so the export can be checked against them.
REFERENCE_PROMPTS = [
    [{"role": "user", "content": "你好，请介绍一下你自己。"}],
    [{"role": "system", "content": "你是一个乐于助人的助手。"}, {"role": "user", "content": "北京有哪些好玩的地方？"}],
]


class SFTRecipe:
    def __init__(self, cfg: DictConfig, data_dir: Path):
        self.cfg = cfg
        self.data_dir = Path(data_dir)
        self.run_dir = Path(cfg.run.dir).absolute()
        self.rank = int(os.environ["RANK"])
        self.world_size = int(os.environ["WORLD_SIZE"])
        self.local_rank = int(os.environ.get("LOCAL_RANK", 0))
        self.signals = PreemptionSignals()
        self.watchdog = Watchdog(self.rank, 60 * float(cfg.cluster.timeout_minutes))
        self.faults = FaultInjector(self.rank)  # resilience tests only; inert without its variables

    # ------------------------------------------------------------------------------------------
    def setup(self) -> None:
        import deepspeed

        cfg = self.cfg
        self.device = training_device(cfg.cluster.device, self.local_rank)  # before NCCL starts
        timeout = datetime.timedelta(minutes=float(cfg.cluster.timeout_minutes))
        init_distributed(cfg.cluster.backend, timeout)
        self.comm = Collectives(self.device)
        self._seed(int(cfg.trainer.seed) + self.rank)
        gpus_per_node = int(os.environ.get("LOCAL_WORLD_SIZE", cfg.cluster.nproc_per_node))
        model_config = model_config_of(cfg)
        self.ds_config = build_deepspeed_config(cfg, self.world_size, model_config, gpus_per_node)
        self.checkpointing = self._say_throughput_choices(model_config, gpus_per_node)
        from .eval.in_training import TrainingEvaluator  # checks benchmark data and prompts now, not at step N
        self.evaluator = TrainingEvaluator(cfg, self.run_dir, rank=self.rank, world_size=self.world_size, device=self.device)
        if self.rank == 0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.run_dir / "config.yaml")
            write_deepspeed_config(self.ds_config, self.run_dir)
            self._copy_data_report()

        torch.manual_seed(int(cfg.trainer.seed))  # identical init on every rank
        import transformers.models.llama.modeling_llama  # noqa: F401  (module imports are not the load)

        with HostMemoryPeak() as host:
            model = build_model(cfg, self.ds_config, checkpointing=self.checkpointing)
        if cfg.model.init == "pretrained":
            size = checkpoint_bytes(cfg.model.path)
            self._say(f"loaded {cfg.model.path}" + (f" ({size / 1e9:.2f} GB checkpoint)" if size else "")
                      + f": rank 0 host memory peak +{host.grew_by / 1e9:.2f} GB anonymous "
                      f"({host.peak_rss / 1e9:.2f} GB resident incl. mapped files)")
        if cfg.model.init_special_token_rows:
            changed = init_untrained_token_rows(model, rank=self.rank)
            self._say(f"untrained embedding rows initialised from the mean embedding: {len(changed)}"
                      + (f" (ids {changed[:12]}{'...' if len(changed) > 12 else ''})" if changed else ""))
        self.hf_config = model.config
        self.n_params = sum(int(getattr(p, "ds_numel", p.numel())) for p in model.parameters())
        groups = self._param_groups(model)
        self.engine, _, _, _ = deepspeed.initialize(
            model=model, optimizer=build_optimizer(cfg, groups), model_parameters=groups, config=self.ds_config
        )
        start_lr_schedule(self.engine.lr_scheduler)
        local = sum(p.ds_tensor.numel() for p in model.parameters() if hasattr(p, "ds_tensor"))
        self._say(f"model: {self.n_params / 1e6:.1f}M parameters, ZeRO-3 over {self.world_size} ranks "
                  f"(this rank holds {local / 1e6:.2f}M); attention: {model._llama3zh_attention}")

        t = cfg.trainer
        self.grad_accum = self.ds_config["gradient_accumulation_steps"]
        self.batches = StepBatches(
            self.data_dir, global_batch_rows=int(t.global_batch_size), micro_batch_size=int(t.micro_batch_size),
            rank=self.rank, world_size=self.world_size, seed=int(t.seed),
        )
        self.val = ValidationBatches(self.data_dir, rank=self.rank, world_size=self.world_size,
                                     max_rows=int(t.eval_max_rows), micro_batch_size=int(t.micro_batch_size))

        self.ckpt = CheckpointManager(self.run_dir, rank=self.rank, world_size=self.world_size, keep=int(cfg.checkpoint.keep))
        self.step = 0
        self.saved_step = -1
        self.bad_steps_in_a_row = 0
        if cfg.checkpoint.resume:
            found = self.ckpt.newest_valid()
            if found is not None:
                state = self.ckpt.load(self.engine, found)
                self.step = int(state["step"])
                self.saved_step = self.step
                self.bad_steps_in_a_row = int(state.get("bad_steps_in_a_row", 0))
                self._say(f"resumed from {found} at step {self.step}")
        self.metrics = MetricsLogger(cfg, self.run_dir, rank=self.rank, resume_step=self.step, total_steps=int(t.max_steps))
        self.peak_flops = peak_flops_per_device(cfg.cluster.device)
        self.last_ckpt_time = time.time()

    def _say_throughput_choices(self, model_config, gpus_per_node: int) -> str:
        """The planner's reduce dtype (already in ds_config) and checkpointing granularity, said once."""
        from .flops import ModelShape
        from .plan import checkpointing_choice, reduce_dtype_choice

        reduce = reduce_dtype_choice(self.cfg, self.world_size, gpus_per_node)
        ckpt = checkpointing_choice(self.cfg, ModelShape.from_config(model_config), self.ds_config, self.world_size)
        shown = [("model.gradient_checkpointing", ckpt)]
        if self.cfg.model.dtype == "bfloat16":  # otherwise gradients are reduced in the model dtype
            shown.insert(0, ("deepspeed.reduce_dtype", reduce))
        for key, c in shown:
            if c.picked:  # a value the user gave needs no explanation
                self._say(f"{key}={c.value} (auto: {c.reason})")
        return ckpt.value

    def _param_groups(self, model):
        """No weight decay on norms and biases (1-D tensors), as in every Llama recipe."""
        wd = float(self.cfg.trainer.weight_decay)
        decay, no_decay = [], []
        for p in model.parameters():
            if p.requires_grad:
                (decay if len(getattr(p, "ds_shape", p.shape)) >= 2 else no_decay).append(p)
        return [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]

    # ------------------------------------------------------------------------------------------
    def train(self) -> int:
        """The training loop; a failure is reported with this rank's last completed step."""
        try:
            return self._train_loop()
        except UserError:
            raise
        except Exception as e:
            first = (str(e).strip().splitlines() or [""])[0]
            print(f"rank {self.rank}: failed while {self.watchdog.doing}; last completed step "
                  f"{self.watchdog.completed}: {type(e).__name__}: {first}", file=sys.stderr, flush=True)
            if _is_collective_failure(e):
                # A peer died or hung: tearing down the process group could block on it; leave now.
                traceback.print_exc()
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(1)
            raise
        finally:
            self.watchdog.armed = False  # export and shutdown are not steps

    def _train_loop(self) -> int:
        cfg, t = self.cfg, self.cfg.trainer
        max_steps = int(t.max_steps)
        while self.step < max_steps:
            preempt, time_due = self._agree_on_flags()
            if preempt:
                print(f"rank {self.rank}: preemption signal: saving at step {self.step} and exiting "
                      f"{EXIT_REQUEUE} (requeue)", flush=True)
                self.save_checkpoint()
                return EXIT_REQUEUE
            if time_due:
                self.save_checkpoint()
            self.step += 1
            self.watchdog.beat(f"training step {self.step}", self.step - 1)
            self.faults.hang(self.step)
            record = self._train_step(self.step)
            if int(t.eval_every) and self.step % int(t.eval_every) == 0 and self.val.available:
                record.update(self.evaluate())
            if self.evaluator.due(self.step):
                self.watchdog.beat(f"evaluating benchmarks at step {self.step}", self.step)
                record.update(self.evaluator.run(self.engine, self.step, self.metrics.wandb_run))
            self.metrics.log(record)
            self.watchdog.beat(f"after step {self.step}", self.step)
            if self.bad_steps_in_a_row >= int(t.max_bad_steps):
                raise UserError(
                    f"rank {self.rank}: {self.bad_steps_in_a_row} non-finite steps in a row (trainer.max_bad_steps="
                    f"{t.max_bad_steps}); stopping. Lower trainer.lr or inspect the samples logged above."
                )
            every = int(cfg.checkpoint.every_steps)
            if (every and self.step % every == 0) or self.step == max_steps:
                self.save_checkpoint(final=self.step == max_steps)
        return 0

    def _train_step(self, step: int) -> dict:
        t0 = time.time()
        micro = self.batches.micro_batches(step)
        shape = ModelShape.from_config(self.hf_config)
        counts = self.comm.sum([sum(m.supervised_tokens for m in micro), sum(m.tokens for m in micro),
                                micro_batch_flops(shape, micro)])
        global_sup = max(counts[0], 1.0)
        lr = float(self.engine.get_lr()[0])  # the rate this step's update uses (the scheduler steps after it)
        self.engine.train()
        loss_sum = 0.0
        for m in micro:
            s = supervised_loss_sum(self.engine, m, self.device)
            if self.faults.nan(step):
                s = s * float("nan")
            # DeepSpeed averages gradients over ranks; scale so the update is the mean over every
            # supervised token of the global batch (all micro-batches of all ranks).
            self.engine.backward(s * (self.world_size / global_sup), scale_wrt_gas=False)
            self.engine.step()
            loss_sum += float(s.detach())
        totals = self.comm.sum([loss_sum, 0.0 if math.isfinite(loss_sum) else 1.0])
        loss = totals[0] / global_sup
        grad_norm = self.engine.get_global_grad_norm()
        grad_norm = float(grad_norm) if grad_norm is not None else float("nan")
        applied = bool(getattr(self.engine, "_step_applied", True)) and totals[1] == 0 and math.isfinite(grad_norm)
        if not applied:
            self.bad_steps_in_a_row += 1
            ids = [s for m in micro for s in m.sample_ids]
            print(f"rank {self.rank}: step {step} skipped: loss={loss} grad_norm={grad_norm}; "
                  f"samples on this rank: {ids[:20]}{'...' if len(ids) > 20 else ''}", flush=True)
        else:
            self.bad_steps_in_a_row = 0
        dt = time.time() - t0
        tokens, sup = int(counts[1]), int(counts[0])
        flops = float(counts[2])  # flops.py: what the step computed usefully, over all ranks
        mfu = flops / dt / (self.peak_flops * self.world_size) if self.peak_flops else None
        return {
            "step": step, "loss": loss, "lr": lr, "grad_norm": grad_norm,
            "tokens": tokens, "supervised_tokens": sup, "tokens_per_s": tokens / dt, "mfu": mfu, "flops": flops,
            "epoch": self.batches.epoch_at(step), "world_size": self.world_size, "skipped": not applied,
            "time": time.time(),
        }

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Validation loss and perplexity, overall and per source (summed over all ranks)."""
        self.engine.eval()
        sums: dict[str, list[float]] = {}
        for i, m in enumerate(self.val.batches):
            losses = _per_source_losses(self.engine, m, self.device)  # every rank runs as many forwards
            if i >= self.val.counted:
                continue  # padding: it kept this rank in the others' all-gathers; its loss is not counted
            for src, (loss, n) in losses.items():
                acc = sums.setdefault(src, [0.0, 0.0])
                acc[0] += loss
                acc[1] += n
        gathered = self.comm.gather_objects(sums)
        total: dict[str, list[float]] = {}
        for part in gathered:
            for src, (loss, n) in part.items():
                acc = total.setdefault(src, [0.0, 0.0])
                acc[0] += loss
                acc[1] += n
        self.engine.train()
        all_loss = sum(v[0] for v in total.values())
        all_n = sum(v[1] for v in total.values())
        out = {"val_loss": all_loss / max(all_n, 1), "val_ppl": math.exp(min(all_loss / max(all_n, 1), 50))}
        for src, (loss, n) in sorted(total.items()):
            out[f"val_loss/{src}"] = loss / max(n, 1)
            out[f"val_ppl/{src}"] = math.exp(min(loss / max(n, 1), 50))
        return out

    def _agree_on_flags(self) -> tuple[bool, bool]:
        """One all-reduce per step: any rank preempted? Is a time-based checkpoint due?"""
        minutes = float(self.cfg.checkpoint.every_minutes)
        due = minutes > 0 and time.time() - self.last_ckpt_time >= minutes * 60 and self.step > 0
        preempt, time_due = self.comm.max([float(self.signals.requested), float(due)])
        return preempt > 0, time_due > 0

    # ------------------------------------------------------------------------------------------
    def save_checkpoint(self, final: bool = False) -> None:
        if self.step == self.saved_step:
            return  # a complete checkpoint of exactly this state exists (we just resumed or saved it)
        self.watchdog.beat(f"saving checkpoint step_{self.step}")
        t0 = time.time()
        if not self._weights_finite():
            self._say(f"not saving step {self.step}: the weights are not finite")
            return
        state = {"step": self.step, "bad_steps_in_a_row": self.bad_steps_in_a_row,
                 "consumed_rows": self.step * int(self.cfg.trainer.global_batch_size),
                 "world_size": self.world_size, "time": time.time()}
        # Every checkpoint keeps the reference logits (two short prompts: one forward each), so an
        # export of any step (export.step=N, eval.step=N) is checked against the model it came from.
        extra = {"reference_logits.safetensors": self._reference_logits_writer(),
                 TOKENIZER_DIR: self._reference_tokenizer.save_pretrained}  # what the export copies
        self.ckpt.save(self.engine, self.step, state, self.hf_config, extra)
        self.last_ckpt_time = time.time()
        self.saved_step = self.step
        self.watchdog.beat(f"after checkpoint step_{self.step}")
        self._say(f"checkpoint step_{self.step} complete ({time.time() - t0:.1f}s)")

    def _weights_finite(self) -> bool:
        checks = [torch.isfinite(p.ds_tensor).all() for p in self.engine.module.parameters() if hasattr(p, "ds_tensor")]
        ok = bool(torch.stack(checks).all()) if checks else True  # one device sync, not one per tensor
        return not self.comm.any(not ok)

    def _reference_logits_writer(self):
        """Logits of REFERENCE_PROMPTS from the trained model (computed by all ranks now)."""
        from safetensors.torch import save_file

        from .llama3.chat_format import encode_dialog
        from .llama3.hf_tokenizer import load_tokenizer
        from .llama3.tokens import PAD_ID

        if getattr(self, "_reference_tokenizer", None) is None:
            self._reference_tokenizer = load_tokenizer(self.cfg.model.path, bool(self.cfg.model.trust_remote_code))
        tok = self._reference_tokenizer
        self.engine.eval()
        ids_list, logits_list = [], []
        with torch.no_grad():
            for msgs in REFERENCE_PROMPTS:
                ids = torch.tensor([encode_dialog(tok, msgs, add_generation_prompt=True)], dtype=torch.long)
                out = self.engine(input_ids=ids.to(self.device), use_cache=False)
                ids_list.append(ids[0])
                logits_list.append(out.logits[0].float().cpu())
        self.engine.train()
        n = max(len(i) for i in ids_list)
        # Left-align and record lengths; the exporter compares only the real positions.
        ids = torch.full((len(ids_list), n), PAD_ID, dtype=torch.long)
        logits = torch.zeros(len(ids_list), n, logits_list[0].shape[-1])
        lengths = torch.tensor([len(i) for i in ids_list])
        for k, (i, lg) in enumerate(zip(ids_list, logits_list)):
            ids[k, : len(i)] = i
            logits[k, : len(i)] = lg
        # The compute dtype tells the exporter how much rounding to expect (see export/logits_check.py).
        meta = {"compute_dtype": str(self.cfg.model.dtype), "attn_implementation": str(self.engine.module.config._attn_implementation)}
        return lambda path: save_file({"input_ids": ids, "logits": logits.contiguous(), "lengths": lengths}, str(path),
                                      metadata=meta)

    # ------------------------------------------------------------------------------------------
    def _seed(self, seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)

    def _copy_data_report(self) -> None:
        src = self.data_dir / "data_report.json"
        if src.exists():
            (self.run_dir / "data_report.json").write_text(src.read_text())

    def _say(self, msg: str) -> None:
        if self.rank == 0:
            print(msg, flush=True)


def _per_source_losses(engine, batch, device) -> dict[str, tuple[float, int]]:
    """Token losses of one validation micro-batch, summed per source of the samples."""
    losses = supervised_token_losses(engine, batch, device).cpu()
    # Which sample each supervised position belongs to: a new sample starts where position is 0.
    starts = (batch.position_ids[0] == 0).cumsum(0) - 1
    owner = starts[batch.logits_mask[0]]
    out_: dict[str, tuple[float, int]] = {}
    for k, src in enumerate(batch.sources or ["all"] * len(batch.sample_ids)):
        sel = owner == k
        if sel.any():
            prev = out_.get(src, (0.0, 0))
            out_[src] = (prev[0] + float(losses[sel].sum()), prev[1] + int(sel.sum()))
    return out_


def _is_collective_failure(e: BaseException) -> bool:
    """A process-group error: timeout, or a peer that went away (gloo/NCCL)."""
    if isinstance(e, getattr(dist, "DistError", ())):
        return True
    text = f"{type(e).__name__} {e}".lower()
    return any(k in text for k in ("gloo", "nccl", "timed out", "timeout", "connection closed", "connection reset",
                                   "broken pipe", "socket"))


def run_rank(cfg: DictConfig, data_dir: Path) -> int:
    """Run this process's rank to the end; returns the exit code (0, or 75 after preemption)."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    silence_known_noise()
    recipe = SFTRecipe(cfg, data_dir)
    recipe.setup()
    try:
        code = recipe.train()
        finished = code == 0
        if dist.is_initialized():
            recipe.comm.barrier()
            dist.destroy_process_group()
        if finished and recipe.rank == 0 and cfg.export.enabled:
            _export_after_training(recipe)
        if finished and recipe.rank == 0:
            (recipe.run_dir / "FINISHED").write_text(json.dumps({"step": recipe.step, "time": time.time()}) + "\n")
    finally:
        recipe.metrics.close()
    return code


def _export_after_training(recipe: SFTRecipe) -> None:
    """Rank 0 exports the final checkpoint from disk, in bounded memory, and records it in W&B."""
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    from .export import export_run

    # While transformers' ZeRO-3 integration is alive, every model it builds (the exporter's
    # verification model included) is partitioned; the training engine is no longer needed.
    recipe.engine.module._llama3zh_hf_ds = None
    unset_hf_deepspeed_config()
    del recipe.engine
    out = export_run(recipe.cfg, wandb_run=recipe.metrics.wandb_run)
    print(f"exported: {out}", flush=True)
