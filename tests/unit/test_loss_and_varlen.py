"""The chunked cross-entropy equals the plain one (fp32, 1e-6, loss and gradients), and the varlen
attention boundaries computed once per micro-batch are the packed samples' and reach attention."""

from __future__ import annotations

import inspect

import numpy as np
import pyarrow as pa
import pytest
import torch
import torch.nn.functional as F

from llama3zh_dist.data.loader import collate
from llama3zh_dist.data.packing import build_rows
from llama3zh_dist.loss import chunked_token_losses

TOL = {"rtol": 1e-6, "atol": 1e-6}


@pytest.mark.parametrize("n,chunk", [(37, 1), (37, 8), (37, 37), (37, 4096), (0, 8)])
def test_chunked_cross_entropy_equals_the_unchunked_loss_and_gradients(n, chunk):
    g = torch.Generator().manual_seed(n * 31 + chunk)
    hidden = torch.randn(n, 24, generator=g, dtype=torch.float64).float().requires_grad_()
    weight = (0.3 * torch.randn(300, 24, generator=g)).requires_grad_()
    targets = torch.randint(0, 300, (n,), generator=g)
    upstream = torch.rand(n, generator=g)  # any per-token weighting, not just a plain sum

    ref = F.cross_entropy(F.linear(hidden, weight), targets, reduction="none")
    ref_gh, ref_gw = torch.autograd.grad((ref * upstream).sum(), [hidden, weight])
    got = chunked_token_losses(hidden, weight, targets, chunk)
    gh, gw = torch.autograd.grad((got * upstream).sum(), [hidden, weight])

    assert got.dtype == torch.float32 and got.shape == (n,)
    torch.testing.assert_close(got, ref, **TOL)
    torch.testing.assert_close(gh, ref_gh, **TOL)
    torch.testing.assert_close(gw, ref_gw, **TOL)


def _tiny_llama(attn: str = "sdpa"):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    return LlamaForCausalLM._from_config(cfg, attn_implementation=attn, dtype=torch.float32)


def _packed_batch(lengths: list[int], seed: int = 0):
    rng = np.random.default_rng(seed)
    ids = [rng.integers(0, 512, n).tolist() for n in lengths]
    labels = [[-100] * (n // 2) + x[n // 2:] for x, n in zip(ids, lengths)]
    table = pa.table({"input_ids": ids, "labels": labels, "id": [f"s{k}" for k in range(len(lengths))]})
    return collate(build_rows(table, [list(range(len(lengths)))]).to_pylist())


def test_model_losses_through_the_chunked_head_equal_the_logits_path_with_gradients():
    from llama3zh_dist.model import packed_attention_mask, supervised_loss_sum, supervised_token_losses

    model = _tiny_llama()
    batch = _packed_batch([9, 14, 5, 20])
    cpu = torch.device("cpu")
    got = supervised_token_losses(model, batch, cpu)
    got_grads = torch.autograd.grad(got.sum(), list(model.parameters()))
    logits = model(input_ids=batch.input_ids, position_ids=batch.position_ids,
                   attention_mask=packed_attention_mask(model, batch.position_ids)).logits[0]
    ref = F.cross_entropy(logits[batch.logits_mask[0]], batch.targets, reduction="none")
    ref_grads = torch.autograd.grad(ref.sum(), list(model.parameters()))
    torch.testing.assert_close(got, ref, **TOL)
    for a, b in zip(got_grads, ref_grads):
        torch.testing.assert_close(a, b, **TOL)
    torch.testing.assert_close(supervised_loss_sum(model, batch, cpu), ref.sum(), **TOL)
    # the head is the model's own projection again afterwards
    assert model(input_ids=batch.input_ids).logits.shape[-1] == 512


def test_collate_computes_the_sample_boundaries_of_packed_rows_once():
    lengths = [9, 14, 5, 20]
    batch = _packed_batch(lengths)
    assert batch.cu_seq_lens.dtype == torch.int32
    assert batch.cu_seq_lens.tolist() == [0, 9, 23, 28, 48]
    assert batch.max_length == 20 and isinstance(batch.max_length, int)
    starts = (batch.position_ids[0] == 0).nonzero().flatten().tolist()
    assert batch.cu_seq_lens.tolist() == [*starts, batch.tokens]
    # two rows in one micro-batch: the boundaries run across both
    rows = [_packed_batch([4, 6]), _packed_batch([3])]
    assert [r.cu_seq_lens.tolist() for r in rows] == [[0, 4, 10], [0, 3]]


def test_the_fa2_path_of_the_installed_transformers_takes_these_kwarg_names():
    from transformers.modeling_flash_attention_utils import _flash_attention_forward

    params = inspect.signature(_flash_attention_forward).parameters
    assert {"cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k"} <= set(params)


def test_varlen_boundaries_reach_the_attention_kernel_and_give_the_block_masked_loss(monkeypatch):
    """A varlen attention (what FA2 does, in plain torch) registered with transformers receives the
    collate's boundaries through LlamaForCausalLM and reproduces the SDPA block-mask losses."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask

    import llama3zh_dist.model as model_mod

    seen: list[dict] = []

    def varlen_attention(module, q, k, v, attention_mask, scaling=None, dropout=0.0, **kwargs):
        seen.append({key: kwargs.get(key) for key in ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")})
        assert attention_mask is None
        cu = kwargs["cu_seq_lens_q"].tolist()
        out = torch.cat([F.scaled_dot_product_attention(q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], is_causal=True,
                                                        scale=scaling, enable_gqa=True)
                         for a, b in zip(cu[:-1], cu[1:])], dim=2)
        return out.transpose(1, 2).contiguous(), None

    AttentionInterface.register("varlen_probe", varlen_attention)
    AttentionMaskInterface.register("varlen_probe", flash_attention_mask)
    real = model_mod.varlen_attention_kwargs
    monkeypatch.setattr(model_mod, "varlen_attention_kwargs", lambda m, b, d: real(_AsFlash(m), b, d))

    batch = _packed_batch([9, 14, 5, 20], seed=1)
    sdpa = _tiny_llama("sdpa")
    varlen = _tiny_llama("varlen_probe")
    varlen.load_state_dict(sdpa.state_dict())
    cpu = torch.device("cpu")
    ref = model_mod.supervised_token_losses(sdpa, batch, cpu)
    got = model_mod.supervised_token_losses(varlen, batch, cpu)
    assert len(seen) == 2  # one call per layer, each with the micro-batch's boundaries
    for call in seen:
        assert call["cu_seq_lens_q"].tolist() == call["cu_seq_lens_k"].tolist() == [0, 9, 23, 28, 48]
        assert call["max_length_q"] == call["max_length_k"] == 20
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


class _AsFlash:
    """The model, reporting a flash attention implementation (the probe stands in for FA2's kernel)."""

    def __init__(self, model):
        self.config = type("C", (), {"_attn_implementation": "flash_attention_2"})()


def test_sdpa_and_eager_models_get_no_varlen_kwargs():
    from llama3zh_dist.model import varlen_attention_kwargs

    batch = _packed_batch([4, 6])
    assert varlen_attention_kwargs(_tiny_llama("sdpa"), batch, torch.device("cpu")) == {}
    kw = varlen_attention_kwargs(_AsFlash(None), batch, torch.device("cpu"))
    assert kw["cu_seq_lens_q"].tolist() == [0, 4, 10] and kw["max_length_k"] == 6
