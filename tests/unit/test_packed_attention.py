"""A packed row is a sequence of independent samples: no token of one sample sees another.

The probe: in a packed row [A, B] where only B is supervised, B's loss must not depend on what A
says. A plain causal mask over the row (what a packed row gets without the block-diagonal mask)
fails the same probe, so the probe does detect attention across samples.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from llama3zh_dist.config import load_config
from llama3zh_dist.data.loader import collate
from llama3zh_dist.data.packing import block_causal_mask, build_rows
from llama3zh_dist.llama3.chat_format import encode_for_training
from llama3zh_dist.model import hf_config_for_random_init, packed_attention_mask, supervised_loss_sum

CPU = torch.device("cpu")


def tiny_model(attn: str):
    """The quickstart model (conf/model/tiny.yaml sizes, real 128,256-id vocabulary), fp32."""
    from transformers import LlamaForCausalLM

    cfg = load_config(["+experiment=quickstart"])
    torch.manual_seed(0)
    return LlamaForCausalLM._from_config(hf_config_for_random_init(cfg), attn_implementation=attn, dtype=torch.float32).eval()


def conversation(user: str, assistant: str):
    return encode_for_training([{"role": "user", "content": user}, {"role": "assistant", "content": assistant}])


def packed(*samples, supervise=None):
    """One packed micro-batch of (input_ids, labels) samples, built by the real packer; samples not
    in ``supervise`` (indices) get no labels."""
    supervise = range(len(samples)) if supervise is None else supervise
    table = pa.table({
        "input_ids": [ids for ids, _ in samples],
        "labels": [lab if k in supervise else [-100] * len(lab) for k, (_, lab) in enumerate(samples)],
        "id": [f"s{k}" for k in range(len(samples))],
    })
    rows = build_rows(table, [list(range(len(samples)))])
    return collate(rows.to_pylist())


B = conversation("北京有哪些好玩的地方？", "故宫、长城、颐和园和南锣鼓巷都值得一去。")
A1 = conversation("你好，请介绍一下你自己。", "我是一个乐于助人的中文助手。")
A2 = conversation("为什么天空是蓝色的？", "蓝光波长短，被大气散射得最强，所以天空看起来是蓝色的。")


def plain_causal_loss(model, batch):
    """The same forward as the trainer's, but with a causal-only mask over the whole row."""
    t = batch.input_ids.shape[1]
    causal = torch.ones(t, t, dtype=torch.bool).tril()[None, None]
    out = model(input_ids=batch.input_ids, position_ids=batch.position_ids, attention_mask=causal,
                logits_to_keep=batch.logits_mask, use_cache=False)
    return torch.nn.functional.cross_entropy(out.logits.reshape(-1, out.logits.shape[-1]), batch.targets, reduction="sum")


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_loss_of_a_sample_in_a_packed_row_does_not_depend_on_the_other_samples(attn):
    model = tiny_model(attn)
    assert A1 != A2
    with torch.no_grad():
        with_a1 = supervised_loss_sum(model, packed(A1, B, supervise=[1]), CPU)
        with_a2 = supervised_loss_sum(model, packed(A2, B, supervise=[1]), CPU)
        alone = supervised_loss_sum(model, packed(B), CPU)
    n = packed(B).supervised_tokens  # compared per supervised token, fp32: 1e-5
    assert abs(float(with_a1) - float(alone)) / n < 1e-5
    assert abs(float(with_a2) - float(alone)) / n < 1e-5


def test_the_cross_talk_probe_fails_when_the_row_only_has_a_causal_mask():
    model = tiny_model("sdpa")
    with torch.no_grad():
        with_a1 = plain_causal_loss(model, packed(A1, B, supervise=[1]))
        with_a2 = plain_causal_loss(model, packed(A2, B, supervise=[1]))
        masked = supervised_loss_sum(model, packed(A1, B, supervise=[1]), CPU)
    # B attends to A: its loss moves with A's content and differs from the block-masked loss, by
    # far more than the 1e-5 per token the probe tolerates
    n = packed(B).supervised_tokens
    assert abs(float(with_a1) - float(with_a2)) / n > 1e-3
    assert abs(float(with_a1) - float(masked)) / n > 1e-3


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_row_loss_equals_sum_of_per_sample_losses_on_one_process(attn):
    model = tiny_model(attn)
    with torch.no_grad():
        row = supervised_loss_sum(model, packed(A1, B, A2), CPU)
        each = sum(float(supervised_loss_sum(model, packed(s), CPU)) for s in (A1, B, A2))
    n = packed(A1, B, A2).supervised_tokens
    assert abs(float(row) / n - each / n) < 1e-5


def test_packed_attention_mask_matches_the_attention_implementation():
    pos = torch.tensor([[0, 1, 2, 0, 1]])
    blocks = block_causal_mask(pos)
    expected = torch.tensor([
        [1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0],
        [0, 0, 0, 1, 0],
        [0, 0, 0, 1, 1],
    ], dtype=torch.bool)
    assert blocks.shape == (1, 1, 5, 5) and torch.equal(blocks[0, 0], expected)

    sdpa = packed_attention_mask(tiny_model("sdpa"), pos)
    assert sdpa.dtype == torch.bool and torch.equal(sdpa, blocks)

    eager = packed_attention_mask(tiny_model("eager"), pos)
    assert eager.dtype == torch.float32
    assert torch.equal(eager[0, 0] == 0, expected)
    assert (eager[0, 0][~expected] == torch.finfo(torch.float32).min).all()

    # FlashAttention takes the sample boundaries from position_ids (varlen): no 4D mask
    fa = tiny_model("sdpa")
    fa.config._attn_implementation = "flash_attention_2"
    assert packed_attention_mask(fa, pos) is None


def test_logits_are_computed_only_at_labelled_positions():
    """The vocabulary projection (128,256 ids) sees exactly the supervised positions, never the prompt."""
    model = tiny_model("sdpa")
    batch = packed(A1, B, A2, supervise=[0, 2])
    seen = []
    model.lm_head.register_forward_hook(lambda mod, args, out: seen.append(tuple(args[0].shape)))
    with torch.no_grad():
        loss = supervised_loss_sum(model, batch, CPU)
    n_labels = sum(sum(1 for x in lab if x != -100) for _, lab in (A1, A2))
    assert batch.supervised_tokens == n_labels and batch.input_ids.shape[1] > 2 * n_labels
    assert len(seen) == 1 and seen[0][-2] == n_labels, seen
    assert torch.isfinite(loss)
