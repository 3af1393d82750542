"""bench/gpu_check.py: the parts that do not need a GPU."""

from __future__ import annotations

import json
import os
import subprocess
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


def test_attention_is_what_auto_builds_on_cuda_and_says_why():
    from llama3zh_dist.attention import flash_attn_problem

    attn, why = gpu_check.attention_choice("cuda")
    if flash_attn_problem() is None:
        assert attn == "flash_attention_2"
    else:  # no flash-attn (this machine, the bare GPU image): torch's varlen kernel, not SDPA
        assert attn == "torch_varlen" and "flash-attn is not installed" in why


def test_the_quickstart_run_is_a_bf16_nccl_config_that_passes_the_config_checks(tmp_path):
    cfg = load_config(gpu_check.quickstart_overrides(tmp_path / "run", tmp_path / "prep"))
    assert (cfg.cluster.device, cfg.cluster.backend, cfg.model.dtype) == ("cuda", "nccl", "bfloat16")
    assert cfg.model.attn_implementation == "auto"
    assert int(cfg.trainer.global_batch_size) == 2 and int(cfg.cluster.nproc_per_node) == 1  # 2 accumulation steps
    assert [p for p in problems(cfg) if not p.startswith("cluster.device=cuda but this machine has no CUDA GPU")] == []


def test_the_ranks_keep_the_callers_pythonpath_behind_the_repository(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "/tmp/site")
    assert gpu_check.child_env()["PYTHONPATH"] == f"{ROOT}{os.pathsep}/tmp/site"
    monkeypatch.delenv("PYTHONPATH")
    assert gpu_check.child_env()["PYTHONPATH"] == str(ROOT)


def test_step_flops_by_hand():
    cfg = {"hidden_size": 4, "intermediate_size": 8, "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": 10}
    # per token per layer: 2*(2*16 + 2*4*2 + 3*4*8) = 2*(32+16+96) = 288; 2 layers -> 576; 5 tokens -> 2880
    # attention (QK^T and AV, 4*d*l^2 a layer, counted in full as flops.py logs it): 2 * 4 * 4 * (3^2 + 2^2) = 416
    # LM head on the 3 supervised tokens only: 2*4*10*3 = 240; training = 3x forward
    assert gpu_check.step_flops(cfg, 2, [3, 2], 3) == 3 * (2880 + 416 + 240)


def test_packed_rows_give_the_per_sample_losses_on_cpu():
    from transformers import LlamaConfig, LlamaForCausalLM

    from llama3zh_dist.attention import TORCH_VARLEN, register

    register()
    tiny = dict(gpu_check.LLAMA3_8B, vocab_size=1000, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                num_key_value_heads=2, num_hidden_layers=2)
    models = []
    for attn in (TORCH_VARLEN, "sdpa"):
        torch.manual_seed(0)
        models.append(LlamaForCausalLM._from_config(LlamaConfig(**tiny), attn_implementation=attn, dtype=torch.float32))
    got = gpu_check.packed_vs_single(*models, gpu_check.synthetic_samples([7, 30, 4, 19], 1000), torch.device("cpu"))
    assert got["tokens"] == sum(n - n // 2 for n in (7, 30, 4, 19))  # the second half of each is supervised
    assert got["max_abs_diff"] < 1e-4 and got["mean_loss"] > 1
    assert (got["attention"], got["reference"], got["varlen_kernel_calls"]) == (TORCH_VARLEN, "sdpa", 0)  # no CUDA kernel


QUICKSTART_OK = {"exit": 0, "first_loss": 11.8, "last_loss": 4.0, "steps": 30}
PACKED_OK = {"attention": "torch_varlen", "device": "cuda", "varlen_kernel_calls": 2, "max_abs_diff": 0.01,
             "mean_abs_diff": 0.002}
SLICE_OK = {"tokens_per_s": 9000.0, "tflops": 400.0, "peak_memory_gb": 30.0, "loss": 11.9, "mfu": 0.4}


@pytest.mark.parametrize("section,result,expected", [
    ("environment", {"run_on": "cuda", "cuda_available": False, "torch": "2.13.0+cpu"}, "no CUDA device"),
    ("quickstart", dict(QUICKSTART_OK, exit=1), "exit 1"),
    ("quickstart", dict(QUICKSTART_OK, exit=None), "exit None"),  # timed out
    ("quickstart", dict(QUICKSTART_OK, last_loss=9.0), "did not fall"),
    ("quickstart", {"exit": 0}, "no loss"),
    ("packed", dict(PACKED_OK, max_abs_diff=0.3), "bf16 limits"),
    ("packed", dict(PACKED_OK, mean_abs_diff=0.02), "bf16 limits"),
    ("packed", dict(PACKED_OK, varlen_kernel_calls=0), "kernel never ran"),
    ("slice", dict(SLICE_OK, loss=float("nan")), "not finite"),
    ("slice", {"error": "OutOfMemoryError: CUDA out of memory"}, "OutOfMemoryError"),
])
def test_each_limit_fails_its_section_and_says_why(section, result, expected):
    assert expected in gpu_check.verdict(section, result)


@pytest.mark.parametrize("section,result", [("quickstart", QUICKSTART_OK), ("packed", PACKED_OK), ("slice", SLICE_OK),
                                            ("slice", dict(SLICE_OK, mfu=None)),  # a GPU not in gpus.py
                                            ("environment", {"run_on": "cuda", "cuda_available": True})])
def test_results_within_the_limits_pass(section, result):
    assert gpu_check.verdict(section, result) is None


def test_without_a_gpu_it_exits_1_with_one_line_and_writes_only_to_its_out_folder(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is here: the real check runs instead")
    before = set(ROOT.iterdir())
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--out", str(tmp_path / "out")],
                          cwd=tmp_path, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.splitlines() == [f"gpu_check: FAILED environment: no CUDA device (torch {torch.__version__}): "
                                        f"this check is for a GPU machine; report: {tmp_path / 'out' / 'gpu_check.json'}"]
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert report["failed"] == ["environment"]
    assert set(ROOT.iterdir()) == before and [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_forced_failure_exits_1_naming_the_section_and_the_same_run_passes_without_it(tmp_path, monkeypatch, capsys):
    """The packed section on CPU (torch_varlen through its CPU reference path, bf16): it passes
    on its own; forced to fail, the exit is 1 and the failing line names it."""
    args = ["--device", "cpu", "--sections", "packed", "--out", str(tmp_path)]
    assert gpu_check.main(args) == 0
    passed = capsys.readouterr().out
    assert "gpu_check: passed packed: torch_varlen vs sdpa alone" in passed
    monkeypatch.setenv(gpu_check.FORCE_FAIL_ENV, "packed")
    assert gpu_check.main(args) == 1
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split(" |")[0] for ln in lines if "FAILED" in ln] == [
        f"gpu_check: FAILED packed: forced by {gpu_check.FORCE_FAIL_ENV}=packed"]
    assert json.loads((tmp_path / "gpu_check.json").read_text())["failed"] == ["packed"]
