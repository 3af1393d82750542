"""Activation checkpointing is on without library noise: transformers 5.2x warns (FutureWarning,
once per rank and run) on ``gradient_checkpointing_enable``; ``model.enable_activation_checkpointing``
takes the current API and still recomputes every decoder layer in the backward pass."""

from __future__ import annotations

import warnings

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from llama3zh_dist.model import enable_activation_checkpointing


def test_checkpointing_recomputes_each_layer_and_warns_nothing():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2)
    model = LlamaForCausalLM._from_config(cfg, attn_implementation="sdpa").train()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        enable_activation_checkpointing(model)
    assert [str(w.message) for w in caught] == []
    calls = []
    model.model.layers[0].self_attn.q_proj.register_forward_hook(lambda *a: calls.append(torch.is_grad_enabled()))
    model(input_ids=torch.tensor([[1, 2, 3]]), labels=torch.tensor([[1, 2, 3]]), use_cache=False).loss.backward()
    assert len(calls) == 2  # the forward, and its recomputation in the backward
