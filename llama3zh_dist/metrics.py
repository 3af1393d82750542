"""Rank 0's record of the run: ``metrics.jsonl``, the W&B run, and the progress bar."""

from __future__ import annotations

import json
import math
import os
import secrets
import time
from pathlib import Path

from omegaconf import DictConfig

from .config import redact
# MFU's FLOPs and the device peaks live in flops.py and gpus.py, shared with the planner.
from .gpus import peak_bf16_flops as peak_flops_per_device  # noqa: F401  (train.py imports it from here)


class MetricsLogger:
    """Writes one JSON object per optimizer step; a no-op on ranks other than 0."""

    def __init__(self, cfg: DictConfig, run_dir: Path, *, rank: int, resume_step: int, total_steps: int):
        self.enabled = rank == 0
        self.path = Path(run_dir) / "metrics.jsonl"
        self.wandb_run = None
        self.bar = None
        if not self.enabled:
            return
        self._truncate_after(resume_step)
        self.wandb_run = self._init_wandb(cfg, Path(run_dir))
        if cfg.trainer.progress_bar:
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=resume_step, desc="train", unit="step", dynamic_ncols=True)

    def _truncate_after(self, step: int) -> None:
        """On resume, drop lines of steps after the checkpoint (they are about to be redone)."""
        if not self.path.exists():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    kept.append(line)
            except ValueError:
                continue  # a line cut short by a kill
        self.path.write_text("".join(k + "\n" for k in kept))

    def _init_wandb(self, cfg: DictConfig, run_dir: Path):
        mode = cfg.logger.mode
        if mode == "disabled":
            return None
        if mode == "online" and not os.environ.get("WANDB_API_KEY"):
            print("warning: logger.mode=online without WANDB_API_KEY: logging offline instead", flush=True)
            mode = "offline"
        import wandb

        # One W&B run per run folder: a resumed or requeued job continues the same curves.
        id_file = run_dir / "wandb_run_id"
        run_id = id_file.read_text().strip() if id_file.exists() else secrets.token_hex(4)
        id_file.write_text(run_id + "\n")
        return wandb.init(
            project=cfg.logger.project,
            entity=cfg.logger.entity,
            group=cfg.logger.group,
            tags=list(cfg.logger.tags or []),
            name=cfg.run.name,
            id=run_id,
            resume="allow",
            dir=str(run_dir),
            mode=mode,
            config=redact(cfg),
            settings=wandb.Settings(console="off", x_disable_stats=True, x_save_requirements=False),
        )

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        record = {k: (None if isinstance(v, float) and not math.isfinite(v) and k == "mfu" else v) for k, v in record.items()}
        record.setdefault("time", time.time())
        with open(self.path, "a") as f:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
        if self.wandb_run is not None:
            self.wandb_run.log({k: v for k, v in record.items() if isinstance(v, (int, float)) and v is not None and k != "step"}, step=record["step"])
        if self.bar is not None and "loss" in record:
            self.bar.set_postfix(loss=f"{record['loss']:.4f}", tok_s=f"{record.get('tokens_per_s', 0):.0f}", refresh=False)
            self.bar.update(record["step"] - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()
