"""The DeepSpeed JSON, generated from the Hydra config: one source of truth, no hand-kept JSON."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from .preflight import gradient_accumulation_steps


def _auto(value: Any, default: Any) -> Any:
    return default if value == "auto" else value


def build_deepspeed_config(cfg: DictConfig, world_size: int) -> dict[str, Any]:
    t, ds, m = cfg.trainer, cfg.deepspeed, cfg.model
    hidden = int((m.arch or {}).get("hidden_size", 4096)) if m.arch else 4096
    on_gpu = cfg.cluster.device == "cuda"
    zero: dict[str, Any] = {
        "stage": int(ds.stage),
        "overlap_comm": bool(ds.overlap_comm) and on_gpu,
        "contiguous_gradients": bool(ds.contiguous_gradients),
        # The usual HF-recommended sizes for ZeRO-3, scaled by the hidden size.
        "reduce_bucket_size": int(_auto(ds.reduce_bucket_size, hidden * hidden)),
        "stage3_prefetch_bucket_size": int(_auto(ds.stage3_prefetch_bucket_size, 0.9 * hidden * hidden)),
        "stage3_param_persistence_threshold": int(_auto(ds.stage3_param_persistence_threshold, 10 * hidden)),
        "stage3_max_live_parameters": int(ds.stage3_max_live_parameters),
        "stage3_max_reuse_distance": int(ds.stage3_max_reuse_distance),
        "sub_group_size": int(ds.sub_group_size),
        # Export is our own streaming exporter; never gather 16-bit weights on rank 0 at save time.
        "stage3_gather_16bit_weights_on_model_save": False,
    }
    if ds.offload_optimizer != "none":
        zero["offload_optimizer"] = {"device": ds.offload_optimizer, "pin_memory": on_gpu}
    if ds.offload_param != "none":
        zero["offload_param"] = {"device": ds.offload_param, "pin_memory": on_gpu}
    total_steps = int(t.max_steps)
    warmup = int(round(float(t.warmup_ratio) * total_steps))
    config: dict[str, Any] = {
        "train_batch_size": int(t.global_batch_size),
        "train_micro_batch_size_per_gpu": int(t.micro_batch_size),
        "gradient_accumulation_steps": gradient_accumulation_steps(cfg, world_size),
        "gradient_clipping": float(t.grad_clip),
        "zero_optimization": zero,
        "optimizer": {
            "type": "AdamW",
            "params": {
                "lr": float(t.lr),
                "betas": list(OmegaConf.to_container(t.adam_betas)),
                "eps": float(t.adam_eps),
                "weight_decay": float(t.weight_decay),
                # Fused Adam needs CUDA; on CPU (and CPU offload is handled by DeepSpeed) use torch's.
                **({} if on_gpu else {"torch_adam": True}),
            },
        },
        "scheduler": {
            "type": "WarmupCosineLR",
            "params": {
                "total_num_steps": total_steps,
                "warmup_num_steps": max(2, warmup),
                # DeepSpeed's linear warmup starts at warmup_min_ratio: with 0 the first update
                # would be wasted at lr 0; start at 1/(W+1) of the peak instead.
                "warmup_min_ratio": 1.0 / (max(2, warmup) + 1),
                "cos_min_ratio": float(t.min_lr_ratio),
                "warmup_type": "linear",
            },
        },
        "bf16": {"enabled": m.dtype == "bfloat16"},
        "fp16": {"enabled": m.dtype == "float16"},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
        "zero_allow_untested_optimizer": True,
    }
    if on_gpu and m.dtype == "bfloat16":
        # Gradients are reduced in fp32 for bf16 training: bf16 sums lose too much over many ranks.
        config["communication_data_type"] = "fp32"
    return config


def start_lr_schedule(scheduler) -> None:
    """Move DeepSpeed's WarmupCosineLR onto its first step before the first update.

    A fresh WarmupCosineLR sits at iteration -1, where it sets every learning rate to 0: the first
    optimizer step would be wasted (and, with log warmup, the second too). Stepping it to iteration 0
    gives the first update the warmup's starting rate. A resumed run loads the scheduler state
    afterwards, which replaces this.
    """
    if scheduler is not None and getattr(scheduler, "last_batch_iteration", 0) < 0:
        scheduler.step(0)
