"""Which attention runs, and torch's own variable-length attention for packed rows.

flash-attn is the hardest dependency to install (no wheel for most torch/CUDA pairs, a long nvcc
build): without it, packed rows would fall back to SDPA with a [T, T] block mask, which is slower
and holds T^2 bytes. torch (>= 2.10) ships the same FlashAttention varlen kernel as
``torch.nn.attention.varlen.varlen_attn``; ``torch_varlen`` registers it with transformers'
``AttentionInterface`` and feeds it the sample boundaries (``cu_seq_lens``) the collate computes
once per micro-batch, exactly as transformers feeds flash-attn's ``flash_attn_varlen_func``.

``model.attn_implementation=auto`` (the default for the GPU models) picks, on CUDA:
flash_attention_2 when flash-attn imports, else torch_varlen when torch has it, else sdpa; on CPU sdpa.

torch's varlen kernel is CUDA-only. On other devices ``torch_varlen`` computes the same thing by
splitting the row at the same boundaries and running causal SDPA per sample (``_reference_varlen``):
that is what lets the CPU tests check the wiring (the boundaries the function receives, the
registration, the selection) and the per-token losses; the kernel itself is what bench/gpu_check.py
runs on a GPU.
"""

from __future__ import annotations

import importlib.util
import inspect
import math

import torch

TORCH_VARLEN = "torch_varlen"
VARLEN = ("flash_attention_2", TORCH_VARLEN)  # packed rows by boundaries: no [T, T] mask anywhere
_BOUNDARY_KWARGS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")


def torch_varlen_kernel():
    """``torch.nn.attention.varlen.varlen_attn``, or None where this torch has none."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn


def flash_attn_problem() -> str | None:
    """None when the flash-attn package imports; else why not, in a few words."""
    if importlib.util.find_spec("flash_attn") is None:
        return "flash-attn is not installed"
    try:
        import flash_attn  # noqa: F401
    except Exception as e:  # installed but built for another torch / CUDA
        return f"flash-attn is installed but does not import ({type(e).__name__}: {e})"
    return None


def resolve(requested: str, device: str) -> tuple[str, str]:
    """(the transformers attn_implementation to build with, why). Registers torch_varlen when chosen."""
    if requested != "auto":
        choice, why = requested, f"model.attn_implementation={requested}"
    elif device != "cuda":
        choice, why = "sdpa", "auto on CPU: SDPA with the packed rows' block mask"
    else:
        problem = flash_attn_problem()
        if problem is None:
            choice, why = "flash_attention_2", "auto: flash-attn imports"
        elif torch_varlen_kernel() is not None:
            choice, why = TORCH_VARLEN, f"auto: {problem}; torch {torch.__version__} has varlen_attn"
        else:
            choice, why = "sdpa", f"auto: {problem} and torch {torch.__version__} has no varlen_attn"
    if choice == TORCH_VARLEN:
        register()
    return choice, why


def planned_attention(requested: str, device: str) -> str:
    """The attention the memory planner counts for ``requested`` on ``device``, without importing
    anything (the planner may run on a login node): flash_attention_2 for the varlen kernels
    (torch's is the same FlashAttention kernel, same saved tensors, no [T, T] mask), which auto on
    CUDA always is unless torch is older than varlen_attn."""
    if requested == "auto":
        return "flash_attention_2" if device == "cuda" else "sdpa"
    return "flash_attention_2" if requested in VARLEN else requested


def register() -> None:
    """Make ``attn_implementation="torch_varlen"`` known to transformers (idempotent). Its mask
    function is flash attention's: no 4D mask is built, the boundaries arrive as kwargs."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask

    AttentionInterface.register(TORCH_VARLEN, torch_varlen_attention)
    AttentionMaskInterface.register(TORCH_VARLEN, flash_attention_mask)


def torch_varlen_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers' attention signature: q [B, Hq, T, D], k/v [B, Hkv, T, D] -> ([B, T, Hq, D], None).

    The micro-batch's rows are one token stream (the collate concatenates them), so the B x T tokens
    are flattened and split by ``cu_seq_lens_q`` alone.
    """
    if dropout:
        raise ValueError("torch_varlen attention has no dropout (Llama trains with attention_dropout=0)")
    if any(kwargs.get(k) is None for k in _BOUNDARY_KWARGS):
        # a forward that is not a packed row (reference logits, in-training eval, generation with a
        # KV cache): one sample per row, which transformers' SDPA path handles (causal, or the new
        # token against the whole cache); a padded batch would need the varlen boundaries instead
        if attention_mask is not None and not bool(attention_mask.all()):
            raise ValueError("torch_varlen attention got a padded batch without cu_seq_lens: "
                             "use model.attn_implementation=sdpa for padded inference")
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, None, scaling=scaling)
    b, hq, t, d = query.shape
    q, k, v = (x.transpose(1, 2).reshape(b * t, x.shape[1], d) for x in (query, key, value))
    cu, max_len = kwargs["cu_seq_lens_q"], int(kwargs["max_length_q"])
    scale = scaling if scaling is not None else 1.0 / math.sqrt(d)
    if q.device.type == "cuda":
        out = _cuda_varlen(q, k, v, cu.to(q.device, torch.int32), max_len, scale)
    else:
        out = _reference_varlen(q, k, v, cu, scale)
    return out.reshape(b, t, hq, d), None


def _cuda_varlen(q, k, v, cu, max_len: int, scale: float):
    """torch's FlashAttention varlen kernel, causal within each sample; across torch versions:
    2.10/2.11 take ``is_causal`` and no GQA or scale, later ones ``window_size=(-1, 0)``,
    ``enable_gqa`` and ``scale``."""
    kernel = torch_varlen_kernel()
    params = inspect.signature(kernel).parameters
    kwargs = {}
    if "window_size" in params:
        kwargs["window_size"] = (-1, 0)
    else:
        kwargs["is_causal"] = True
    if q.shape[1] != k.shape[1]:
        if "enable_gqa" in params:
            kwargs["enable_gqa"] = True
        else:
            k, v = (x.repeat_interleave(q.shape[1] // x.shape[1], dim=1) for x in (k, v))
    if "scale" in params:
        kwargs["scale"] = scale
    elif not math.isclose(scale, 1.0 / math.sqrt(q.shape[-1])):
        q = q * (scale * math.sqrt(q.shape[-1]))
    return kernel(q.contiguous(), k.contiguous(), v.contiguous(), cu, cu, max_len, max_len, **kwargs)


def _reference_varlen(q, k, v, cu, scale: float):
    """What the kernel computes, in plain SDPA: each sample [a, b) attends causally to itself only.
    Not a fast path: it exists so that the same registered function runs off CUDA (the CPU tests)."""
    bounds = cu.tolist()
    parts = [torch.nn.functional.scaled_dot_product_attention(
        q[a:b].transpose(0, 1), k[a:b].transpose(0, 1), v[a:b].transpose(0, 1), is_causal=True, scale=scale,
        enable_gqa=q.shape[1] != k.shape[1]).transpose(0, 1) for a, b in zip(bounds[:-1], bounds[1:])]
    return torch.cat(parts, dim=0)
