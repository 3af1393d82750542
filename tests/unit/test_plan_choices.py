"""The planner's throughput defaults (throughput.py, plan.checkpointing_choice): gradient reduce dtype by topology and the
fastest gradient-checkpointing granularity that fits; the plan says which and why, an explicit value
wins, and the choice reaches the generated DeepSpeed JSON and the model that trains."""

from __future__ import annotations

import pytest
import torch

from llama3zh_dist.config import load_config
from llama3zh_dist.deepspeed_config import build_deepspeed_config
from llama3zh_dist.plan import make_plan
from llama3zh_dist.plan.report import table

B8 = ["+experiment=full_sft", "data=llama3_chinese_chat", "cluster.gpu=H100-SXM"]
B70 = ["+experiment=full_sft_70b", "data=llama3_chinese_chat", "cluster.gpu=H100-SXM"]
# What every run used before the planner chose (the comparison the issue asks for).
OLD_DEFAULTS = ["deepspeed.reduce_dtype=fp32", "model.gradient_checkpointing=every_layer"]


@pytest.fixture(scope="module")
def plans():
    return {name: (make_plan(load_config(args)), make_plan(load_config([*args, *OLD_DEFAULTS])))
            for name, args in (("8b", B8), ("70b", B70))}


def test_8b_on_one_node_keeps_the_fp32_reduce_and_checkpoints_every_second_layer(plans):
    plan, old = plans["8b"]
    choices = plan["detail"]["choices"]
    assert choices["reduce_dtype"]["value"] == "fp32" and choices["reduce_dtype"]["picked"]
    assert choices["gradient_checkpointing"]["value"] == "every_second_layer"
    # "none" does not fit with the margin, every_second_layer does
    assert "none" in choices["gradient_checkpointing"]["reason"]
    assert plan["fits"] and plan["per_gpu_bytes"]["total"] <= 0.9 * plan["gpu"]["memory_bytes"]
    assert plan["per_gpu_bytes"]["activations"] > old["per_gpu_bytes"]["activations"]
    # recomputing half the layers: faster than the old default, slower than recomputing none
    assert plan["step_seconds"] < old["step_seconds"]
    assert old["step_seconds"] == pytest.approx(7.21, abs=0.01)


def test_70b_on_8_nodes_reduces_in_bf16_and_still_checkpoints_every_layer(plans):
    plan, old = plans["70b"]
    choices = plan["detail"]["choices"]
    assert choices["reduce_dtype"]["value"] == "bf16" and "8 nodes" in choices["reduce_dtype"]["reason"]
    assert choices["gradient_checkpointing"]["value"] == "every_layer"  # nothing faster fits
    assert old["step_seconds"] == pytest.approx(12.3, abs=0.05)
    assert plan["step_seconds"] < 0.75 * old["step_seconds"]


def test_8b_on_two_nodes_keeps_every_layer_because_the_step_waits_for_the_network():
    """Recomputing less only helps a compute-bound step: on 2 nodes the ZeRO-3 traffic sets the
    time, so every granularity predicts the same step and the one with the most memory left wins."""
    plan = make_plan(load_config([*B8, "cluster.nodes=2"]))
    choices = plan["detail"]["choices"]
    assert choices["reduce_dtype"]["value"] == "bf16"
    assert choices["gradient_checkpointing"]["value"] == "every_layer"
    assert "waits for ZeRO-3 traffic" in choices["gradient_checkpointing"]["reason"]
    assert plan["step_seconds"] == pytest.approx(plan["detail"]["comm_seconds"])


def test_the_plan_table_prints_each_choice_and_its_reason(plans):
    text = table(plans["8b"][0])
    assert "deepspeed.reduce_dtype=fp32  (auto: one node" in text
    assert "model.gradient_checkpointing=every_second_layer  (auto: fastest that fits" in text
    given = table(plans["8b"][1])
    assert "model.gradient_checkpointing=every_layer  (model.gradient_checkpointing given)" in given


