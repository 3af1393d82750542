"""Building the Llama 3 model under ZeRO-3, and the loss that only computes labelled logits."""

from __future__ import annotations

import logging

import torch
from omegaconf import DictConfig, OmegaConf

from .data.loader import MicroBatch
from .llama3.tokens import BOS_ID, END_OF_TEXT_ID, EOT_ID, PAD_ID

log = logging.getLogger(__name__)

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}



def hf_config_for_random_init(cfg: DictConfig):
    from transformers import LlamaConfig

    arch = OmegaConf.to_container(cfg.model.arch, resolve=True)
    return LlamaConfig(
        **arch,
        bos_token_id=BOS_ID,
        eos_token_id=[EOT_ID, END_OF_TEXT_ID],
        pad_token_id=PAD_ID,
    )


def build_model(cfg: DictConfig, ds_config: dict, checkpointing: str | None = None):
    """The model, partitioned over ranks as it is created (a 70B never materialises on one rank).

    With ``init=pretrained``, transformers' ZeRO-3 integration (kept alive by HfDeepSpeedConfig)
    makes ``from_pretrained`` create every parameter under ``deepspeed.zero.Init`` and scatter the
    checkpoint shards straight into the partitions. ``checkpointing``: the gradient-checkpointing
    granularity (default: ``model.gradient_checkpointing``, auto resolved by the planner).
    """
    from transformers import AutoModelForCausalLM
    from transformers.integrations import HfDeepSpeedConfig

    # Import what the model needs before zero.Init patches tensor creation: importing
    # torch._dynamo (via transformers' masking utils) inside zero.Init fails.
    import torch._dynamo  # noqa: F401
    import transformers.masking_utils  # noqa: F401
    import transformers.models.llama.modeling_llama  # noqa: F401

    from .attention import resolve

    dtype = DTYPES[cfg.model.dtype]
    attn, why = resolve(str(cfg.model.attn_implementation), str(cfg.cluster.device))
    # transformers' ZeRO-3 integration (alive while HfDeepSpeedConfig is referenced) creates every
    # parameter under deepspeed.zero.Init, for fresh weights (from_config) as for a checkpoint.
    hf_ds = HfDeepSpeedConfig(ds_config)
    if cfg.model.init == "random":
        torch.manual_seed(int(cfg.trainer.seed))
        model = AutoModelForCausalLM.from_config(hf_config_for_random_init(cfg), attn_implementation=attn, dtype=dtype)
    else:
        # transformers 5.x under ZeRO-3: every rank builds the partitioned model, rank 0 reads the
        # safetensors files and scatters them layer by layer. Measured on 2 CPU ranks
        # (bench/bench_pretrained_load.py): rank 0's anonymous memory peaks at ~1.45x the checkpoint
        # (there its ZeRO partition and gather buffers are host memory too), and handing transformers
        # a memory-mapped state dict of our own measured the same, so transformers' path is kept.
        model = AutoModelForCausalLM.from_pretrained(
            cfg.model.path,
            dtype=dtype,
            attn_implementation=attn,
            trust_remote_code=bool(cfg.model.trust_remote_code),
        )
    model.config.use_cache = False
    if checkpointing is None:  # callers resolve ``auto`` first (plan.resolved_checkpointing, as train.py does)
        checkpointing = cfg.model.gradient_checkpointing
        if str(checkpointing) == "auto":
            raise ValueError("build_model: model.gradient_checkpointing=auto must be resolved by the caller "
                             "(plan.resolved_checkpointing); the model layer does not plan")
    enable_checkpointing(model, checkpointing)
    model._llama3zh_hf_ds = hf_ds
    model._llama3zh_attention = f"{attn} ({why})"  # printed by the trainer with the model's size
    return model


