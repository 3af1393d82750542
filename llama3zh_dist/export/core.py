"""Export a ZeRO-3 checkpoint into a Hugging Face model folder: streaming, bounded memory, verified.

Flow of :func:`export_checkpoint`:

1. open the checkpoint (fp32 partitions memory-mapped, nothing read yet), plan the shards
   (``max_shard_size`` in the export dtype) under the names the checkpoint holds, and start writing;
2. the writers: each shard's safetensors header, then the tensors in parallel (``workers`` threads,
   largest first), each streamed from the rank partitions in pieces of ``CHUNK_ELEMENTS``, cast,
   written at its offset (``pwrite``) and hashed (XXH3). A writer holds one piece (about 12 MB) at a
   time and the consumed checkpoint pages are dropped, so the export needs ``workers`` pieces of
   memory whatever the shard, tensor or model size. Meanwhile this thread reads the HF config, builds
   the model skeleton on the meta device, and writes the tokenizer (copied from the checkpoint's
   ``tokenizer/``) and ``generation_config.json``; the config's names and shapes are then matched
   against what was written (a mismatch stops the export; other names are matched and written again);
3. write ``model.safetensors.index.json`` and ``config.json`` (``torch_dtype`` = export dtype);
4. read every file back from disk: its SHA-256 (for ``SHA256SUMS``) and, for the shards, the XXH3 of
   each tensor's bytes against what was written; fsync. With ``verify`` (default): the safetensors
   headers against the expected names/shapes/dtypes, the config, and the logits of the reference
   prompts (``reference_logits.safetensors`` in the checkpoint) against the trained model's, run
   module by module from the written shards (the logits check loads one ordinary layer at a time and
   reads the vocabulary matrices by rows); ``verify="full"`` first re-hashes the checkpoint's files
   against its ``complete.json``;
5. write ``SHA256SUMS`` last and swap the temp folder into place (atomic exchange where the OS has
   it), so ``out_dir`` is always either the previous complete export or the new complete one.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import pathlib
import resource
import shutil
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

from llama3zh_dist.checkpoint_layout import check_complete_checkpoint, resolve_checkpoint
from llama3zh_dist.errors import UserError
from llama3zh_dist.fileio import fsync_dir, pid_alive, swap_dir_into_place

from .consolidate import match_names, names_in_checkpoint
from .hf_files import DTYPE_NAMES, resolve_dtype, write_config, write_generation_config
from .logits_check import VERIFICATION_FILE, record_verification
from .safetensors_stream import TensorEntry, parse_size, plan_shards
from .tokenizer_files import write_tokenizer
from .verify import verify_folder, verify_source_checksums
from .writer import WriteProgress, background_priority, crash_point, read_back, write_weights
from .zero3 import Zero3Checkpoint

__all__ = ["check_complete_checkpoint", "export_checkpoint", "export_run", "export_run_summary",
           "resolve_checkpoint", "resolve_dtype"]

log = logging.getLogger(__name__)

SUMS = "SHA256SUMS"
_TMP_TAG = ".tmp-export-"
_OLD_TAG = ".old-export-"


def _move_into_place(tmp: pathlib.Path, out: pathlib.Path) -> None:
    swap_dir_into_place(tmp, out, old_name=f"{_OLD_TAG}{out.name}-{uuid.uuid4().hex[:8]}",
                        between_renames=lambda: crash_point("between_renames"))


def _remove_leftovers(out: pathlib.Path) -> None:
    """Temp/old folders of exports of ``out`` that were killed (their pid is gone) are removed."""
    if not out.parent.exists():
        return
    for p in out.parent.iterdir():
        for tag in (_TMP_TAG, _OLD_TAG):
            prefix = f"{tag}{out.name}-"
            if p.name.startswith(prefix) and p.is_dir():
                pid = p.name[len(prefix):].split("-")[0]
                if tag == _TMP_TAG and pid.isdigit() and pid_alive(int(pid)):
                    continue
                shutil.rmtree(p, ignore_errors=True)


def _model_of(ckpt_dir: pathlib.Path):
    """The checkpoint's HF config, its model skeleton (meta device) and the tensors it implies."""
    from transformers import AutoConfig

    try:
        hf_config = AutoConfig.from_pretrained(ckpt_dir)
    except (OSError, ValueError) as e:
        raise UserError(f"checkpoint {ckpt_dir} has no readable config.json ({e})") from None
    from .model_meta import expected_tensors, skeleton

    skel = skeleton(hf_config)
    return hf_config, skel, expected_tensors(skel)


def _plan(ckpt: Zero3Checkpoint, expected: dict, dt, shard_limit: int):
    """Checkpoint tensor of each export tensor (UserError on a mismatch), the entries and the shards."""
    mapping = match_names(ckpt, expected)
    entries = []
    for name in expected:
        src_dtype = ckpt.dtype_of(mapping[name])
        entries.append(TensorEntry(name, ckpt.sources[mapping[name]].shape,
                                   dt if src_dtype.is_floating_point else src_dtype))
    return mapping, entries, plan_shards(entries, shard_limit)


