"""The planner: model states equal DeepSpeed's estimator, fit decisions, the JSON contract."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llama3zh_dist.config import load_config
from llama3zh_dist.flops import ModelShape
from llama3zh_dist.plan import make_plan, memory_problem
from llama3zh_dist.plan.memory import ZeroSettings, model_states
from llama3zh_dist.plan.shapes import KNOWN_SHAPES

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"


def _meta_model_counts(name: str) -> tuple[int, int]:
    """(total, largest module) parameter counts of the real architecture, built on the meta device."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(FIXTURES / name)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    total = sum(p.numel() for p in model.parameters())
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    return total, largest


@pytest.mark.parametrize("name", ["llama3_8b", "llama3_70b"])
def test_model_states_per_gpu_equal_deepspeeds_estimator(name):
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

    shape = ModelShape.from_config(json.loads((FIXTURES / name / "config.json").read_text()))
    total, largest = _meta_model_counts(name)
    assert (shape.total_params, shape.largest_layer_params) == (total, largest)
    cfg = load_config(["+experiment=full_sft", "data=llama3_chinese_chat", "cluster.gpu=H100-SXM"])
    from llama3zh_dist.deepspeed_config import build_deepspeed_config

    for nodes in (1, 2, 8):
        world = nodes * 8
        ds = build_deepspeed_config(cfg, world)
        # bf16 training accumulates gradients in fp32 (18 bytes per parameter, DeepSpeed's figure).
        ds["data_types"] = {"grad_accum_dtype": "fp32"}
        for opt, par in ((False, False), (True, False), (True, True)):
            ds["zero_optimization"]["offload_optimizer"] = {"device": "cpu" if opt else "none"}
            ds["zero_optimization"]["offload_param"] = {"device": "cpu" if par else "none"}
            s = model_states(shape, ZeroSettings.from_ds_config(ds, "bfloat16"), world)
            ours = s["parameters"] + s["gradients_and_optimizer"] + s["largest_layer_gathered"]
            _, gpu_mem, _ = estimate_zero3_model_states_mem_needs(
                total_params=total, largest_layer_params=largest, num_gpus_per_node=8, num_nodes=nodes,
                cpu_offload=opt, cpu_offload_params=par, zero_init=True)
            assert ours == gpu_mem, (name, nodes, opt, par)


def test_known_shapes_are_the_real_config_json_values():
    for repo, name in (("meta-llama/Meta-Llama-3-8B", "llama3_8b"), ("meta-llama/Meta-Llama-3-70B", "llama3_70b")):
        real = json.loads((FIXTURES / name / "config.json").read_text())
        assert ModelShape.from_config(KNOWN_SHAPES[repo]) == ModelShape.from_config(real)


def test_70b_on_one_node_of_80gb_gpus_is_refused_with_the_breakdown_and_fixes():
    cfg = load_config(["+experiment=full_sft_70b", "data=llama3_chinese_chat", "cluster.gpu=H100-SXM", "cluster.nodes=1"])
    msg = memory_problem(cfg)
    assert msg is not None
    for term in ("model_states", "activations", "loss", "buffers", "overhead", "total", "exceeds"):
        assert term in msg
    assert "deepspeed.offload_optimizer=cpu" in msg and "cluster.nodes=" in msg


@pytest.mark.parametrize("overrides", [
    ["+experiment=full_sft", "data=llama3_chinese_chat", "cluster.gpu=H100-SXM"],
    ["+experiment=full_sft", "data=llama3_chinese_chat", "cluster.gpu=A100-80GB"],
    ["+experiment=full_sft", "data=llama3_chinese_chat", "cluster.gpu=H100-SXM", "cluster.nodes=2"],
    ["+experiment=full_sft_70b", "data=llama3_chinese_chat", "cluster.gpu=H100-SXM"],
])
def test_the_shipped_experiments_fit_their_intended_clusters(overrides):
    cfg = load_config(overrides)
    assert memory_problem(cfg) is None
    assert make_plan(cfg)["fits"] is True


