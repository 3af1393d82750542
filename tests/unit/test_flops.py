"""MFU's FLOP count and device table: checked against a step of Llama-3-8B computed by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llama3zh_dist.data.loader import collate
from llama3zh_dist.flops import ModelShape, micro_batch_flops, sample_lengths, step_flops
from llama3zh_dist.gpus import by_name

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def shape(name: str) -> ModelShape:
    return ModelShape.from_config(json.loads((FIXTURES / name / "config.json").read_text()))


def test_an_8b_step_costs_what_the_hand_computation_says():
    # One full_sft step: 64 packed rows of 8192 tokens, each holding 16 samples of 512 tokens,
    # 200,000 supervised tokens.
    tokens, supervised, sum_sq = 64 * 8192, 200_000, 64 * 16 * 512**2
    # By hand: per layer q, o = 4096 x 4096; k, v = 4096 x (8 heads x 128); MLP 3 x 4096 x 14336.
    per_layer = 2 * 4096 * 4096 + 2 * 4096 * 1024 + 3 * 4096 * 14336
    assert per_layer == 218_103_808
    matmuls = 6 * 32 * per_layer * tokens                  # 2.196e16
    lm_head = 6 * 4096 * 128256 * supervised                # 6.304e14, supervised positions only
    attention = 12 * 32 * 4096 * sum_sq                     # 4.222e14, from the real sample lengths
    expected = matmuls + lm_head + attention
    assert expected == 23_007_664_539_697_152
    assert step_flops(shape("llama3_8b"), tokens, supervised, sum_sq) == pytest.approx(expected, rel=1e-12)
    # The previous 6N (embedding and lm_head on every token) + row-length attention overstated it ~1.39x.
    old = (6 * 8_030_261_248 + 12 * 32 * 4096 * 8192) * tokens
    assert old / expected == pytest.approx(1.3916, abs=1e-3)
    # MFU of that step taking 30 s on 8 H100 SXM.
    mfu = expected / 30.0 / (8 * by_name("NVIDIA H100 80GB HBM3").bf16_flops)
    assert mfu == pytest.approx(0.09692, abs=1e-4)


def test_parameter_counts_match_the_real_llama3_configs():
    assert shape("llama3_8b").total_params == 8_030_261_248
    assert shape("llama3_70b").total_params == 70_553_706_496
    assert shape("llama3_8b").largest_layer_params == 128256 * 4096


def test_micro_batch_flops_reads_sample_lengths_from_position_restarts():
    rows = [{"input_ids": list(range(10)), "labels": [-100] * 3 + [1] * 7,
             "position_ids": [0, 1, 2, 3, 0, 1, 2, 0, 1, 2], "sample_ids": ["a", "b", "c"]}]
    mb = collate(rows)
    assert sample_lengths(mb.position_ids) == [4, 3, 3]
    s = shape("llama3_8b")
    assert micro_batch_flops(s, [mb]) == pytest.approx(step_flops(s, 10, mb.supervised_tokens, 16 + 9 + 9))


@pytest.mark.parametrize("device_name, table_name, peak", [
    ("NVIDIA H100 80GB HBM3", "H100-SXM", 989e12),
    ("NVIDIA H100 PCIe", "H100-PCIe", 756e12),
    ("NVIDIA H100 NVL", "H100-NVL", 835e12),
    ("NVIDIA H200", "H200", 989e12),
    ("NVIDIA H200 NVL", "H200-NVL", 835e12),
    ("NVIDIA H800", "H800", 989e12),
    ("NVIDIA A100-SXM4-80GB", "A100-80GB", 312e12),
    ("NVIDIA A100-SXM4-40GB", "A100-40GB", 312e12),
    ("NVIDIA A100 80GB PCIe", "A100-80GB", 312e12),
    ("NVIDIA A800-SXM4-80GB", "A800", 312e12),
    ("NVIDIA L40S", "L40S", 362e12),
    ("NVIDIA GeForce RTX 4090", "RTX-4090", 165e12),
])
def test_device_names_map_exactly_to_their_table_entry(device_name, table_name, peak):
    gpu = by_name(device_name)
    assert gpu is not None and gpu.name == table_name and gpu.bf16_flops == peak
    assert by_name(table_name.lower()) is gpu


def test_unknown_devices_have_no_peak():
    assert by_name("NVIDIA H20") is None and by_name("NVIDIA GeForce RTX 3090") is None
