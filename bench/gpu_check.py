"""One GPU, one command, under 8 minutes: does the GPU path do what the CPU tests say?

    PYTHONPATH=/tmp/site python3 bench/gpu_check.py [--out DIR] [--sections quickstart,packed,slice] [--slice-layers 4]

Runs the sections below, prints one verdict line per section and the figures, writes
``DIR/gpu_check.json`` (default ``runs/gpu_check/``), and exits 0 only when every section passes;
otherwise 1, with a line ``gpu_check: FAILED <section>: <why>`` per failing section. On a machine
without CUDA it stops at ``environment`` (exit 1, one line).

- ``environment``: torch / CUDA / device / the packages' versions, and the attention
  ``model.attn_implementation=auto`` picks (llama3zh_dist.attention: flash-attn if it imports, else
  torch's varlen kernel, else SDPA) and why. Fails without CUDA.
- ``quickstart``: the quickstart pipeline on this GPU in bf16 on NCCL (one rank, 2 accumulation
  steps, the auto attention). Passes when it exits 0 and its last loss is below ``LOSS_FALL`` x the
  first; also records the export's logits verification and the DeepSpeed precision keys.
- ``packed``: per-token losses of one packed row (the collate's varlen boundaries, the auto
  attention) against each sample alone in its own row (SDPA), same bf16 weights. Passes within
  ``PACKED_MAX_ABS`` / ``PACKED_MEAN_ABS`` nats; records how often the varlen kernel ran.
- ``slice``: Llama-3-8B dimensions (hidden 4096, 32/8 heads, MLP 14336, 128,256-token vocabulary)
  with a few layers, 8192-token packed rows, gradient checkpointing, bf16, torch fused AdamW, the
  chunked-loss head, the auto attention: tokens/s, achieved TFLOP/s, MFU (null for a GPU not in
  llama3zh_dist/gpus.py), peak memory. Passes when the steps run and the figures are finite.

``LLAMA3ZH_GPU_CHECK_FAIL=<section>`` fails that section after it ran (tests the exit path).
``--imports-only`` imports everything the sections import and exits (the bare-image test uses it);
``--device cpu --sections packed`` runs the packed section on CPU (tests the check itself).

Runs from the repository root, which it puts in front of the caller's PYTHONPATH for the ranks (the
carried wheels stay visible). On the bare GPU image, carry this project's dependencies as wheels:
bench/gpu_wheels.sh and README.md "The one-GPU check on a bare image".
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

SECTIONS = ("quickstart", "packed", "slice")
FORCE_FAIL_ENV = "LLAMA3ZH_GPU_CHECK_FAIL"
# Limits. The quickstart memorises 12 conversations: 30 steps take its loss from ~11.8 (ln 128256)
# to well under 70% of that. Packed vs alone in bf16: each layer's output is rounded to bf16 (8
# mantissa bits, a relative step of 2^-8), and the two paths sum attention in different orders, so
# per-token losses (~11 nats on random weights) may differ by a few hundredths; attention across
# samples moves them by tenths to whole nats (tests/unit/test_torch_varlen_attention.py).
LOSS_FALL = 0.7
PACKED_MAX_ABS = 0.05
PACKED_MEAN_ABS = 0.01

# Llama-3-8B's config.json (the shapes; tests/fixtures/llama3_8b/config.json holds the file).
LLAMA3_8B = {"vocab_size": 128256, "hidden_size": 4096, "intermediate_size": 14336, "num_attention_heads": 32,
             "num_key_value_heads": 8, "max_position_embeddings": 8192, "rope_theta": 500000.0, "rms_norm_eps": 1e-5,
             "tie_word_embeddings": False, "bos_token_id": 128000, "eos_token_id": 128001}


def attention_choice(device: str = "cuda") -> tuple[str, str]:
    """(attn_implementation, why): what ``model.attn_implementation=auto`` builds on ``device``."""
    from llama3zh_dist.attention import resolve

    return resolve("auto", device)


def quickstart_overrides(run_dir: Path, data_dir: Path) -> list[str]:
    """The quickstart on one GPU: bf16, NCCL, 2 accumulation steps, a few steps, the auto attention."""
    return ["+experiment=quickstart", f"run.dir={run_dir}", f"data.out_dir={data_dir}", "cluster.device=cuda",
            "cluster.backend=nccl", "cluster.nproc_per_node=1", "model.dtype=bfloat16",
            "model.attn_implementation=auto", "trainer.global_batch_size=2", "trainer.max_steps=30",
            "checkpoint.every_steps=15", "logger.mode=disabled", "trainer.progress_bar=false", "export.dtype=bfloat16"]


def child_env() -> dict:
    """The ranks' environment: the repository first, then whatever the caller had (the carried wheels)."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "PYTHONPATH": path}


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