def test_preflight_exits_2_before_any_rank_with_the_memory_breakdown():
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "llama3zh_dist.preflight", "+experiment=full_sft_70b",
                           "data=llama3_chinese_chat", "cluster.gpu=H100-SXM", "cluster.nodes=1"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 2
    assert "exceeds the H100-SXM" in proc.stderr and "Traceback" not in proc.stderr
    fits = subprocess.run([sys.executable, "-m", "llama3zh_dist.preflight", "+experiment=full_sft_70b",
                           "data=llama3_chinese_chat", "cluster.gpu=H100-SXM"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert "exceeds" not in fits.stderr  # other problems of this machine (no GPU) may be listed


def test_plan_json_has_the_contract_keys(capsys):
    from llama3zh_dist.plan.__main__ import main

    assert main(["+experiment=full_sft", "data=llama3_chinese_chat", "cluster.gpu=H200", "plan.format=json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["gpu"] == {"name": "H200", "memory_bytes": 143771 * 2**20}
    assert set(out["per_gpu_bytes"]) == {"model_states", "activations", "loss", "buffers", "overhead", "total"}
    for key in ("world_size", "host_bytes_per_node", "fits", "tokens_per_step", "step_seconds", "tokens_per_s",
                "hours_to_max_steps", "gpu_hours"):
        assert key in out
    assert out["per_gpu_bytes"]["total"] < out["gpu"]["memory_bytes"]
    assert out["gpu_hours"] == pytest.approx(out["hours_to_max_steps"] * 8)


def test_unknown_gpu_name_is_a_user_error_listing_the_known_ones():
    from llama3zh_dist.errors import UserError

    with pytest.raises(UserError, match="H100-SXM"):
        make_plan(load_config(["+experiment=full_sft", "data=llama3_chinese_chat", "cluster.gpu=H100"]))


def test_step_time_is_flops_at_the_assumed_mfu_or_zero3_traffic_whichever_is_longer():
    # plan.mfu is the MFU with every layer checkpointed (tests/unit/test_plan_choices.py: fewer)
    cfg = load_config(["+experiment=full_sft", "data=llama3_chinese_chat", "cluster.gpu=H100-SXM",
                       "model.gradient_checkpointing=every_layer"])
    from llama3zh_dist.deepspeed_config import build_deepspeed_config

    plan = make_plan(cfg)
    d, n = plan["detail"], 8_030_261_248
    c = 4 if build_deepspeed_config(cfg, 8).get("communication_data_type") == "fp32" else 2  # reduce-scatter dtype
    assert d["compute_seconds"] == pytest.approx(d["flops_per_step"] / (8 * 989e12 * 0.40))
    # 8 micro-batches per GPU; each gathers bf16 weights twice and reduce-scatters the gradients,
    # 7/8 of the model through every GPU's NVLink (450 GB/s at 70%).
    assert d["comm_bytes_per_gpu"] == pytest.approx(8 * (2 + 2 + c) * n * 7 / 8)
    assert d["comm_seconds"] == pytest.approx(d["comm_bytes_per_gpu"] / (450e9 * 0.7))
    assert plan["step_seconds"] == pytest.approx(max(d["compute_seconds"], d["comm_seconds"]))
    # Two nodes: the traffic crosses InfiniBand (50 GB/s at 70%), except the backward all-gather,
    # which hierarchical partitioning (zero_hpz_partition_size) keeps inside the node.
    cfg2 = load_config(["+experiment=full_sft", "data=llama3_chinese_chat", "cluster.gpu=H100-SXM", "cluster.nodes=2"])
    two = make_plan(cfg2)["detail"]
    share, ib, nvlink = 15 / 16, 50e9 * 0.7, 450e9 * 0.7
    c = 4 if build_deepspeed_config(cfg2, 16, gpus_per_node=8).get("communication_data_type") == "fp32" else 2
    if int(build_deepspeed_config(cfg2, 16)["zero_optimization"].get("zero_hpz_partition_size", 1) or 1) > 1:
        per_micro = (2 + c) * n * share / ib + 2 * n * share * 7 / 8 / nvlink
    else:
        per_micro = (2 + 2 + c) * n * share / ib
    assert two["comm_seconds"] == pytest.approx(4 * per_micro)
