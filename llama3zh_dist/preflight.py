"""Checks that a config can work, run in seconds before any rank starts.

``python -m llama3zh_dist.preflight [overrides]`` runs them alone (Slurm's login-node check);
training runs them first. All problems are reported together in one message.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

from omegaconf import DictConfig

from .batch import gradient_accumulation_steps, world_size_of
from .config import load_config
from .errors import UserError, exits_cleanly_on_user_error
from .schema.model import ATTENTION


def _model_path_problem(cfg: DictConfig) -> str | None:
    if cfg.model.init == "random":
        if not cfg.model.arch:
            return "model.init=random needs model.arch (see conf/model/tiny.yaml)"
        return None
    path = cfg.model.path
    if not path:
        return "model.path is not set: give a local Hugging Face model folder or a Hub id"
    local = Path(os.path.expanduser(str(path)))
    if local.exists():
        if not (local / "config.json").exists():
            return f"model.path={path} is a folder without config.json: not a Hugging Face model folder"
        return None
    if local.is_absolute() or str(path).startswith((".", "~")) or str(path).count("/") != 1:
        return f"model.path={path} does not exist: set model.path to a local Hugging Face model folder"
    if os.environ.get("SLURM_JOB_ID"):
        # Every rank of every node would resolve the (gated) Hub repo and read the weights from the
        # network or a per-user cache; a cluster job reads one local copy.
        return (f"model.path={path} is a Hub id, but Slurm jobs need a local model folder: download it once "
                f"(huggingface-cli download {path} --local-dir DIR, on a filesystem every node sees) and set "
                "model.path=DIR")
    # A Hub id: usable if already in the local HF cache, or if the Hub can be reached.
    try:
        from huggingface_hub import try_to_load_from_cache

        if isinstance(try_to_load_from_cache(str(path), "config.json"), str):
            return None
    except Exception:
        pass
    hint = (
        f"model.path={path}: the weights are not on this machine and the Hugging Face Hub "
        f"cannot be reached; download them (huggingface-cli download {path} --local-dir DIR) "
        "and set model.path=DIR"
    )
    from .hub import offline_requested

    if offline_requested():
        return hint
    try:
        from huggingface_hub import HfApi

        HfApi().model_info(str(path), timeout=5)
    except Exception:
        return hint
    return None


def run_dir_problem(cfg: DictConfig) -> str | None:
    """``run.dir`` cannot be written (no permission, a read-only filesystem, a file in the way).

    Probed by creating (and removing) a temporary entry in the folder, or in its nearest existing
    parent when the folder is still to be made: permission bits alone say nothing for root or on
    read-only mounts. Nothing is left behind.
    """
    import tempfile

    run_dir = Path(os.path.expanduser(str(cfg.run.dir))).absolute()
    probe_in = run_dir
    while not probe_in.exists() and probe_in != probe_in.parent:
        probe_in = probe_in.parent
    try:
        if not probe_in.is_dir():
            raise NotADirectoryError(f"{probe_in} is a file")
        os.rmdir(tempfile.mkdtemp(prefix=".llama3zh-write-probe-", dir=probe_in))
    except OSError as e:
        reason = e.strerror or str(e)
        return (f"run.dir={cfg.run.dir}: cannot write the run folder {run_dir} ({probe_in}: {reason}); "
                "set run.dir to a folder you can write")
    return None


def problems(cfg: DictConfig, *, world_size: int | None = None) -> list[str]:
    """Every reason ``cfg`` cannot run, each naming the setting and the fix."""
    out: list[str] = []
    t, c = cfg.trainer, cfg.cluster
    world = world_size or world_size_of(cfg)
    if int(c.nodes) < 1 or int(c.nproc_per_node) < 1:
        out.append("cluster.nodes and cluster.nproc_per_node must be at least 1")
    per_pass = int(t.micro_batch_size) * world
    if int(t.micro_batch_size) < 1 or int(t.global_batch_size) < per_pass or int(t.global_batch_size) % per_pass:
        out.append(
            f"trainer.global_batch_size={t.global_batch_size} must be a positive multiple of "
            f"trainer.micro_batch_size ({t.micro_batch_size}) x world size ({world}) = {per_pass}; "
            f"e.g. trainer.global_batch_size={max(per_pass, (int(t.global_batch_size) // max(per_pass, 1)) * per_pass)}"
        )
    if int(t.max_steps) < 1:
        out.append(f"trainer.max_steps={t.max_steps} must be at least 1")
    if not 0 <= float(t.warmup_ratio) < 1:
        out.append(f"trainer.warmup_ratio={t.warmup_ratio} must be in [0, 1)")
    if int(cfg.checkpoint.keep) < 2:
        out.append("checkpoint.keep must be at least 2 so that a damaged newest checkpoint has a fallback")
    if c.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            out.append(
                "cluster.device=cuda but this machine has no CUDA GPU; run on a GPU node, or use the "
                "CPU path (+experiment=quickstart, or cluster=cpu model=tiny)"
            )
        elif c.backend != "nccl":
            out.append(f"cluster.backend={c.backend} on GPU: use cluster.backend=nccl")
    elif c.device == "cpu":
        if c.backend != "gloo":
            out.append(f"cluster.backend={c.backend} on CPU: use cluster.backend=gloo")
    else:
        out.append(f"cluster.device={c.device}: use cuda or cpu")
    attn = cfg.model.attn_implementation
    if attn == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
        out.append(
            "model.attn_implementation=flash_attention_2 but the flash-attn package is not installed: "
            "pip install 'llama3zh_dist[gpu]', or set model.attn_implementation=auto (torch's varlen kernel) "
            "or model.attn_implementation=sdpa"
        )
    elif attn not in ATTENTION:
        out.append(f"model.attn_implementation={attn}: use {', '.join(ATTENTION)}")
    if cfg.model.dtype not in ("bfloat16", "float16", "float32"):
        out.append(f"model.dtype={cfg.model.dtype}: use bfloat16, float16 or float32")
    if cfg.export.dtype not in ("bfloat16", "float16", "float32"):
        out.append(f"export.dtype={cfg.export.dtype}: use bfloat16, float16 or float32")
    if int(cfg.data.max_seq_len) < 16:
        out.append(f"data.max_seq_len={cfg.data.max_seq_len} is too small")
    problem = _model_path_problem(cfg)
    if problem:
        out.append(problem)
    unwritable = run_dir_problem(cfg)
    if unwritable:
        out.append(unwritable)
    try:  # will it fit: the planner's per-GPU peak against the GPU's memory (python -m llama3zh_dist.plan)
        from .plan import memory_problem

        memory = memory_problem(cfg)
    except UserError as e:
        memory = None if problem else str(e)
    if memory:
        out.append(memory)
    return out


def data_repetition_problem(cfg: DictConfig, data_dir: Path) -> str | None:
    """The run would show every training row more than ``trainer.max_epochs`` times.

    Checked once the prepared dataset exists (its manifest counts the rows): a too-small dataset
    (the bundled sample under an 8B recipe) would otherwise be memorised silently.
    """
    limit = cfg.trainer.get("max_epochs")
    manifest = Path(data_dir) / "manifest.json"
    if limit is None or not manifest.exists():
        return None
    import json

    rows = int(json.loads(manifest.read_text()).get("counts", {}).get("rows", 0))
    seen = int(cfg.trainer.max_steps) * int(cfg.trainer.global_batch_size)
    epochs = seen / max(rows, 1)
    if epochs <= float(limit):
        return None
    return (
        f"the run would repeat its data {epochs:,.1f} times: trainer.max_steps={cfg.trainer.max_steps} x "
        f"trainer.global_batch_size={cfg.trainer.global_batch_size} = {seen:,} rows, but the prepared dataset "
        f"({data_dir}) has {rows:,} rows; trainer.max_epochs={limit} allows at most "
        f"trainer.max_steps={max(1, int(float(limit) * rows) // int(cfg.trainer.global_batch_size))}. "
        "Use more data (data=...), fewer steps, or raise trainer.max_epochs (null = no limit)"
    )


def check_data(cfg: DictConfig, data_dir: Path) -> None:
    problem = data_repetition_problem(cfg, data_dir)
    if problem:
        raise UserError(problem)


def check(cfg: DictConfig, *, world_size: int | None = None) -> None:
    found = problems(cfg, world_size=world_size)
    if len(found) == 1:
        raise UserError(found[0])
    if found:
        raise UserError("this config cannot run:\n  - " + "\n  - ".join(found))


@exits_cleanly_on_user_error
def main(argv: list[str] | None = None) -> None:
    cfg = load_config(sys.argv[1:] if argv is None else argv)
    check(cfg)
    print(
        f"preflight ok: world size {world_size_of(cfg)}, gradient accumulation "
        f"{gradient_accumulation_steps(cfg)}, run.dir={cfg.run.dir}"
    )


if __name__ == "__main__":
    main()