def packed_vs_single(model, reference, samples, device) -> dict:
    """Per-token losses of one packed row through ``model`` against each sample alone in its own row
    through ``reference`` (same weights), and how many times torch's varlen kernel ran."""
    import torch
    from transformers import AttentionInterface

    from llama3zh_dist.attention import TORCH_VARLEN
    from llama3zh_dist.model import supervised_token_losses

    calls = {"varlen_kernel": 0}
    real = AttentionInterface._global_mapping.get(TORCH_VARLEN)

    def counted(module, q, *args, **kwargs):  # the registered function, counting its kernel calls
        calls["varlen_kernel"] += kwargs.get("cu_seq_lens_q") is not None and q.device.type == "cuda"
        return real(module, q, *args, **kwargs)

    if real is not None:
        AttentionInterface._global_mapping[TORCH_VARLEN] = counted
    try:
        with torch.no_grad():
            packed = supervised_token_losses(model, packed_batch(samples, [list(range(len(samples)))])[0], device).float()
            single = torch.cat([supervised_token_losses(reference, b, device).float()
                                for b in packed_batch(samples, [[k] for k in range(len(samples))])])
    finally:
        if real is not None:
            AttentionInterface._global_mapping[TORCH_VARLEN] = real
    diff = (packed - single).abs()
    return {"attention": model.config._attn_implementation, "reference": reference.config._attn_implementation,
            "varlen_kernel_calls": calls["varlen_kernel"], "tokens": int(diff.numel()),
            "max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()), "mean_loss": float(single.mean())}


def run_packed(attn: str, device_name: str) -> dict:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    device = torch.device(device_name)
    tiny = dict(LLAMA3_8B, hidden_size=256, intermediate_size=768, num_attention_heads=8, num_key_value_heads=2,
                num_hidden_layers=2)
    models = []
    for impl in (attn, "sdpa"):
        torch.manual_seed(0)
        with torch.device(device):
            models.append(LlamaForCausalLM._from_config(LlamaConfig(**tiny), attn_implementation=impl, dtype=torch.bfloat16))
    models[1].load_state_dict(models[0].state_dict())
    return packed_vs_single(models[0], models[1], synthetic_samples([37, 200, 5, 511, 90], tiny["vocab_size"]), device)


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

    from llama3zh_dist.gpus import peak_bf16_flops
    from llama3zh_dist.model import enable_activation_checkpointing, supervised_loss_sum

    device = torch.device("cuda")
    cfg = dict(LLAMA3_8B, num_hidden_layers=layers)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM._from_config(LlamaConfig(**cfg), attn_implementation=attn, dtype=torch.bfloat16)
    enable_activation_checkpointing(model)
    model.config.use_cache = False
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
    lengths = [600, 1400, 300, 2200, 900, 1700, 1092]  # one 8192-token row of chat-sized samples
    assert sum(lengths) == row_tokens
    batch = packed_batch(synthetic_samples(lengths, cfg["vocab_size"]), [list(range(len(lengths)))])[0]
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
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
    peak = peak_bf16_flops("cuda")
    return {"layers": layers, "row_tokens": row_tokens, "supervised_tokens": batch.supervised_tokens,
            "step_s": dt, "tokens_per_s": row_tokens / dt, "tflops": flops / dt / 1e12,
            "mfu": flops / dt / peak if peak else None, "peak_memory_gb": torch.cuda.max_memory_allocated() / 1e9,
            "loss": float(loss), "attention": attn}


def run_quickstart(workdir: Path, budget_s: float) -> dict:
    run_dir, data_dir = workdir / "run", workdir / "prepared"
    t0 = time.time()
    try:
        proc = subprocess.run([sys.executable, "-m", "llama3zh_dist", *quickstart_overrides(run_dir, data_dir)],
                              cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=budget_s)
        code, text = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as e:
        code, text = None, f"timed out after {budget_s:.0f} s\n{e.stdout or ''}{e.stderr or ''}"
    out = {"exit": code, "seconds": time.time() - t0, "future_warnings": text.count("FutureWarning"),
           "attention": next((ln.split("attention: ", 1)[1] for ln in text.splitlines() if "parameters, ZeRO-3" in ln
                              and "attention: " in ln), None)}
    if code != 0:
        out["tail"] = text[-3000:]
    metrics_file = run_dir / "metrics.jsonl"
    if metrics_file.exists():
        records = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
        if records:
            out.update(first_loss=records[0]["loss"], last_loss=records[-1]["loss"], steps=len(records))
    ds = run_dir / "deepspeed_config.json"
    if ds.exists():
        d = json.loads(ds.read_text())
        out["deepspeed"] = {k: d.get(k) for k in ("bf16", "data_types", "communication_data_type", "optimizer")}
    if code == 0:  # the logits check of the export, figures included (bf16 GPU reference vs CPU)
        from llama3zh_dist.export import export_checkpoint, resolve_checkpoint
        from llama3zh_dist.llama3.hf_tokenizer import load_tokenizer

        summary = export_checkpoint(resolve_checkpoint(run_dir), workdir / "export_check", tokenizer=load_tokenizer(None),
                                    dtype="bfloat16")
        out["export_verification"] = summary.get("verification", {}).get("logits")
    return out


def verdict(section: str, result: dict) -> str | None:
    """None when ``result`` (a section of the report) meets its limits, else why not."""
    if section == "environment":
        if result.get("run_on") == "cuda" and not result.get("cuda_available"):
            return f"no CUDA device (torch {result.get('torch')}): this check is for a GPU machine"
        return None
    if "error" in result:
        return result["error"]
    if section == "quickstart":
        if result.get("exit") != 0:
            return f"exit {result.get('exit')} (the run's last lines are in the report's quickstart.tail)"
        first, last = result.get("first_loss"), result.get("last_loss")
        if first is None or last is None:
            return "no loss in metrics.jsonl"
        if not last < LOSS_FALL * first:
            return f"loss {first:.3f} -> {last:.3f} did not fall below {LOSS_FALL} x the first"
        return None
    if section == "packed":
        if not (result["max_abs_diff"] <= PACKED_MAX_ABS and result["mean_abs_diff"] <= PACKED_MEAN_ABS):
            return (f"packed vs one-sample-per-row per-token losses differ by max {result['max_abs_diff']:.4f} / mean "
                    f"{result['mean_abs_diff']:.4f} nats (bf16 limits {PACKED_MAX_ABS} / {PACKED_MEAN_ABS})")
        if result["attention"] == "torch_varlen" and result.get("device") == "cuda" and not result["varlen_kernel_calls"]:
            return "torch_varlen was chosen but its kernel never ran"
        return None
    if section == "slice":
        figures = [result.get(k) for k in ("tokens_per_s", "tflops", "peak_memory_gb", "loss")]
        if not all(isinstance(x, float) and math.isfinite(x) and x > 0 for x in figures):
            return f"figures not finite: {dict(zip(('tokens_per_s', 'tflops', 'peak_memory_gb', 'loss'), figures))}"
        return None
    raise ValueError(section)


def summary_line(section: str, result: dict) -> str:
    if section == "environment":
        return (f"{result.get('device')} | torch {result.get('torch')} CUDA {result.get('cuda')} | attention "
                f"{result.get('attention')} ({result.get('attention_reason')})")
    if section == "quickstart":
        return (f"exit {result.get('exit')}, attention {result.get('attention')}, loss {result.get('first_loss')} -> {result.get('last_loss')} in "
                f"{result.get('steps')} steps, {result.get('seconds', 0):.0f} s, export logits {result.get('export_verification')}")
    if section == "packed":
        return (f"{result.get('attention')} vs {result.get('reference')} alone: max |d| {result.get('max_abs_diff', 0):.4f}, "
                f"mean {result.get('mean_abs_diff', 0):.5f} nats over {result.get('tokens')} tokens; varlen kernel "
                f"calls {result.get('varlen_kernel_calls')}")
    mfu = result.get("mfu")
    return (f"{result.get('layers')} layers x 8B shapes, {result.get('attention')}: {result.get('tokens_per_s', 0):,.0f} tok/s, "
            f"{result.get('tflops', 0):.0f} TFLOP/s, MFU {'n/a (GPU not in gpus.py)' if mfu is None else f'{mfu:.1%}'}, "
            f"peak memory {result.get('peak_memory_gb', 0):.1f} GB")


def import_everything() -> dict:
    """Import what the sections, the quickstart's ranks and the export import; their versions."""
    import importlib

    versions = {}
    for name in ("torch", "transformers", "huggingface_hub", "tokenizers", "deepspeed", "hydra", "omegaconf", "pydantic",
                 "llama_models", "datasketch", "opencc", "safetensors", "pyarrow", "numpy", "accelerate"):
        versions[name] = getattr(importlib.import_module(name), "__version__", "?")
    for module in ("llama3zh_dist.__main__", "llama3zh_dist.train", "llama3zh_dist.export", "llama3zh_dist.data.prep",
                   "llama3zh_dist.attention", "transformers.models.llama.modeling_llama"):
        importlib.import_module(module)
    from llama3zh_dist.llama3.hf_tokenizer import load_tokenizer

    load_tokenizer(None)  # the Llama 3 tokenizer from llama-models (tiktoken BPE) without a download
    return versions


def environment(device: str) -> dict:
    import torch

    cuda = torch.cuda.is_available()
    env = {"torch": torch.__version__, "cuda": torch.version.cuda, "cuda_available": cuda, "run_on": device,
           "device": torch.cuda.get_device_name() if cuda else "cpu", "python": sys.version.split()[0]}
    if cuda or device == "cpu":
        if device == "cpu":  # the registered torch_varlen function, through its CPU reference path
            from llama3zh_dist.attention import TORCH_VARLEN, resolve

            env["attention"], env["attention_reason"] = resolve(TORCH_VARLEN, "cpu")[0], "--device cpu: CPU reference path"
        else:
            env["attention"], env["attention_reason"] = attention_choice(device)
        env["versions"] = import_everything()
    return env


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "gpu_check", help="folder for gpu_check.json")
    ap.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated, of: " + ",".join(SECTIONS))
    ap.add_argument("--slice-layers", type=int, default=4)
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                    help="cpu: run the packed section on CPU (to test this script; the figures mean nothing)")
    ap.add_argument("--imports-only", action="store_true", help="import what the sections need, print versions, exit")
    args = ap.parse_args(argv)
    if args.imports_only:
        print(json.dumps(import_everything()))
        return 0
    sections = [s for s in args.sections.split(",") if s]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown or (args.device == "cpu" and set(sections) != {"packed"}):
        ap.error(f"--sections: {', '.join(unknown) or args.sections}: choose from {', '.join(SECTIONS)}"
                 + ("; on --device cpu only packed" if args.device == "cpu" else ""))
    forced = os.environ.get(FORCE_FAIL_ENV, "")
    args.out.mkdir(parents=True, exist_ok=True)
    out_file = args.out / "gpu_check.json"
    report: dict = {"environment": environment(args.device)}
    failed: dict[str, str] = {}
    attn = report["environment"].get("attention", "sdpa")
    for section in ["environment", *sections]:
        if section != "environment":
            t0 = time.time()
            try:
                if section == "quickstart":
                    with tempfile.TemporaryDirectory() as tmp:
                        report[section] = run_quickstart(Path(tmp), budget_s=300)
                elif section == "packed":
                    report[section] = dict(run_packed(attn, args.device), device=args.device)
                else:
                    report[section] = run_slice(args.slice_layers, attn)
            except Exception as e:  # a section that crashes fails; the others still run
                report[section] = {"error": f"{type(e).__name__}: {e}"}
            report[section]["section_seconds"] = round(time.time() - t0, 1)
        why = verdict(section, report[section])
        if section == forced:
            why = f"forced by {FORCE_FAIL_ENV}={forced}" + (f" (and: {why})" if why else "")
        if why:
            failed[section] = why
        report[section]["verdict"] = "FAILED: " + why if why else "passed"
        if section == "environment" and why:
            break
    report["failed"] = sorted(failed)
    out_file.write_text(json.dumps(report, indent=1, default=str) + "\n")
    if "environment" in failed:  # nothing ran: one line
        print(f"gpu_check: FAILED environment: {failed['environment']}; report: {out_file}", file=sys.stderr)
        return 1
    for section in ["environment", *sections]:
        print(f"gpu_check: {'FAILED' if section in failed else 'passed'} {section}: "
              + (failed[section] + " | " if section in failed else "") + summary_line(section, report[section]))
    print(f"gpu_check: report: {out_file}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
