"""Packed rows without flash-attn: torch's varlen attention, registered with transformers.

What runs here is the wiring the GPU runs: the attention function registered as ``torch_varlen``,
called by LlamaForCausalLM from the trainer's forward (``supervised_token_losses``), with the
boundaries the collate computed. torch's varlen kernel is CUDA-only, so on CPU the same function
computes each sample by causal SDPA over its slice (``attention._reference_varlen``); the kernel
itself is exercised by bench/gpu_check.py on a GPU (its ``packed`` section).
"""

from __future__ import annotations

import sys

import numpy as np
import pyarrow as pa
import pytest
import torch
from transformers import AttentionInterface, LlamaConfig, LlamaForCausalLM

from llama3zh_dist import attention
from llama3zh_dist.data.loader import collate
from llama3zh_dist.data.packing import build_rows
from llama3zh_dist.model import supervised_loss_sum, supervised_token_losses

CPU = torch.device("cpu")
LENGTHS = [9, 14, 5, 20, 11]
TOL = {"rtol": 1e-5, "atol": 1e-5}  # fp32, same weights: only summation order differs


def tiny_llama(attn: str):
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=256)
    return LlamaForCausalLM._from_config(cfg, attn_implementation=attn, dtype=torch.float32)


def samples(lengths, seed=3):
    rng = np.random.default_rng(seed)
    ids = [rng.integers(0, 512, n).tolist() for n in lengths]
    return [(x, [-100] * (n // 2) + x[n // 2:]) for x, n in zip(ids, lengths)]


def batch_of(rows):
    table = pa.table({"input_ids": [r[0] for r in rows], "labels": [r[1] for r in rows],
                      "id": [f"s{k}" for k in range(len(rows))]})
    return collate(build_rows(table, [list(range(len(rows)))]).to_pylist())


@pytest.fixture
def received(monkeypatch):
    """Every call of the registered torch_varlen function: its boundary kwargs (the real function runs)."""
    attention.register()
    calls: list[dict] = []
    real = AttentionInterface._global_mapping[attention.TORCH_VARLEN]

    def spy(module, q, k, v, mask, **kw):
        calls.append({key: kw.get(key) for key in ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")}
                     | {"mask": mask})
        return real(module, q, k, v, mask, **kw)

    monkeypatch.setitem(AttentionInterface._global_mapping, attention.TORCH_VARLEN, spy)
    return calls


def test_the_registered_function_receives_the_packed_samples_boundaries(received):
    rows = samples(LENGTHS)
    batch = batch_of(rows)
    supervised_token_losses(tiny_llama(attention.TORCH_VARLEN), batch, CPU)
    bounds = np.concatenate([[0], np.cumsum(LENGTHS)]).tolist()
    assert len(received) == 2  # one call per layer
    for call in received:
        assert call["cu_seq_lens_q"].tolist() == call["cu_seq_lens_k"].tolist() == bounds
        assert call["max_length_q"] == call["max_length_k"] == max(LENGTHS)
        assert call["mask"] is None  # no [T, T] mask is built for it


def test_per_token_losses_and_gradients_equal_one_sample_per_row_sdpa():
    rows = samples(LENGTHS)
    attention.register()
    varlen, sdpa = tiny_llama(attention.TORCH_VARLEN), tiny_llama("sdpa")
    sdpa.load_state_dict(varlen.state_dict())
    packed = supervised_token_losses(varlen, batch_of(rows), CPU)
    alone = torch.cat([supervised_token_losses(sdpa, batch_of([r]), CPU) for r in rows])
    torch.testing.assert_close(packed, alone, **TOL)
    g_packed = torch.autograd.grad(packed.sum(), list(varlen.parameters()))
    g_alone = torch.autograd.grad(alone.sum(), list(sdpa.parameters()))
    for a, b in zip(g_packed, g_alone):
        torch.testing.assert_close(a, b, **TOL)


def test_ignoring_the_boundaries_would_be_caught():
    """The comparison above detects attention across samples: the same row as one causal sequence
    (what a varlen call with cu_seq_lens [0, T] computes) gives different losses."""
    rows = samples(LENGTHS)
    model = tiny_llama("sdpa")
    batch = batch_of(rows)
    alone = torch.cat([supervised_token_losses(model, batch_of([r]), CPU) for r in rows])
    batch.position_ids = torch.arange(batch.tokens)[None]  # no restarts: one sample of T tokens
    batch.cu_seq_lens = torch.tensor([0, batch.tokens], dtype=torch.int32)
    crossing = supervised_token_losses(model, batch, CPU)
    assert (crossing - alone).abs().max() > 1e-2


def test_plain_forwards_and_generation_run_as_sdpa():
    """Reference logits, in-training eval and chat samples call the model without boundaries."""
    attention.register()
    varlen, sdpa = tiny_llama(attention.TORCH_VARLEN).eval(), tiny_llama("sdpa").eval()
    ids = torch.tensor([[5, 17, 300, 2, 9, 44]])
    with torch.no_grad():
        torch.testing.assert_close(varlen(input_ids=ids).logits, sdpa(input_ids=ids).logits, **TOL)
        kw = dict(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False, pad_token_id=0)
        assert varlen.generate(**kw).tolist() == sdpa.generate(**kw).tolist()


def test_the_trainer_loss_sum_equals_the_sum_of_the_samples_losses():
    rows = samples(LENGTHS, seed=9)
    attention.register()
    model = tiny_llama(attention.TORCH_VARLEN)
    with torch.no_grad():
        row = float(supervised_loss_sum(model, batch_of(rows), CPU))
        each = sum(float(supervised_loss_sum(model, batch_of([r]), CPU)) for r in rows)
    assert abs(row - each) / batch_of(rows).supervised_tokens < 1e-5


def test_auto_picks_flash_attn_then_torch_varlen_on_cuda_and_sdpa_on_cpu(tmp_path, monkeypatch):
    assert attention.torch_varlen_kernel() is not None  # torch 2.13 has it (so does the GPU image's 2.11)
    if attention.flash_attn_problem() is None:
        pytest.fail("flash-attn imports on this CPU machine: the fallback order below cannot be shown")
    choice, why = attention.resolve("auto", "cuda")
    assert choice == attention.TORCH_VARLEN and "flash-attn is not installed" in why
    assert attention.TORCH_VARLEN in AttentionInterface._global_mapping  # registered when chosen
    assert attention.resolve("auto", "cpu")[0] == "sdpa"
    assert attention.resolve("sdpa", "cuda") == ("sdpa", "model.attn_implementation=sdpa")
    # a flash-attn package that imports comes first
    (tmp_path / "flash_attn").mkdir()
    (tmp_path / "flash_attn" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "flash_attn", raising=False)
    assert attention.resolve("auto", "cuda") == ("flash_attention_2", "auto: flash-attn imports")
    # one that is installed but broken does not
    (tmp_path / "flash_attn" / "__init__.py").write_text("raise ImportError('undefined symbol: _ZN3c10')")
    monkeypatch.delitem(sys.modules, "flash_attn", raising=False)
    choice, why = attention.resolve("auto", "cuda")
    assert choice == attention.TORCH_VARLEN and "does not import" in why


def test_the_planner_counts_varlen_kernels_without_the_block_mask():
    assert attention.planned_attention("auto", "cuda") == "flash_attention_2"
    assert attention.planned_attention(attention.TORCH_VARLEN, "cuda") == "flash_attention_2"
    assert attention.planned_attention("auto", "cpu") == "sdpa"
    assert attention.planned_attention("eager", "cuda") == "eager"
