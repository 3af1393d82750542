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

# Dense bf16 peak FLOP/s per device, for MFU. Unknown devices (and CPUs) report mfu = null.
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "H800": 989e12, "A100": 312e12, "A800": 312e12, "L40S": 362e12, "4090": 165e12}


def peak_flops_per_device(device: str) -> float | None:
    if device != "cuda":
        return None
    import torch

    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)


def train_flops_per_token(n_params: int, n_layers: int, hidden: int, seq_len: float) -> float:
    """6N for the matmuls (forward + backward) plus the attention scores (PaLM appendix B)."""
    return 6 * n_params + 12 * n_layers * hidden * seq_len


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
