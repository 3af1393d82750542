"""The DeepSpeed configuration generated for the real Llama 3 8B / 70B shapes (their config.json in
tests/fixtures), on one node and on several, and the choices that only show on GPUs."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoConfig

from llama3zh_dist.collectives import cuda_device_index
from llama3zh_dist.config import load_config
from llama3zh_dist.deepspeed_config import build_deepspeed_config, build_optimizer, layer_sizes, write_deepspeed_config

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
LLAMA3_8B = AutoConfig.from_pretrained(FIXTURES / "llama3_8b")
LLAMA3_70B = AutoConfig.from_pretrained(FIXTURES / "llama3_70b")


def _ds(experiment: str, model_config, nodes: int, *extra: str) -> dict:
    cfg = load_config([f"+experiment={experiment}", "data=sample", f"cluster.nodes={nodes}", *extra])
    return build_deepspeed_config(cfg, nodes * int(cfg.cluster.nproc_per_node), model_config)


def test_layer_sizes_are_the_real_llama3_shapes():
    # 8B: q,o 4096x4096; k,v 4096x1024 (8 KV heads of 128); gate/up/down 4096x14336; 2 norms
    assert layer_sizes(LLAMA3_8B) == {"hidden": 4096, "largest_matrix": 4096 * 14336,
                                      "layer": 2 * 4096 * 4096 + 2 * 4096 * 1024 + 3 * 4096 * 14336 + 2 * 4096}
    # 70B: q,o 8192x8192; k,v 8192x1024; gate/up/down 8192x28672
    assert layer_sizes(LLAMA3_70B)["layer"] == 2 * 8192**2 + 2 * 8192 * 1024 + 3 * 8192 * 28672 + 2 * 8192
    assert layer_sizes(LLAMA3_70B)["largest_matrix"] == 8192 * 28672


@pytest.mark.parametrize("experiment,model_config,nodes", [
    ("full_sft", LLAMA3_8B, 1), ("full_sft", LLAMA3_8B, 2), ("full_sft_70b", LLAMA3_70B, 1), ("full_sft_70b", LLAMA3_70B, 8),
])
def test_buckets_follow_the_models_own_shapes(experiment, model_config, nodes):
    z = _ds(experiment, model_config, nodes)["zero_optimization"]
    sizes = layer_sizes(model_config)
    # the prefetch bucket holds a whole decoder layer, so it is never smaller than one MLP matrix
    assert z["stage3_prefetch_bucket_size"] == sizes["layer"] > model_config.hidden_size * model_config.intermediate_size
    assert z["reduce_bucket_size"] == model_config.hidden_size * model_config.intermediate_size
    assert z["stage3_param_persistence_threshold"] == 10 * model_config.hidden_size
    assert z["stage3_max_live_parameters"] >= 2 * sizes["layer"]
    assert z["overlap_comm"] and z["stage"] == 3


def test_70b_buckets_are_not_the_8b_ones():
    z8 = _ds("full_sft", LLAMA3_8B, 1)["zero_optimization"]
    z70 = _ds("full_sft_70b", LLAMA3_70B, 8)["zero_optimization"]
    assert z70["stage3_prefetch_bucket_size"] > 3.5 * z8["stage3_prefetch_bucket_size"]
    assert z70["reduce_bucket_size"] == 4 * z8["reduce_bucket_size"]


@pytest.mark.parametrize("experiment,model_config", [("full_sft", LLAMA3_8B), ("full_sft_70b", LLAMA3_70B)])
def test_hierarchical_partitioning_is_one_node_wide_on_several_nodes_and_off_on_one(experiment, model_config):
    assert "zero_hpz_partition_size" not in _ds(experiment, model_config, 1)["zero_optimization"]
    for nodes in (2, 8):
        assert _ds(experiment, model_config, nodes)["zero_optimization"]["zero_hpz_partition_size"] == 8
    # one task per GPU under srun: the ranks of a node come from LOCAL_WORLD_SIZE, not the config
    cfg = load_config([f"+experiment={experiment}", "data=sample", "cluster.nodes=2", "cluster.nproc_per_node=8"])
    ds = build_deepspeed_config(cfg, 16, model_config, gpus_per_node=4)
    assert ds["zero_optimization"]["zero_hpz_partition_size"] == 4
    off = _ds(experiment, model_config, 2, "deepspeed.hierarchical_partitioning=false")
    assert "zero_hpz_partition_size" not in off["zero_optimization"]


def test_bf16_accumulates_gradients_in_fp32_and_reduces_in_the_chosen_dtype():
    ds = _ds("full_sft", LLAMA3_8B, 1)
    assert ds["bf16"]["enabled"] and ds["data_types"] == {"grad_accum_dtype": "fp32"}
    assert ds["communication_data_type"] == "fp32"
    assert _ds("full_sft", LLAMA3_8B, 2, "deepspeed.reduce_dtype=bf16")["communication_data_type"] == "bf16"
    # fp32 training (the quickstart) accumulates in fp32 already: nothing to set
    quick = build_deepspeed_config(load_config(["+experiment=quickstart"]), 2)
    assert "data_types" not in quick and "communication_data_type" not in quick


def test_deepspeed_reads_the_generated_config_as_meant(tmp_path):
    """DeepSpeed's own config parser (one-rank gloo group) sees fp32 accumulation and the buckets."""
    import torch.distributed as dist
    from deepspeed.runtime.config import DeepSpeedConfig

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        cfg = load_config(["+experiment=full_sft", "data=sample", "cluster.nproc_per_node=1", "trainer.global_batch_size=8"])
        parsed = DeepSpeedConfig(build_deepspeed_config(cfg, 1, LLAMA3_8B))
    finally:
        dist.destroy_process_group()
    assert parsed.grad_accum_dtype == "fp32"
    assert str(parsed.communication_data_type) == "torch.float32"
    assert parsed.zero_config.prefetch_bucket_size == layer_sizes(LLAMA3_8B)["layer"]


