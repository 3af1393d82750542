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
