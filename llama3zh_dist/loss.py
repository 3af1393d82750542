"""Cross-entropy over the vocabulary without the [n_supervised, 128256] fp32 logits.

At 4-8k supervised tokens a micro-batch, the bf16 logits and their fp32 copy and log-softmax are
5-10 GB, the largest buffer of the step. Here the output projection and the cross-entropy run
chunk by chunk: the forward keeps only each token's log-sum-exp, the backward recomputes one
chunk's logits at a time. With ``liger-kernel`` installed (the ``gpu`` extra) and the summed loss
asked for on CUDA, Liger's fused linear cross-entropy (Triton) does the same in one kernel.

The head runs *as* the model's ``lm_head`` forward (``loss_head``): ZeRO-3 gathers that module's
weight around its forward and backward exactly as for the plain projection, so partitioned
weights need nothing else.
"""

from __future__ import annotations

import contextlib
import importlib.util

import torch
import torch.nn.functional as F

CHUNK_TOKENS = 2048  # 2048 x 128256 fp32 = 1 GB of logits alive at once


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    """losses[i] = logsumexp(h_i W^T) - (h_i W^T)[t_i], computed ``chunk`` rows at a time."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk):
        losses = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        lse = torch.empty_like(losses)
        for s in range(0, hidden.shape[0], chunk):
            logits = F.linear(hidden[s:s + chunk], weight).float()
            lse[s:s + chunk] = torch.logsumexp(logits, dim=-1)
            picked = logits.gather(1, targets[s:s + chunk, None])[:, 0]
            losses[s:s + chunk] = lse[s:s + chunk] - picked
        ctx.save_for_backward(hidden, weight, targets, lse)
        ctx.chunk = chunk
        return losses

    @staticmethod
    def backward(ctx, grad_losses):
        hidden, weight, targets, lse = ctx.saved_tensors
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        # In the weight's dtype: each chunk's matmul accumulates in fp32 inside the kernel and only
        # n/chunk (a handful of) partial sums are added; an fp32 buffer would cost 2 GB at 8B.
        grad_weight = torch.zeros_like(weight) if ctx.needs_input_grad[1] else None
        for s in range(0, hidden.shape[0], ctx.chunk):
            h = hidden[s:s + ctx.chunk]
            # d loss_i / d logits_i = softmax_i - onehot(t_i), scaled by the incoming gradient
            probs = (F.linear(h, weight).float() - lse[s:s + ctx.chunk, None]).exp_()
            rows = torch.arange(h.shape[0], device=h.device)
            probs[rows, targets[s:s + ctx.chunk]] -= 1.0
            probs.mul_(grad_losses[s:s + ctx.chunk, None].float())
            if grad_hidden is not None:
                grad_hidden[s:s + ctx.chunk] = (probs.to(weight.dtype) @ weight).to(hidden.dtype)
            if grad_weight is not None:
                grad_weight.add_(probs.t().to(h.dtype) @ h)
        return grad_hidden, grad_weight, None, None


def chunked_token_losses(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         chunk: int = CHUNK_TOKENS) -> torch.Tensor:
    """fp32 cross-entropy of every row of ``hidden`` [n, H] against ``targets`` [n] under ``weight`` [V, H]."""
    return _ChunkedLinearCrossEntropy.apply(hidden, weight, targets, int(chunk))


def liger_available() -> bool:
    return importlib.util.find_spec("liger_kernel") is not None


def _liger_loss_sum(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    from liger_kernel.transformers.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyLoss

    return LigerFusedLinearCrossEntropyLoss(reduction="sum")(weight, hidden, targets)


@contextlib.contextmanager
def loss_head(model, targets: torch.Tensor, *, summed: bool = False, chunk: int = CHUNK_TOKENS):
    """Within this block ``model``'s ``lm_head`` returns token losses (or their sum) instead of logits.

    The model's forward then yields ``logits`` of shape [1, n] (per-token fp32 losses of the kept
    positions, in order) or [1, 1] (their sum, ``summed=True``).
    """
    head = model.get_output_embeddings()
    use_liger = summed and liger_available() and targets.is_cuda

    def forward(hidden: torch.Tensor) -> torch.Tensor:
        flat = hidden.reshape(-1, hidden.shape[-1])
        if use_liger:
            return _liger_loss_sum(flat, head.weight, targets).float().reshape(1, 1)
        losses = chunked_token_losses(flat, head.weight, targets, chunk)
        return losses.sum().reshape(1, 1) if summed else losses[None]

    head.forward = forward
    try:
        yield
    finally:
        del head.forward  # back to the class's Linear.forward