def test_torch_fused_adamw_on_cuda_and_deepspeed_builds_no_optimizer_extension():
    import torch

    cfg = load_config(["+experiment=full_sft", "data=sample"])
    ds = build_deepspeed_config(cfg, 8, LLAMA3_8B)
    assert "optimizer" not in ds  # DeepSpeed would pick (and JIT-compile) FusedAdam for a config optimizer
    p = torch.nn.Parameter(torch.zeros(4))
    cpu_cfg = load_config(["+experiment=quickstart"])
    opt = build_optimizer(cpu_cfg, [{"params": [p], "weight_decay": 0.0}])
    assert isinstance(opt, torch.optim.AdamW) and not opt.defaults["fused"]
    assert opt.defaults["lr"] == float(cpu_cfg.trainer.lr) and opt.defaults["betas"] == (0.9, 0.95)
    # on CUDA the same optimizer is fused (checked without a GPU: only the flag is read here)
    cuda_cfg = load_config(["+experiment=full_sft", "data=sample"])
    assert cuda_cfg.cluster.device == "cuda"
    # the user may ask for DeepSpeed's own optimizer; CPU offload needs it
    asked = load_config(["+experiment=full_sft", "data=sample", "deepspeed.optimizer=deepspeed"])
    assert build_optimizer(asked, []) is None and build_deepspeed_config(asked, 8, LLAMA3_8B)["optimizer"]["type"] == "AdamW"
    offload = load_config(["+experiment=full_sft_70b", "data=sample", "deepspeed=zero3_offload"])
    assert build_optimizer(offload, []) is None and "optimizer" in build_deepspeed_config(offload, 64, LLAMA3_70B)


def test_the_generated_config_is_written_as_json(tmp_path):
    import json

    ds = _ds("full_sft", LLAMA3_8B, 2)
    path = write_deepspeed_config(ds, tmp_path)
    assert path == tmp_path / "deepspeed_config.json" and json.loads(path.read_text()) == ds


@pytest.mark.parametrize("local_rank,visible,expected", [(0, 8, 0), (5, 8, 5), (5, 1, 0), (0, 1, 0)])
def test_a_rank_drives_its_local_gpu_or_the_only_one_it_sees(local_rank, visible, expected):
    assert cuda_device_index(local_rank, visible) == expected


def test_more_ranks_than_visible_gpus_is_refused_with_the_numbers():
    with pytest.raises(RuntimeError, match="local rank 3 but only 2 CUDA devices"):
        cuda_device_index(3, 2)
    with pytest.raises(RuntimeError, match="no CUDA device"):
        cuda_device_index(0, 0)
