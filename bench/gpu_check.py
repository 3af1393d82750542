"""One GPU, one command, under 8 minutes: does the GPU path do what the CPU tests say?

    python bench/gpu_check.py [--out gpu_check.json] [--slice-layers 4] [--skip quickstart,packed,slice]

Prints one JSON object (and writes it to --out):

- ``environment``: torch / CUDA / device, and the attention used: FlashAttention-2 when the
  flash-attn package imports, else SDPA (``attention_reason`` says which and why).
- ``quickstart``: the quickstart pipeline on this GPU in bf16 on NCCL (one rank, 2 accumulation
  steps): exit code, first/last loss, the generated DeepSpeed config's precision keys, the export
  verification figures, wall time.
- ``packed``: per-token losses of packed rows (varlen boundaries from the collate) against each
  sample alone, same bf16 weights: max and mean |difference|.
- ``slice``: Llama-3-8B dimensions (hidden 4096, 32/8 heads, MLP 14336, 128,256-token vocabulary)
  with a few layers, 8192-token packed rows, gradient checkpointing, bf16, torch fused AdamW, the
  chunked-loss head: tokens/s, achieved TFLOP/s, MFU where the device's peak is known, peak memory.

Runs from the repository root. On a machine without this project's dependencies, carry them as
wheels (deepspeed is an sdist: build its wheel with ``DS_BUILD_OPS=0 pip wheel --no-deps
deepspeed==0.19.8``) and install them with ``pip install --no-index --no-deps --target``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Llama-3-8B's config.json (the shapes; tests/fixtures/llama3_8b/config.json holds the file).
LLAMA3_8B = {"vocab_size": 128256, "hidden_size": 4096, "intermediate_size": 14336, "num_attention_heads": 32,
             "num_key_value_heads": 8, "max_position_embeddings": 8192, "rope_theta": 500000.0, "rms_norm_eps": 1e-5,
             "tie_word_embeddings": False, "bos_token_id": 128000, "eos_token_id": 128001}


def attention_choice() -> tuple[str, str]:
    """(attn_implementation, why)."""
    import importlib.util

    if importlib.util.find_spec("flash_attn") is not None:
        try:
            import flash_attn  # noqa: F401

            return "flash_attention_2", "flash-attn imports"
        except Exception as e:  # installed but built for another torch/CUDA
            return "sdpa", f"flash-attn is installed but does not import ({type(e).__name__}: {e})"
    return "sdpa", "flash-attn is not installed"


def quickstart_overrides(run_dir: Path, data_dir: Path, attn: str) -> list[str]:
    """The quickstart on one GPU: bf16, NCCL, 2 accumulation steps, a few steps."""
    return ["+experiment=quickstart", f"run.dir={run_dir}", f"data.out_dir={data_dir}", "cluster.device=cuda",
            "cluster.backend=nccl", "cluster.nproc_per_node=1", "model.dtype=bfloat16",
            f"model.attn_implementation={attn}", "trainer.global_batch_size=2", "trainer.max_steps=30",
            "checkpoint.every_steps=15", "logger.mode=disabled", "trainer.progress_bar=false", "export.dtype=bfloat16"]


def synthetic_samples(lengths: list[int], vocab: int, seed: int = 0) -> list[tuple[list[int], list[int]]]:
    """(input_ids, labels) samples: the first half of each is prompt (label -100), as in chat data."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out = []
    for n in lengths:
        ids = rng.integers(0, vocab, n).tolist()
        out.append((ids, [-100] * (n // 2) + ids[n // 2:]))
    return out


def packed_batch(samples, bins: list[list[int]]):
    """Micro-batches of packed rows (the real packer and collate)."""
    import pyarrow as pa

    from llama3zh_dist.data.loader import collate
    from llama3zh_dist.data.packing import build_rows

    table = pa.table({"input_ids": [s[0] for s in samples], "labels": [s[1] for s in samples],
                      "id": [f"s{k}" for k in range(len(samples))]})
    return [collate([row]) for row in build_rows(table, bins).to_pylist()]


def packed_vs_single(model, samples, device) -> dict:
    """Per-token losses of one packed row against each sample alone (same weights)."""
    import torch

    from llama3zh_dist.model import supervised_token_losses

    with torch.no_grad():
        packed = supervised_token_losses(model, packed_batch(samples, [list(range(len(samples)))])[0], device).float()
        single = torch.cat([supervised_token_losses(model, b, device).float()
                            for b in packed_batch(samples, [[k] for k in range(len(samples))])])
    diff = (packed - single).abs()
    return {"tokens": int(diff.numel()), "max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
            "mean_loss": float(single.mean())}


def step_flops(cfg: dict, layers: int, sample_lengths: list[int], supervised: int) -> float:
    """Training FLOPs of one step by the formula the run logs as MFU (``llama3zh_dist.flops``):
    non-embedding matmuls for every token, the LM head for supervised tokens only, attention from
    the real samples' lengths (sum of l^2)."""
    from llama3zh_dist.flops import ModelShape
    from llama3zh_dist.flops import step_flops as logged_step_flops

    shape = ModelShape.from_config({**cfg, "num_hidden_layers": layers})
    return logged_step_flops(shape, sum(sample_lengths), supervised, sum(n * n for n in sample_lengths))


def run_slice(layers: int, attn: str, steps: int = 6, row_tokens: int = 8192) -> dict:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from llama3zh_dist.metrics import peak_flops_per_device
    from llama3zh_dist.model import supervised_loss_sum

    device = torch.device("cuda")
    cfg = dict(LLAMA3_8B, num_hidden_layers=layers)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM._from_config(LlamaConfig(**cfg), attn_implementation=attn, dtype=torch.bfloat16)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
    lengths = [600, 1400, 300, 2200, 900, 1700, 1092]  # one 8192-token row of chat-sized samples
    assert sum(lengths) == row_tokens
    batch = packed_batch(synthetic_samples(lengths, cfg["vocab_size"]), [list(range(len(lengths)))])[0]
    torch.cuda.reset_peak_memory_stats()
    times = []
    for step in range(steps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        loss = supervised_loss_sum(model, batch, device) / batch.supervised_tokens
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    dt = sorted(times[2:])[len(times[2:]) // 2]  # median after two warm-up steps
    flops = step_flops(cfg, layers, lengths, batch.supervised_tokens)
    peak = peak_flops_per_device("cuda")
    return {"layers": layers, "row_tokens": row_tokens, "supervised_tokens": batch.supervised_tokens,
            "step_s": dt, "tokens_per_s": row_tokens / dt, "tflops": flops / dt / 1e12,
            "mfu": flops / dt / peak if peak else None, "peak_memory_gb": torch.cuda.max_memory_allocated() / 1e9,
            "loss": float(loss), "attention": attn}


def run_quickstart(attn: str, workdir: Path, budget_s: float) -> dict:
    run_dir, data_dir = workdir / "run", workdir / "prepared"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "PYTHONPATH": str(ROOT)}
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "llama3zh_dist", *quickstart_overrides(run_dir, data_dir, attn)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=budget_s)
    out = {"exit": proc.returncode, "seconds": time.time() - t0,
           "future_warnings": (proc.stdout + proc.stderr).count("FutureWarning")}
    if proc.returncode:
        out["tail"] = (proc.stdout + proc.stderr)[-3000:]
    metrics_file = run_dir / "metrics.jsonl"
    if metrics_file.exists():
        records = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
        out.update(first_loss=records[0]["loss"], last_loss=records[-1]["loss"], steps=len(records))
    ds = run_dir / "deepspeed_config.json"
    if ds.exists():
        d = json.loads(ds.read_text())
        out["deepspeed"] = {k: d.get(k) for k in ("bf16", "data_types", "communication_data_type", "optimizer")}
    if proc.returncode == 0:  # the logits check of the export, figures included (bf16 GPU reference vs CPU)
        from llama3zh_dist.export import export_checkpoint, resolve_checkpoint
        from llama3zh_dist.llama3.hf_tokenizer import load_tokenizer

        summary = export_checkpoint(resolve_checkpoint(run_dir), workdir / "export_check", tokenizer=load_tokenizer(None),
                                    dtype="bfloat16")
        out["export_verification"] = summary.get("verification", {}).get("logits")
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="gpu_check.json")
    ap.add_argument("--slice-layers", type=int, default=4)
    ap.add_argument("--skip", default="", help="comma-separated: quickstart,packed,slice")
    args = ap.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    import torch

    attn, why = attention_choice()
    report: dict = {"environment": {"torch": torch.__version__, "cuda": torch.version.cuda,
                                    "device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
                                    "attention": attn, "attention_reason": why}}
    if not torch.cuda.is_available():
        report["error"] = "no CUDA device: this check is for a GPU machine"
    else:
        with tempfile.TemporaryDirectory() as tmp:
            if "quickstart" not in skip:
                report["quickstart"] = run_quickstart(attn, Path(tmp), budget_s=300)
        if "packed" not in skip:
            from transformers import LlamaConfig, LlamaForCausalLM

            torch.manual_seed(0)
            tiny = dict(LLAMA3_8B, hidden_size=256, intermediate_size=768, num_attention_heads=8, num_key_value_heads=2,
                        num_hidden_layers=2)
            with torch.device("cuda"):
                model = LlamaForCausalLM._from_config(LlamaConfig(**tiny), attn_implementation=attn, dtype=torch.bfloat16)
            report["packed"] = packed_vs_single(model, synthetic_samples([37, 200, 5, 511, 90], tiny["vocab_size"]),
                                                torch.device("cuda"))
            del model
        if "slice" not in skip:
            report["slice"] = run_slice(args.slice_layers, attn)
    text = json.dumps(report, indent=1, default=lambda o: None if isinstance(o, float) and math.isnan(o) else str(o))
    print(text)
    Path(args.out).write_text(text + "\n")
    return report


if __name__ == "__main__":
    main()
