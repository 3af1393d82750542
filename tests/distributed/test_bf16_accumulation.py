"""bf16 training accumulates ZeRO-3 gradients over the micro-steps in fp32 (2 ranks, gloo).

An fp32 run cannot show this (everything is fp32 already): this one trains the tiny model in bf16
with 2 micro-steps a step, as 8B does on GPUs, and reads the dtypes off DeepSpeed's optimizer.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from _job import run_ranks

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
pytestmark = pytest.mark.slow


def test_bf16_gradients_accumulate_in_fp32_between_optimizer_steps(tmp_path):
    data = tmp_path / "prepared"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    prep = subprocess.run([sys.executable, "-m", "llama3zh_dist.prep", "+experiment=quickstart", f"data.out_dir={data}",
                           "data.progress=false"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert prep.returncode == 0, prep.stderr[-3000:]
    code, log = run_ranks(HERE / "_bf16_accumulation_worker.py", 2, [str(tmp_path), str(data)], log=tmp_path / "ranks.log")
    assert code == 0, log[-4000:]
    for rank in range(2):
        r = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert r["gradient_accumulation_steps"] == 2 and r["param_dtype"] == "torch.bfloat16"
        assert r["accumulation_dtype"] == r["accumulation_buffer_dtype"] == "torch.float32", r
        assert r["accumulated_nonzero"], r
        assert r["reduce_dtype"] == "torch.float32"


def test_two_bf16_micro_step_gradients_sum_to_the_fp32_result_not_the_bf16_one(tmp_path):
    """Issue 20 item 5, numerically: with the trainer's bf16 DeepSpeed config, two micro-steps whose
    gradients sum differently in bf16 and fp32 leave the fp32 sum as the step's gradient."""
    import torch

    code, log = run_ranks(HERE / "_fp32_accumulation_worker.py", 2, [str(tmp_path)], log=tmp_path / "ranks.log")
    assert code == 0, log[-4000:]
    for rank in range(2):
        r = torch.load(tmp_path / f"rank{rank}.pt")
        assert r["accumulation_steps"] == 2 and r["param_dtype"] == "torch.bfloat16"
        # the two sums differ at every element (the second gradient is below half a bf16 step)
        assert (r["fp32_sum"] != r["bf16_sum"]).all()
        assert torch.equal(r["got"], r["fp32_sum"]), (
            f"rank {rank}: {int((r['got'] == r['bf16_sum']).sum())} of {r['got'].numel()} elements equal the "
            f"bf16 sum, {int((r['got'] == r['fp32_sum']).sum())} the fp32 sum")