def test_an_explicit_value_wins_and_reaches_the_deepspeed_json():
    assert build_deepspeed_config(load_config(B70), 64, gpus_per_node=8)["communication_data_type"] == "bf16"
    assert build_deepspeed_config(load_config(B8), 8, gpus_per_node=8)["communication_data_type"] == "fp32"
    # the same 8B config on two nodes: the reduce crosses InfiniBand
    assert build_deepspeed_config(load_config(B8), 16, gpus_per_node=8)["communication_data_type"] == "bf16"
    forced = load_config([*B70, "deepspeed.reduce_dtype=fp32", "model.gradient_checkpointing=none"])
    assert build_deepspeed_config(forced, 64, gpus_per_node=8)["communication_data_type"] == "fp32"
    plan = make_plan(forced)
    assert plan["detail"]["choices"]["gradient_checkpointing"] == {
        "value": "none", "reason": "model.gradient_checkpointing given", "picked": False}
    assert plan["fits"] is False  # the override is honoured even where it cannot fit


def test_auto_is_the_default_of_both_keys():
    cfg = load_config(B8)
    assert cfg.model.gradient_checkpointing == "auto" and cfg.deepspeed.reduce_dtype == "auto"


def _tiny_llama(layers: int = 4):
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    model.config.use_cache = False
    return model.train()


@pytest.mark.parametrize("granularity,recomputed", [("every_layer", [0, 1, 2, 3]), ("every_second_layer", [0, 2]),
                                                    ("none", []), (True, [0, 1, 2, 3]), (False, [])])
def test_the_model_recomputes_exactly_the_layers_the_granularity_names(granularity, recomputed):
    """Counted, not read from flags: a checkpointed layer's forward runs again in the backward."""
    from llama3zh_dist.model import enable_checkpointing

    model = _tiny_llama()
    flags = enable_checkpointing(model, granularity)
    assert flags == [i in recomputed for i in range(4)]
    calls = [0] * 4
    for i, layer in enumerate(model.model.layers):  # (module hooks do not fire in a recomputation)
        def counted(*args, _forward=layer.mlp.forward, _i=i, **kwargs):
            calls[_i] += 1
            return _forward(*args, **kwargs)
        layer.mlp.forward = counted
    out = model(input_ids=torch.randint(0, 64, (1, 16)), use_cache=False)
    assert calls == [1, 1, 1, 1]
    out.logits.float().sum().backward()
    assert [i for i, c in enumerate(calls) if c == 2] == recomputed
    assert all(c in (1, 2) for c in calls)


def test_checkpointing_does_not_change_the_gradients():
    from llama3zh_dist.model import enable_checkpointing

    ids = torch.randint(0, 64, (1, 16))
    grads = {}
    for g in ("none", "every_second_layer"):
        model = _tiny_llama()
        enable_checkpointing(model, g)
        model(input_ids=ids, use_cache=False).logits.sum().backward()
        grads[g] = [p.grad.clone() for p in model.parameters()]
    for a, b in zip(grads["none"], grads["every_second_layer"]):
        torch.testing.assert_close(a, b)


def test_build_model_resolves_auto_as_the_plan_does():
    """The ranks resolve ``auto`` with the same function and the same inputs as the plan."""
    from llama3zh_dist.flops import ModelShape
    from llama3zh_dist.plan import resolved_checkpointing
    from llama3zh_dist.plan import checkpointing_choice
    from llama3zh_dist.plan.shapes import model_shape

    cfg = load_config(B8)
    shape, _ = model_shape(cfg)
    ds = build_deepspeed_config(cfg, 8, shape, gpus_per_node=8)
    from transformers import LlamaConfig

    from llama3zh_dist.plan.shapes import KNOWN_SHAPES

    hf = LlamaConfig(**KNOWN_SHAPES[str(cfg.model.path)])
    assert ModelShape.from_config(hf) == shape
    import os

    old = os.environ.get("WORLD_SIZE")
    os.environ["WORLD_SIZE"] = "8"
    try:
        assert resolved_checkpointing(cfg, ds, hf) == "every_second_layer" == checkpointing_choice(cfg, shape, ds, 8).value
    finally:
        os.environ.pop("WORLD_SIZE") if old is None else os.environ.__setitem__("WORLD_SIZE", old)