@contextlib.contextmanager
def _collector_paused():
    """No cyclic garbage collection while transformers is imported: the import allocates hundreds of
    thousands of objects, which triggers full collections that each walk every object torch and
    transformers have created so far (0.5-0.8 s of the 2.5-3 s import, measured on 2 cores). Nothing
    it creates needs collecting; the collector is back on right after."""
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_on:
            gc.enable()


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _write_and_read_back(ckpt, shards, mapping, tmp, workers, abort=None) -> dict[str, str]:
    """Write the shards while reading each back from disk right behind the writers (its SHA-256, the
    XXH3 of every tensor against what was written, fsync): file name -> SHA-256."""
    progress = WriteProgress(shards)
    with ThreadPoolExecutor(max(1, min(workers, len(shards))), initializer=background_priority) as readers:
        sums = {fn: readers.submit(read_back, tmp / fn, progress) for fn in progress.layout}
        write_weights(ckpt, shards, mapping, tmp, workers, abort, progress)
        crash_point("after_weights")
        return {fn: f.result() for fn, f in sums.items()}


def _write_while_loading_model(ckpt, ckpt_dir, info, tmp, dt, shard_limit, workers, tokenizer):
    """Steps 1, 2 and the shards' part of 4 at once. The weights are written (and read back) under the
    names the checkpoint itself holds (``names_in_checkpoint``) while this thread imports transformers,
    builds the config's skeleton and writes the tokenizer: about 2.5 s of Python that held up every
    export, small or large, before a byte was written, and that now runs beside the writers (which
    spend their time in reads, ``pwrite``, hashing and the disk, mostly outside the GIL, at a lower
    priority so that this critical path keeps a core). The names the config implies are then compared
    with the ones written: equal (any checkpoint this project saves) keeps the write; different, the
    weights are matched by the config (a mismatch stops the export here, before anything replaces the
    old one) and written again."""
    guess = names_in_checkpoint(ckpt)
    mapping, entries, shards = _plan(ckpt, guess, dt, shard_limit)
    abort = threading.Event()
    # one core stays with this thread: on a small machine more writers only slow the critical path
    beside = max(1, min(workers, _usable_cores() - 1))
    with ThreadPoolExecutor(1, initializer=background_priority) as bg:
        writing = bg.submit(_write_and_read_back, ckpt, shards, mapping, tmp, beside, abort)
        try:
            with _collector_paused():
                hf_config, skel, expected = _model_of(ckpt_dir)
            tok_report = write_tokenizer(tmp, ckpt_dir, info, tokenizer)
            write_generation_config(tmp, tokenizer, hf_config)  # a loader (no get_vocab): the Llama 3 ids
        except BaseException:
            abort.set()
            raise
        shard_sums = writing.result()
    if list(expected.items()) != list(guess.items()):
        log.info("the model config names the tensors other than the checkpoint: matching by the config")
        mapping, entries, shards = _plan(ckpt, expected, dt, shard_limit)
        for fn in shard_sums:
            (tmp / fn).unlink()
        shard_sums = _write_and_read_back(ckpt, shards, mapping, tmp, workers)
    return hf_config, skel, expected, entries, shards, shard_sums, tok_report


def _write_sums(tmp: pathlib.Path, hashes: dict[str, str]) -> None:
    with open(tmp / SUMS, "w") as f:
        for name in sorted(hashes):
            f.write(f"{hashes[name]}  {name}\n")
        f.flush()
        os.fsync(f.fileno())
    fsync_dir(tmp)


