"""bench/gpu_check.py: the parts that do not need a GPU."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
import gpu_check  # noqa: E402

from llama3zh_dist.config import load_config  # noqa: E402
from llama3zh_dist.preflight import problems  # noqa: E402


def test_the_slice_has_the_real_llama3_8b_shapes():
    real = json.loads((ROOT / "tests" / "fixtures" / "llama3_8b" / "config.json").read_text())
    for key, value in gpu_check.LLAMA3_8B.items():
        assert real[key] == value, key


def test_attention_falls_back_to_sdpa_and_says_why_without_flash_attn():
    import importlib.util

    attn, why = gpu_check.attention_choice()
    if importlib.util.find_spec("flash_attn") is None:
        assert (attn, why) == ("sdpa", "flash-attn is not installed")
    else:
        assert attn in ("flash_attention_2", "sdpa") and why


@pytest.mark.parametrize("attn", ["sdpa", "flash_attention_2"])
def test_the_quickstart_run_is_a_bf16_nccl_config_that_passes_the_config_checks(attn, tmp_path):
    cfg = load_config(gpu_check.quickstart_overrides(tmp_path / "run", tmp_path / "prep", attn))
    assert (cfg.cluster.device, cfg.cluster.backend, cfg.model.dtype) == ("cuda", "nccl", "bfloat16")
    assert int(cfg.trainer.global_batch_size) == 2 and int(cfg.cluster.nproc_per_node) == 1  # 2 accumulation steps
    hardware = ("cluster.device=cuda but this machine has no CUDA GPU", "model.attn_implementation=flash_attention_2 but")
    assert [p for p in problems(cfg) if not p.startswith(hardware)] == []


def test_step_flops_by_hand():
    cfg = {"hidden_size": 4, "intermediate_size": 8, "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": 10}
    # per token per layer: 2*(2*16 + 2*4*2 + 3*4*8) = 2*(32+16+96) = 288; 2 layers -> 576; 5 tokens -> 2880
    # attention (QK^T and AV, 4*d*l^2 a layer, counted in full as flops.py logs it): 2 * 4 * 4 * (3^2 + 2^2) = 416
    # LM head on the 3 supervised tokens only: 2*4*10*3 = 240; training = 3x forward
    assert gpu_check.step_flops(cfg, 2, [3, 2], 3) == 3 * (2880 + 416 + 240)


def test_packed_rows_give_the_per_sample_losses_on_cpu():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tiny = dict(gpu_check.LLAMA3_8B, vocab_size=1000, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                num_key_value_heads=2, num_hidden_layers=2)
    model = LlamaForCausalLM._from_config(LlamaConfig(**tiny), attn_implementation="sdpa", dtype=torch.float32)
    got = gpu_check.packed_vs_single(model, gpu_check.synthetic_samples([7, 30, 4, 19], 1000), torch.device("cpu"))
    assert got["tokens"] == sum(n - n // 2 for n in (7, 30, 4, 19))  # the second half of each is supervised
    assert got["max_abs_diff"] < 1e-4 and got["mean_loss"] > 1


def test_without_a_gpu_it_reports_so_in_json(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is here: the real check runs instead")
    report = gpu_check.main(["--out", str(tmp_path / "g.json")])
    assert report["error"].startswith("no CUDA device")
    assert json.loads((tmp_path / "g.json").read_text())["environment"]["attention"] in ("sdpa", "flash_attention_2")
