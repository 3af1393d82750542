"""The export's logits check accepts a correct export whatever dtype produced the reference and
still refuses an export with a wrong tensor."""

from __future__ import annotations

import copy

import pytest
import torch

from llama3zh_dist.export.logits_check import LIMITS, governing_dtype, judge_logits


def _model(attn: str = "sdpa"):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=2000, hidden_size=128, intermediate_size=384, num_hidden_layers=6,
                      num_attention_heads=4, num_key_value_heads=2, initializer_range=0.08)
    return LlamaForCausalLM._from_config(cfg, attn_implementation=attn, dtype=torch.float32).eval()


PROMPTS = [torch.randint(0, 2000, (1, n), generator=torch.Generator().manual_seed(n)) for n in (23, 40, 9)]


@torch.no_grad()
def _logits(model, dtype=torch.float32) -> list[torch.Tensor]:
    m = copy.deepcopy(model).to(dtype)
    return [m(input_ids=ids).logits[0].float() for ids in PROMPTS]


def test_a_correct_bf16_export_of_a_model_passes_against_an_fp32_reference():
    model = _model("sdpa")
    reference = _logits(model)
    eager = _model("eager")
    eager.load_state_dict(model.state_dict())
    verdict = judge_logits(_logits(eager, torch.bfloat16), reference, governing_dtype(torch.bfloat16, torch.float32))
    assert verdict["failures"] == [], verdict
    # the same export checked with fp32 limits shows the bf16 rounding is really there
    assert judge_logits(_logits(eager, torch.bfloat16), reference, torch.float32)["failures"]


def test_a_correct_fp32_export_passes_the_strict_fp32_limits():
    model = _model("sdpa")
    eager = _model("eager")
    eager.load_state_dict(model.state_dict())
    verdict = judge_logits(_logits(eager), _logits(model), torch.float32)
    assert verdict["failures"] == [] and verdict["argmax_agreement"] == 1.0 and verdict["decisive_positions"] > 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_an_export_with_one_wrong_tensor_is_refused_with_the_reasons(dtype):
    model = _model()
    reference = _logits(model)
    wrong = copy.deepcopy(model)
    with torch.no_grad():  # layer 3's MLP output projection written from layer 2's
        wrong.model.layers[3].mlp.down_proj.weight.copy_(model.model.layers[2].mlp.down_proj.weight)
    verdict = judge_logits(_logits(wrong, dtype), reference, governing_dtype(dtype, torch.bfloat16))
    assert verdict["failures"], verdict
    assert any("mean |difference|" in f for f in verdict["failures"])


def test_the_less_precise_dtype_governs():
    assert governing_dtype(torch.float32, torch.bfloat16) is torch.bfloat16
    assert governing_dtype(torch.float32, None) is torch.float32
    assert governing_dtype(torch.float16, torch.float32) is torch.float16
    assert LIMITS[torch.bfloat16]["mean_rel_diff"] > LIMITS[torch.float16]["mean_rel_diff"] > LIMITS[torch.float32]["mean_rel_diff"]
