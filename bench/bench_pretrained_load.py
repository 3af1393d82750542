"""Rank 0's host memory while a pretrained checkpoint loads into ZeRO-3 partitions (2 CPU ranks, gloo),
against the checkpoint size (the baseline a full host copy would cost), at two model sizes.

    python bench/bench_pretrained_load.py [--hidden 256 768] [--layers 4]

Writes Llama-3-vocabulary checkpoints with save_pretrained (fp32) and loads each with
``build_model`` (the trainer's function) and transformers' ZeRO-3 loading; prints per size: the
checkpoint, rank 0's peak anonymous memory growth during the load, and the ratio. Memory-mapped
file pages (page cache) are not counted: the node gives them back under pressure.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _rank(folder: str) -> None:
    import deepspeed
    import torch

    import llama3zh_dist.pretrained as pretrained
    from llama3zh_dist.config import load_config
    from llama3zh_dist.deepspeed_config import build_deepspeed_config
    from llama3zh_dist.model import build_model

    deepspeed.init_distributed(dist_backend="gloo")
    cfg = load_config(["+experiment=quickstart", "model.init=pretrained", f"model.path={folder}"])
    import torch._dynamo  # noqa: F401  (imports are not the load)
    import transformers.models.llama.modeling_llama  # noqa: F401
    ds = build_deepspeed_config(cfg, 2)
    with pretrained.HostMemoryPeak() as host:
        model = build_model(cfg, ds)
    if int(os.environ["RANK"]) == 0:
        size = sum(f.stat().st_size for f in Path(folder).glob("*.safetensors"))
        print(json.dumps({"checkpoint_gb": size / 1e9, "rank0_peak_anon_gb": host.grew_by / 1e9,
                          "per_checkpoint_byte": host.grew_by / size,
                          "params": sum(int(p.ds_numel) for p in model.parameters())}), flush=True)
    torch.distributed.barrier()


def _launch(folder: Path) -> dict:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for r in range(2):
        env = {**os.environ, "RANK": str(r), "WORLD_SIZE": "2", "LOCAL_RANK": str(r), "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu",
               "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        procs.append(subprocess.Popen([sys.executable, __file__, "--rank", str(folder)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True))
    outs = [p.communicate()[0] for p in procs]
    lines = [line for line in outs[0].splitlines() if line.startswith("{")]
    if not lines:
        raise SystemExit(f"{folder}: rank 0 printed no result (exit codes {[p.returncode for p in procs]})")
    return json.loads(lines[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hidden", type=int, nargs="+", default=[256, 768])
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--rank")
    args = ap.parse_args()
    if args.rank:
        return _rank(args.rank)
    from transformers import LlamaConfig, LlamaForCausalLM

    for hidden in args.hidden:
        with tempfile.TemporaryDirectory() as tmp:
            cfg = LlamaConfig(vocab_size=128256, hidden_size=hidden, intermediate_size=3 * hidden,
                              num_hidden_layers=args.layers, num_attention_heads=8, num_key_value_heads=2,
                              tie_word_embeddings=False)
            LlamaForCausalLM(cfg).save_pretrained(tmp)
            r = _launch(Path(tmp))
            print(f"hidden {hidden:>5}: checkpoint {r['checkpoint_gb']:.3f} GB | rank 0 peak anonymous "
                  f"+{r['rank0_peak_anon_gb']:.3f} GB | {r['per_checkpoint_byte']:.2f} x checkpoint", flush=True)


if __name__ == "__main__":
    main()
