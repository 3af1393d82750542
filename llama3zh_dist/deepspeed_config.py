"""The DeepSpeed JSON, generated from the Hydra config: one source of truth, no hand-kept JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from .batch import gradient_accumulation_steps

DS_DTYPE = {"fp32": "fp32", "float32": "fp32", "bf16": "bf16", "bfloat16": "bf16"}


def _auto(value: Any, default: Any) -> Any:
    return default if value == "auto" else value


def model_config_of(cfg: DictConfig):
    """The model's real Hugging Face config: ``model.arch`` for fresh weights, else ``model.path``'s
    ``config.json`` (a local folder, or the Hub cache / Hub for an id)."""
    if cfg.model.init == "random":
        from .model import hf_config_for_random_init

        return hf_config_for_random_init(cfg)
    from transformers import AutoConfig

    from .errors import UserError

    try:
        return AutoConfig.from_pretrained(str(cfg.model.path), trust_remote_code=bool(cfg.model.trust_remote_code))
    except (OSError, ValueError) as e:
        from .plan.shapes import KNOWN_SHAPES, model_shape

        if str(cfg.model.path) in KNOWN_SHAPES:  # planning on a login node without the weights
            return model_shape(cfg)[0]
        raise UserError(f"model.path={cfg.model.path}: cannot read its config.json ({str(e).splitlines()[0]}); "
                        "set model.path to a local Hugging Face model folder") from None


def layer_sizes(model_config) -> dict[str, int]:
    """Element counts that set the ZeRO-3 buckets: one decoder layer, its largest matrix."""
    h = int(model_config.hidden_size)
    inter = int(model_config.intermediate_size)
    heads = int(model_config.num_attention_heads)
    kv = int(getattr(model_config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(model_config, "head_dim", None) or h // heads)
    attention = h * heads * head_dim * 2 + h * kv * head_dim * 2  # q, o + k, v
    mlp = 3 * h * inter  # gate, up, down
    return {"hidden": h, "layer": attention + mlp + 2 * h, "largest_matrix": max(h * inter, h * heads * head_dim)}


def _zero_section(cfg: DictConfig, sizes: dict[str, int], world_size: int, gpus_per_node: int) -> dict[str, Any]:
    ds, on_gpu = cfg.deepspeed, cfg.cluster.device == "cuda"
    h = sizes["hidden"]
    zero: dict[str, Any] = {
        "stage": int(ds.stage),
        "overlap_comm": bool(ds.overlap_comm) and on_gpu,
        "contiguous_gradients": bool(ds.contiguous_gradients),
        # Buckets from the model's real shapes (HF's h*h rule of thumb assumed every model is 8B
        # and left the 8B prefetch smaller than one MLP matrix): a reduce bucket holds at least
        # the largest weight matrix, the prefetch bucket one whole decoder layer so the next
        # layer's all-gather runs while this one computes.
        "reduce_bucket_size": int(_auto(ds.reduce_bucket_size, sizes["largest_matrix"])),
        "stage3_prefetch_bucket_size": int(_auto(ds.stage3_prefetch_bucket_size, sizes["layer"])),
        "stage3_param_persistence_threshold": int(_auto(ds.stage3_param_persistence_threshold, 10 * h)),
        # At least two layers live at once (the one computing and the one prefetched).
        "stage3_max_live_parameters": max(int(ds.stage3_max_live_parameters), 2 * sizes["layer"]),
        "stage3_max_reuse_distance": max(int(ds.stage3_max_reuse_distance), 2 * sizes["layer"]),
        "sub_group_size": int(ds.sub_group_size),
        # Export is our own streaming exporter; never gather 16-bit weights on rank 0 at save time.
        "stage3_gather_16bit_weights_on_model_save": False,
    }
    nodes = world_size // max(1, gpus_per_node)
    if on_gpu and nodes > 1 and world_size % gpus_per_node == 0 and ds.get("hierarchical_partitioning", True):
        # ZeRO++ hpZ: a second copy of the weights partitioned inside each node, so the forward
        # and backward all-gathers stay on NVLink instead of crossing InfiniBand. Costs 2 bytes
        # per parameter / GPUs per node of extra GPU memory (70B on 8 GPUs a node: 17.5 GB).
        zero["zero_hpz_partition_size"] = int(gpus_per_node)
    if ds.offload_optimizer != "none":
        zero["offload_optimizer"] = {"device": ds.offload_optimizer, "pin_memory": on_gpu}
    if ds.offload_param != "none":
        zero["offload_param"] = {"device": ds.offload_param, "pin_memory": on_gpu}
    return zero


def uses_torch_optimizer(cfg: DictConfig) -> bool:
    """torch.optim.AdamW, built by us (fused on CUDA), unless DeepSpeed's own is asked for or needed.

    DeepSpeed's FusedAdam is a JIT-compiled extension: the first ``deepspeed.initialize`` on each
    node builds it (needs nvcc matching torch's CUDA, all ranks lock one extension cache).
    torch's fused AdamW ships compiled. With the optimizer offloaded to the CPU DeepSpeed insists
    on its own CPU Adam.
    """
    return cfg.deepspeed.get("optimizer", "torch") == "torch" and cfg.deepspeed.offload_optimizer == "none"


def build_optimizer(cfg: DictConfig, param_groups: list[dict]):
    """The client optimizer handed to ``deepspeed.initialize`` (None: DeepSpeed builds its own)."""
    if not uses_torch_optimizer(cfg):
        return None
    import torch

    t = cfg.trainer
    return torch.optim.AdamW(param_groups, lr=float(t.lr), betas=tuple(OmegaConf.to_container(t.adam_betas)),
                             eps=float(t.adam_eps), weight_decay=float(t.weight_decay),
                             fused=cfg.cluster.device == "cuda")


def _precision(cfg: DictConfig, world_size: int, gpus_per_node: int) -> dict[str, Any]:
    m = cfg.model
    out: dict[str, Any] = {"bf16": {"enabled": m.dtype == "bfloat16"}, "fp16": {"enabled": m.dtype == "float16"}}
    if m.dtype == "bfloat16":
        # Gradients accumulate over the micro-steps of a step in fp32: bf16 keeps 8 mantissa bits,
        # so adding 4-8 micro-batch gradients (and tiny late-training updates) in bf16 rounds
        # away a large part of each. (DeepSpeed's default is the model dtype.)
        out["data_types"] = {"grad_accum_dtype": "fp32"}
        # The reduce-scatter dtype is a separate choice, by topology unless given (throughput.py, plan.checkpointing_choice:
        # bf16 across nodes, fp32 inside one; the precision trade-off is stated there).
        from .throughput import reduce_dtype_choice

        out["communication_data_type"] = DS_DTYPE[reduce_dtype_choice(cfg, world_size, gpus_per_node).value]
    return out


def build_deepspeed_config(cfg: DictConfig, world_size: int, model_config=None,
                           gpus_per_node: int | None = None) -> dict[str, Any]:
    """``model_config``: the model's HF config (default: read it, see ``model_config_of``);
    ``gpus_per_node``: ranks per node (default ``cluster.nproc_per_node``)."""
    t = cfg.trainer
    sizes = layer_sizes(model_config if model_config is not None else model_config_of(cfg))
    gpus = int(gpus_per_node or cfg.cluster.nproc_per_node)
    total_steps = int(t.max_steps)
    warmup = int(round(float(t.warmup_ratio) * total_steps))
    config: dict[str, Any] = {
        "train_batch_size": int(t.global_batch_size),
        "train_micro_batch_size_per_gpu": int(t.micro_batch_size),
        "gradient_accumulation_steps": gradient_accumulation_steps(cfg, world_size),
        "gradient_clipping": float(t.grad_clip),
        "zero_optimization": _zero_section(cfg, sizes, world_size, gpus),
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
        **_precision(cfg, world_size, gpus),
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
        "zero_allow_untested_optimizer": True,
    }
    if not uses_torch_optimizer(cfg):
        config["optimizer"] = {"type": "AdamW", "params": {
            "lr": float(t.lr), "betas": list(OmegaConf.to_container(t.adam_betas)),
            "eps": float(t.adam_eps), "weight_decay": float(t.weight_decay),
            # DeepSpeed's FusedAdam needs CUDA; on CPU use torch's (CPU offload picks DeepSpeed's CPU Adam).
            **({} if cfg.cluster.device == "cuda" else {"torch_adam": True}),
        }}
    return config


def write_deepspeed_config(config: dict[str, Any], run_dir: Path) -> Path:
    """``run.dir/deepspeed_config.json``: exactly what the run handed to DeepSpeed."""
    from .fileio import atomic_write_text

    path = Path(run_dir) / "deepspeed_config.json"
    atomic_write_text(path, json.dumps(config, indent=2, sort_keys=True) + "\n")
    return path


def start_lr_schedule(scheduler) -> None:
    """Move DeepSpeed's WarmupCosineLR onto its first step before the first update.

    A fresh WarmupCosineLR sits at iteration -1, where it sets every learning rate to 0: the first
    optimizer step would be wasted (and, with log warmup, the second too). Stepping it to iteration 0
    gives the first update the warmup's starting rate. A resumed run loads the scheduler state
    afterwards, which replaces this.
    """
    if scheduler is not None and getattr(scheduler, "last_batch_iteration", 0) < 0:
        scheduler.step(0)
