"""Helpers for the export tests and bench: real DeepSpeed ZeRO-3 checkpoints made by 2 CPU ranks.

``make_zero3_checkpoint(run_dir, ...)`` starts 2 ranks on gloo (torch.multiprocessing spawn), builds a
random ``LlamaForCausalLM`` under ``deepspeed.zero.Init``, runs a few AdamW steps with
``deepspeed.initialize`` (ZeRO stage 3, fp32, ``torch_adam``), saves with
``engine.save_checkpoint(run_dir/'checkpoints', tag='step_<N>', save_latest=False)`` and writes our files
the way the trainer does: ``config.json``, ``trainer_state.json``, ``rng_state_rank<r>.pt``, optionally
``reference_logits.safetensors`` (fp32 logits of the trained model) and ``tokenizer/`` (the Llama 3
tokenizer, ``--tokenizer``), then ``complete.json`` last and
``checkpoints/latest``.

Run as a script (``python tests/distributed/_export_helpers.py RUN_DIR --hidden 64 ...``) it does the same in
a fresh process tree; the tests use that so that the pytest process never imports DeepSpeed's
distributed state.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pathlib
import socket
import sys

REF_INPUT_IDS = [[1, 5, 17, 42, 99, 3, 250, 7], [11, 400, 2, 9, 33, 501, 64, 8]]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sha256(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def llama_config(vocab=1000, hidden=64, intermediate=None, layers=2, heads=4, kv_heads=2, tie=False):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=intermediate or hidden * 3,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=256,
        rope_theta=500000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=tie,
        bos_token_id=128000,
        eos_token_id=128001,
    )


def _rank_main(rank, world_size, port, args):
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size), LOCAL_WORLD_SIZE=str(world_size),
    )
    import torch

    torch.set_num_threads(1)
    import deepspeed
    from transformers import LlamaForCausalLM

    deepspeed.init_distributed(dist_backend="gloo")
    torch.manual_seed(args.seed)
    cfg = llama_config(args.vocab, args.hidden, args.intermediate, args.layers, args.heads, args.kv_heads, args.tie)
    cfg._attn_implementation = "eager"
    ds_config = {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": 3, "sub_group_size": args.sub_group_size},
        "optimizer": {"type": "AdamW", "params": {"lr": args.lr, "weight_decay": 0.0, "torch_adam": True}},
        "fp16": {"enabled": False},
        "bf16": {"enabled": False},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    with deepspeed.zero.Init(config_dict_or_path=ds_config):
        model = LlamaForCausalLM(cfg)
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=ds_config)
    g = torch.Generator().manual_seed(1234 + rank)
    seq = 16
    for _ in range(args.steps):
        ids = torch.randint(0, args.vocab, (1, seq), generator=g)
        loss = engine(input_ids=ids, labels=ids).loss
        engine.backward(loss)
        engine.step()

    run_dir = pathlib.Path(args.run_dir)
    tag = f"step_{args.steps}"
    ckpt_root = run_dir / "checkpoints"
    ckpt = ckpt_root / tag
    logits = None
    if args.reference_logits:
        engine.eval()
        with torch.no_grad():
            ids = torch.tensor(REF_INPUT_IDS, dtype=torch.int64) % args.vocab
            logits = engine(input_ids=ids).logits.float()
    engine.save_checkpoint(str(ckpt_root), tag=tag, save_latest=False)
    torch.save({"torch": torch.get_rng_state()}, ckpt / f"rng_state_rank{rank}.pt")
    torch.distributed.barrier()
    if rank == 0:
        from safetensors.torch import save_file

        engine.module.config.save_pretrained(ckpt)
        (ckpt / "trainer_state.json").write_text(json.dumps({"step": args.steps}))
        if logits is not None:
            save_file({"input_ids": ids.contiguous(), "logits": logits.contiguous()},
                      str(ckpt / "reference_logits.safetensors"))
        if args.tokenizer:  # as the trainer saves it into every checkpoint
            from llama3zh_dist.checkpoint_layout import TOKENIZER_DIR
            from llama3zh_dist.llama3.hf_tokenizer import load_tokenizer

            load_tokenizer(None).save_pretrained(ckpt / TOKENIZER_DIR)
        if not args.incomplete:
            files = {str(p.relative_to(ckpt)): _sha256(p) for p in sorted(ckpt.rglob("*")) if p.is_file()}
            (ckpt / "complete.json").write_text(json.dumps({"step": args.steps, "files": files}))
            (ckpt_root / "latest").write_text(tag)
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def build_parser():
    p = argparse.ArgumentParser()
    p.add_argument("run_dir")
    p.add_argument("--vocab", type=int, default=1000)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--intermediate", type=int, default=None)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--tie", action="store_true")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sub-group-size", type=int, default=1_000_000_000)
    p.add_argument("--reference-logits", action="store_true")
    p.add_argument("--tokenizer", action="store_true", help="save the Llama 3 tokenizer into tokenizer/")
    p.add_argument("--incomplete", action="store_true", help="leave out complete.json (a crashed save)")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    import torch.multiprocessing as mp

    pathlib.Path(args.run_dir).mkdir(parents=True, exist_ok=True)
    mp.spawn(_rank_main, args=(2, _free_port(), args), nprocs=2, join=True)


def make_zero3_checkpoint(run_dir, **kw) -> pathlib.Path:
    """Run this file as a script in a fresh process; returns the checkpoint folder."""
    import subprocess

    argv = [sys.executable, str(pathlib.Path(__file__).resolve()), str(run_dir)]
    for k, v in kw.items():
        flag = "--" + k.replace("_", "-")
        if v is True:
            argv.append(flag)
        elif v not in (False, None):
            argv += [flag, str(v)]
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    r = subprocess.run(argv, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"checkpoint maker failed ({r.returncode}):\n{r.stdout[-4000:]}\n{r.stderr[-8000:]}")
    return pathlib.Path(run_dir) / "checkpoints" / f"step_{kw.get('steps', 2)}"


if __name__ == "__main__":
    main()
