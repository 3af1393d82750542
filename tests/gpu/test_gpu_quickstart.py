"""The quickstart on a CUDA GPU: same pipeline, bf16, NCCL, FlashAttention-2 where installed.

Skipped without a GPU. Prints tokens/s (read from metrics.jsonl) for the closing notes:

    .venv/bin/pytest -s tests/gpu
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch  # the README installs torch first: an error when missing, not a skip

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
ROOT = Path(__file__).resolve().parents[2]


def _flash_attn_installed() -> bool:
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        return False
    return True


def test_quickstart_trains_in_bf16_on_gpu_and_exports(tmp_path):
    attn = "flash_attention_2" if _flash_attn_installed() else "sdpa"
    n = torch.cuda.device_count()
    overrides = [
        "+experiment=quickstart", f"run.dir={tmp_path}/run", f"data.out_dir={tmp_path}/prepared",
        "cluster=local", f"cluster.nproc_per_node={n}", "cluster.master_port=0",
        "model.dtype=bfloat16", f"model.attn_implementation={attn}", "export.dtype=bfloat16",
        f"trainer.global_batch_size={2 * n}", "trainer.progress_bar=false",
    ]
    proc = subprocess.run([sys.executable, "-m", "llama3zh_dist", *overrides], cwd=ROOT, capture_output=True,
                          text=True, env={**os.environ, "WANDB_MODE": "offline"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["loss"] < 0.2 * records[0]["loss"]
    steady = [r["tokens_per_s"] for r in records[len(records) // 4:]]
    print(f"\nGPU quickstart ({attn}, bf16, {n} rank(s)): median tokens/s "
          f"{sorted(steady)[len(steady) // 2]:.0f}, final loss {records[-1]['loss']:.4f}")
    assert (tmp_path / "run" / "export" / "model.safetensors.index.json").exists()
