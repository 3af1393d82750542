"""The planner's activation and loss formulas against memory measured on this machine.

Measured with torch's MemTracker (every tensor allocated during the forward and backward, bf16,
the real Hugging Face Llama layer, SDPA with the packed-row mask as training runs it): the peak of
activations plus backward temporaries must be within 20% of the formula.
"""

from __future__ import annotations

import pytest
import torch

from llama3zh_dist.flops import ModelShape
from llama3zh_dist.loss import CHUNK_TOKENS
from llama3zh_dist.plan.memory import activations, loss_buffer

SIZES = {
    "small": dict(vocab_size=512, hidden_size=128, intermediate_size=384, num_hidden_layers=4,
                  num_attention_heads=4, num_key_value_heads=2),
    "medium": dict(vocab_size=512, hidden_size=256, intermediate_size=704, num_hidden_layers=3,
                   num_attention_heads=8, num_key_value_heads=2),
}
SAMPLE = 128  # tokens per packed sample


def _model(arch: dict, checkpointing: bool):
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    config = LlamaConfig(**arch)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", dtype=torch.bfloat16)
    model.config.use_cache = False
    from llama3zh_dist.model import enable_checkpointing

    enable_checkpointing(model, checkpointing)  # True / False / "every_second_layer", as training does
    return model.train(), ModelShape.from_config(config)


def _checkpointed(checkpointing, shape) -> int | bool:
    from llama3zh_dist.plan.choices import checkpointed_layers

    return checkpointing if isinstance(checkpointing, bool) else checkpointed_layers(checkpointing, shape.num_hidden_layers)


def _measured_peak(model, step) -> int:
    """Peak bytes of activations + backward temporaries (parameters and gradients excluded)."""
    from torch.distributed._tools.mem_tracker import MemTracker, _MemRefType

    tracker = MemTracker()
    tracker.track_external(model)
    with tracker:
        step()
    peak = tracker.get_tracker_snapshot("peak")[torch.device("cpu")]
    return peak[_MemRefType.ACT] + peak[_MemRefType.TEMP]


@pytest.mark.parametrize("checkpointing", [False, True, "every_second_layer"])
@pytest.mark.parametrize("tokens", [512, 1024])
@pytest.mark.parametrize("size", list(SIZES))
def test_layer_activations_within_20_percent_of_measured(size, tokens, checkpointing):
    from llama3zh_dist.model import packed_attention_mask

    model, shape = _model(SIZES[size], checkpointing)
    ids = torch.randint(0, 512, (1, tokens))
    pos = (torch.arange(tokens) % SAMPLE)[None]
    mask = packed_attention_mask(model, pos)

    def step():
        hidden = model.model(input_ids=ids, position_ids=pos, attention_mask=mask, use_cache=False).last_hidden_state
        hidden.backward(torch.ones_like(hidden))

    measured = _measured_peak(model, step)
    predicted = activations(shape, tokens, 2, "sdpa", _checkpointed(checkpointing, shape))["peak"]
    assert abs(predicted / measured - 1) < 0.2, (predicted, measured)


@pytest.mark.parametrize("checkpointing", [False, True, "every_second_layer"])
def test_step_peak_with_the_supervised_loss_within_20_percent_of_measured(checkpointing):
    from llama3zh_dist.data.loader import collate
    from llama3zh_dist.model import supervised_token_losses

    arch = {**SIZES["small"], "vocab_size": 4096}  # a vocabulary large enough for the loss to matter
    model, shape = _model(arch, checkpointing)
    tokens = 1024
    rows = [{"input_ids": torch.randint(0, 4096, (tokens,)).tolist(),
             "labels": [-100 if i % SAMPLE < SAMPLE // 2 else 7 for i in range(tokens)],
             "position_ids": [i % SAMPLE for i in range(tokens)],
             "sample_ids": [str(k) for k in range(tokens // SAMPLE)]}]
    batch = collate(rows)
    measured = _measured_peak(model, lambda: supervised_token_losses(model, batch, torch.device("cpu")).sum().backward())
    act = activations(shape, tokens, 2, "sdpa", _checkpointed(checkpointing, shape))
    # training's loss head is chunked (loss.CHUNK_TOKENS rows of logits at a time)
    predicted = max(act["at_loss"] + loss_buffer(shape, batch.supervised_tokens, 2, chunk=CHUNK_TOKENS), act["peak"])
    assert abs(predicted / measured - 1) < 0.2, (predicted, measured)