def export_checkpoint(ckpt_dir, out_dir, *, tokenizer=None, dtype="bfloat16", max_shard_size="5GB", workers=4,
                      verify=True) -> dict:
    """Export the ZeRO-3 checkpoint ``ckpt_dir`` into the HF model folder ``out_dir`` (replaced atomically).

    ``tokenizer``: used only for a checkpoint that carries no ``tokenizer/`` (saved before checkpoints
    did): a tokenizer object, or a callable returning one (called only then); None writes none.

    ``verify``: False writes and checksums only; True (default) also checks the written folder: every
    file re-read (its XXH3-64 per tensor against what was written, and the SHA-256 for ``SHA256SUMS``
    taken from that read), the safetensors headers against the names/shapes/dtypes the model config
    implies, the tokenizer files and chat template, and the logits of the reference prompts against
    ``reference_logits.safetensors`` when the checkpoint has it; ``"full"`` also re-hashes every
    checkpoint file against ``complete.json`` first (reads the whole checkpoint, Adam moments included:
    about 3x the fp32 model size).

    Returns a summary: ``out_dir``, ``files`` (name -> sha256), ``num_parameters``, ``num_tensors``,
    ``total_bytes``, ``dtype``, ``shards``, ``peak_rss_bytes`` (this process's peak so far),
    ``seconds``, ``verification``.
    """
    t0 = time.time()
    ckpt_dir = pathlib.Path(ckpt_dir)
    out_dir = pathlib.Path(out_dir).absolute()
    dt = resolve_dtype(dtype)
    shard_limit = parse_size(max_shard_size)
    workers = max(1, int(workers or 1))
    info = check_complete_checkpoint(ckpt_dir)
    if verify == "full":
        verify_source_checksums(ckpt_dir, info, workers)
    ckpt = Zero3Checkpoint(ckpt_dir)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(out_dir)
    tmp = out_dir.with_name(f"{_TMP_TAG}{out_dir.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        hf_config, skel, expected, entries, shards, shard_sums, tok_report = _write_while_loading_model(
            ckpt, ckpt_dir, info, tmp, dt, shard_limit, workers, tokenizer)
        total_bytes = sum(e.nbytes for e in entries)
        num_params = sum(e.numel for e in entries if expected[e.name][1])
        if len(shards) > 1:
            index = {"metadata": {"total_size": total_bytes, "total_parameters": num_params},
                     "weight_map": {e.name: s.filename for s in shards for e in s.entries}}
            (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        write_config(tmp, hf_config, dt)  # config.json last among the model files
        hashes = {p.name: read_back(p) for p in sorted(tmp.iterdir()) if p.is_file() and p.name not in shard_sums}
        hashes.update(shard_sums)
        verification = verify_folder(tmp, shards, hf_config, dt, ckpt_dir, skel) if verify else {}
        if verify and tok_report is not None:
            verification["tokenizer"] = tok_report
        verification["checksums"] = len(hashes)
        # never silent: an export whose logits were not checked says so on stderr and in the folder
        hashes[VERIFICATION_FILE] = read_back(record_verification(tmp, verification, ckpt_dir, verify))
        verification["logits_verified"] = "logits" in verification
        crash_point("before_sums")
        _write_sums(tmp, hashes)
        crash_point("before_rename")
        del ckpt
        _move_into_place(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    summary = {
        "out_dir": str(out_dir), "checkpoint": str(ckpt_dir), "step": info.get("step"),
        "dtype": DTYPE_NAMES[dt], "files": dict(sorted(hashes.items())), "shards": [s.filename for s in shards],
        "num_parameters": num_params, "num_tensors": len(entries), "total_bytes": total_bytes,
        "max_shard_size": shard_limit, "largest_tensor_bytes": max((e.nbytes for e in entries), default=0),
        "workers": workers, "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "seconds": round(time.time() - t0, 3), "verification": verification,
    }
    log.info("exported %s -> %s (%d tensors, %.1f MB, %.1fs)", ckpt_dir, out_dir, len(entries),
             total_bytes / 1e6, summary["seconds"])
    return summary


def _verify_setting(v):
    if isinstance(v, str) and v.strip().lower() == "full":
        return "full"
    if isinstance(v, str):
        return v.strip().lower() not in ("false", "0", "no", "off", "")
    return bool(v)


def run_tokenizer_loader(cfg):
    """The run's tokenizer, loaded when called: what the export of a checkpoint without its own
    ``tokenizer/`` writes (checkpoints saved before they carried one)."""
    from omegaconf import OmegaConf

    def load():
        from llama3zh_dist.llama3.hf_tokenizer import load_tokenizer

        return load_tokenizer(OmegaConf.select(cfg, "model.path"),
                              bool(OmegaConf.select(cfg, "model.trust_remote_code", default=False)))

    return load


def export_run_summary(cfg, step=None, *, wandb_run=None) -> dict:
    """Export ``run.dir``'s newest complete checkpoint (or ``step`` / ``export.step``) into ``run.dir/export``;
    returns the export summary (see :func:`export_checkpoint`). With ``wandb_run``, the export is also
    recorded there (:func:`log_export_to_wandb`)."""
    from omegaconf import OmegaConf

    run_dir = pathlib.Path(str(OmegaConf.select(cfg, "run.dir")))
    exp = OmegaConf.select(cfg, "export") or {}
    if step is None:
        step = exp.get("step")
    ckpt = resolve_checkpoint(run_dir, step)
    summary = export_checkpoint(
        ckpt, run_dir / "export", tokenizer=run_tokenizer_loader(cfg),
        dtype=exp.get("dtype", "bfloat16"), max_shard_size=exp.get("max_shard_size", "5GB"),
        workers=exp.get("workers", 4), verify=_verify_setting(exp.get("verify", True)),
    )
    from .extras import finish_export  # GGUF files and the model card, listed in SHA256SUMS

    summary.update(finish_export(summary["out_dir"], run_dir, list(exp.get("gguf") or [])))
    from .sums import read_sums

    summary["files"] = {n: d for n, d in read_sums(pathlib.Path(summary["out_dir"])).items() if n != SUMS}
    if wandb_run is not None:
        from .wandb_log import log_export_to_wandb

        log_export_to_wandb(wandb_run, summary["out_dir"], summary)
    return summary


def export_run(cfg, step=None, *, wandb_run=None) -> pathlib.Path:
    """:func:`export_run_summary`, returning the export folder."""
    return pathlib.Path(export_run_summary(cfg, step, wandb_run=wandb_run)["out_dir"])