def enable_checkpointing(model, granularity) -> list[bool]:
    """Gradient checkpointing of decoder layers 0, n, 2n, ... (every_layer: n = 1,
    every_second_layer: n = 2, none: off); returns which layers recompute their forward.

    transformers' ``activation_checkpointing_enable(every_n_layers=n)`` does exactly this; older
    versions only know all layers (``gradient_checkpointing_enable``), so the others are turned
    back off here."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    from .throughput import checkpoint_interval

    n = checkpoint_interval(granularity)
    if n:
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs, every_n_layers=n)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    for i, layer in enumerate(layers):
        layer.gradient_checkpointing = bool(n) and i % n == 0
    return [layer.gradient_checkpointing for layer in layers]


def enable_activation_checkpointing(model) -> None:
    """Recompute every decoder layer in the backward pass (non-reentrant torch checkpointing)."""
    enable_checkpointing(model, "every_layer")


def init_untrained_token_rows(model, *, rank: int, rel_threshold: float = 1e-3) -> list[int]:
    """Give (near) zero embedding / output rows the mean of the trained rows.

    Base Llama 3 checkpoints ship the chat special tokens (<|start_header_id|>, <|end_header_id|>,
    <|eot_id|>) with untrained, ~zero rows: fine-tuning from zero makes the first steps blow up
    or the model never learn to stop. Rows whose norm is below ``rel_threshold`` x the median row
    norm are replaced by the mean row. Returns the ids changed (same on every rank).
    """
    import deepspeed
    import torch.distributed as dist

    weights = [model.get_input_embeddings().weight]
    out = model.get_output_embeddings()
    if out is not None and out.weight is not weights[0]:
        weights.append(out.weight)
    changed: set[int] = set()
    for w in weights:
        with deepspeed.zero.GatheredParameters([w], modifier_rank=0):
            if rank == 0:
                with torch.no_grad():
                    norms = w.float().norm(dim=1)
                    dead = norms < rel_threshold * norms.median().clamp_min(1e-12)
                    if dead.any() and not dead.all():
                        mean = w[~dead].float().mean(dim=0)
                        w[dead] = mean.to(w.dtype)
                        changed.update(int(i) for i in dead.nonzero().flatten())
    result = [sorted(changed)]
    if dist.is_initialized():
        dist.broadcast_object_list(result, src=0)
    return result[0]


def packed_attention_mask(model, position_ids: torch.Tensor) -> torch.Tensor | None:
    """The attention mask that keeps the samples of a packed row apart, for ``model``'s attention.

    - ``flash_attention_*``: None. transformers runs varlen FlashAttention with the sample
      boundaries it reads from the ``position_ids`` restarts (a 4D mask would break that path).
    - ``sdpa``: the boolean block-diagonal causal mask [1, 1, T, T] (True = may attend), which
      transformers passes to SDPA as is.
    - ``eager``: the same mask in additive form (0 / dtype min), as eager attention adds it.

    transformers >= 4.54 would also derive the sdpa/eager mask from restarting position_ids when
    no mask is given, but only while ``attention_mask`` is None, and older versions do not at all:
    samples would then silently attend across the packed row. The explicit mask does not depend on
    that heuristic. Other implementations (flex) are left to transformers.
    """
    from .data.packing import block_causal_mask

    model = getattr(model, "module", model)  # the HF model inside a DeepSpeed engine
    impl = getattr(getattr(model, "config", None), "_attn_implementation", None)
    if impl == "sdpa":
        return block_causal_mask(position_ids)
    if impl == "eager":
        dtype = model.get_input_embeddings().weight.dtype
        allowed = block_causal_mask(position_ids)
        return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(~allowed, torch.finfo(dtype).min)
    return None


def varlen_attention_kwargs(model, batch: MicroBatch, device: torch.device) -> dict:
    """The sample boundaries of the packed row, for a varlen kernel (flash-attn's or torch's).

    transformers (>= 4.53) passes ``cu_seq_lens_q/k`` and ``max_length_q/k`` down to the attention
    function (``_flash_attention_forward``, or ``attention.torch_varlen_attention``), which then
    skips deriving them from ``position_ids`` in every layer. Other attention implementations take
    the block mask instead (``packed_attention_mask``).
    """
    from transformers.utils.generic import is_flash_attention_requested

    from .attention import TORCH_VARLEN

    hf = getattr(model, "module", model)
    varlen = hf.config._attn_implementation == TORCH_VARLEN or is_flash_attention_requested(config=hf.config)
    if not varlen or batch.cu_seq_lens is None:
        return {}
    cu = batch.cu_seq_lens.to(device, non_blocking=True)
    return {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": batch.max_length, "max_length_k": batch.max_length}


def supervised_loss_sum(model, batch: MicroBatch, device: torch.device) -> torch.Tensor:
    """Sum of token cross-entropies over the supervised positions of ``batch``.

    The micro-batch is one packed row; ``packed_attention_mask`` / the varlen boundaries keep its
    samples apart, so the loss equals the sum of the samples' losses computed one by one.
    """
    return _forward_losses(model, batch, device, summed=True).reshape(())


def supervised_token_losses(model, batch: MicroBatch, device: torch.device) -> torch.Tensor:
    """Cross-entropy of every supervised position of ``batch`` (fp32, in order)."""
    return _forward_losses(model, batch, device, summed=False).reshape(-1)


def _forward_losses(model, batch: MicroBatch, device: torch.device, *, summed: bool) -> torch.Tensor:
    """``logits_to_keep`` (a boolean mask) makes the model apply its head only to the hidden states
    whose next token is a label, and ``loss_head`` turns that head into the chunked cross-entropy:
    neither the prompt tokens' logits nor the full fp32 logits of the kept ones ever exist."""
    from .loss import loss_head

    position_ids = batch.position_ids.to(device)
    hf = getattr(model, "module", model)
    with loss_head(hf, batch.targets.to(device), summed=summed):
        out = model(
            input_ids=batch.input_ids.to(device),
            position_ids=position_ids,
            attention_mask=packed_attention_mask(model, position_ids),
            logits_to_keep=batch.logits_mask.to(device),
            use_cache=False,
            **varlen_attention_kwargs(model, batch, device),
        )
    return out.logits
