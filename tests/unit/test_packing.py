"""Packing keeps every sample exactly once within max_seq_len, position_ids restart per sample, and
a packed row trains exactly like its samples unpacked."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from llama3zh_dist.data.packing import best_fit_decreasing, block_causal_mask, build_rows, packing_efficiency, position_ids_for


def _lengths(n, cap, seed=0):
    rng = np.random.default_rng(seed)
    return np.clip(rng.lognormal(5.5, 0.9, size=n).astype(int), 1, cap)


@pytest.mark.parametrize("cap", [64, 512, 4096])
def test_packing_keeps_every_sample_once_within_max_seq_len(cap):
    lengths = _lengths(3000, cap, seed=cap)
    bins = best_fit_decreasing(lengths, cap)
    flat = sorted(i for b in bins for i in b)
    assert flat == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= cap for b in bins)
    # a lower bound check: no two bins could be merged
    loads = sorted(sum(lengths[i] for i in b) for b in bins)
    assert len(loads) < 2 or loads[0] + loads[1] > cap


def test_best_fit_decreasing_is_deterministic_and_rejects_overlong():
    lengths = _lengths(500, 256, seed=3)
    assert best_fit_decreasing(lengths, 256) == best_fit_decreasing(lengths, 256)
    with pytest.raises(ValueError):
        best_fit_decreasing([10, 300], 256)
    assert best_fit_decreasing([], 256) == []


def test_packing_efficiency_is_high_on_chat_like_lengths():
    lengths = _lengths(20000, 4096, seed=1)
    bins = best_fit_decreasing(lengths, 4096)
    assert packing_efficiency(lengths, bins, 4096) > 0.99


def test_position_ids_restart_at_each_packed_sample():
    lens = np.array([3, 1, 4])
    assert position_ids_for(lens).tolist() == [0, 1, 2, 0, 0, 1, 2, 3]


def test_build_rows_concatenates_samples_and_restarts_positions():
    samples = pa.table(
        {
            "input_ids": pa.array([[1, 2, 3], [4, 5], [6], [7, 8, 9, 10]], pa.list_(pa.int32())),
            "labels": pa.array([[-100, 2, 3], [-100, 5], [6], [-100, -100, 9, 10]], pa.list_(pa.int32())),
            "id": ["a", "b", "c", "d"],
            "source": ["s1", "s1", "s2", "s2"],
        }
    )
    rows = build_rows(samples, [[3, 2], [0, 1]])
    out = rows.to_pylist()
    assert out[0]["input_ids"] == [7, 8, 9, 10, 6]
    assert out[0]["labels"] == [-100, -100, 9, 10, 6]
    assert out[0]["position_ids"] == [0, 1, 2, 3, 0]
    assert out[0]["sample_ids"] == ["d", "c"] and out[0]["sources"] == ["s2", "s2"]
    assert out[1]["input_ids"] == [1, 2, 3, 4, 5] and out[1]["position_ids"] == [0, 1, 2, 0, 1]
    assert rows.schema.field("input_ids").type == pa.list_(pa.int32())
    assert rows.schema.field("sample_ids").type == pa.list_(pa.string())


def test_packed_row_loss_equals_unpacked_per_sample_losses():
    """position_ids restarting per sample + the block-diagonal causal mask built from them (CPU/SDPA):
    the packed loss equals the token-weighted unpacked losses (fp32, 1e-5)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, attn_implementation="sdpa",
    )
    model = LlamaForCausalLM(cfg).float().eval()
    rng = np.random.default_rng(0)
    samples = []
    for n in (7, 12, 5):
        ids = rng.integers(0, 512, size=n).tolist()
        labels = [-100] * 3 + ids[3:]
        samples.append((ids, labels))

    def token_losses(ids, labels, pos, mask=None):
        out = model(input_ids=torch.tensor([ids]), position_ids=torch.tensor([pos]), attention_mask=mask)
        logits = out.logits[0, :-1]
        tgt = torch.tensor(labels[1:])
        return torch.nn.functional.cross_entropy(logits, tgt, ignore_index=-100, reduction="sum"), int((tgt != -100).sum())

    with torch.no_grad():
        tot, cnt = 0.0, 0
        for ids, labels in samples:
            s, c = token_losses(ids, labels, list(range(len(ids))))
            tot, cnt = tot + s, cnt + c
        unpacked = tot / cnt
        ids = [t for s in samples for t in s[0]]
        # the first label of each packed sample must not be predicted from the previous sample: the
        # pipeline guarantees it (every sample starts with BOS, whose label is -100)
        labels = [l for s in samples for l in s[1]]
        pos = position_ids_for(np.array([len(s[0]) for s in samples])).tolist()
        s, c = token_losses(ids, labels, pos, block_causal_mask(pos))
        packed = s / c
    assert c == cnt
    assert abs(float(packed) - float(unpacked)) < 1e-5
