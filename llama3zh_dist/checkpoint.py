"""Atomic, verified checkpoints in ``run.dir/checkpoints/step_<N>/``.

A checkpoint counts only once ``complete.json`` (written last, by rank 0, after every rank has
written and hashed its files) lists a SHA-256 for each of its files; ``checkpoints/latest`` is
replaced (temp file + rename) only after that. DeepSpeed's own ``latest`` is written by rank 0
before the final barrier, so it can name a checkpoint whose shards are still being written: we
never write or read it (``save_latest=False``).
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from .checkpoint_layout import LATEST, MARKER, STEP_DIR, UNIVERSAL, complete_steps, step_dir_name, verify
from .fileio import atomic_write_text, sha256_file

log = logging.getLogger(__name__)


def rng_state() -> dict:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def own_step_per_group(zero_optimizer) -> int:
    """Give every ZeRO sub-group its own ``step`` tensor, on its parameter's device, as torch creates
    it; returns how many were replaced.

    DeepSpeed 0.19.8's universal loader (``load_hp_checkpoint_state_from_checkpoint_dir_stage3``)
    assigns one tensor, loaded on the CPU, as ``step`` of every sub-group. torch's fused AdamW
    requires ``step`` as float32 on the parameter's device (a CPU step crashes the first CUDA update
    after the resume), and since it increments each ``step`` in place, a shared tensor advances
    once per sub-group per update, which skews Adam's bias correction. The count itself (optimizer
    updates applied so far) is right: each copy keeps it. (ZeRO-3 keeps the optimizer's
    ``param_groups[...]["params"]`` empty between steps; the sub-groups' flat fp32 partitions are
    the keys of its state.)
    """
    inner = zero_optimizer.optimizer
    flats = getattr(zero_optimizer, "fp32_partitioned_groups_flat", None) or [
        p for g in inner.param_groups for p in g["params"]]
    replaced = 0
    for p in flats:
        state = inner.state.get(p)
        if state and torch.is_tensor(state.get("step")):
            count = float(state["step"].item())
            state["step"] = torch.tensor(count, dtype=torch.float32, device=p.device)
            replaced += 1
    return replaced


class CheckpointManager:
    """Saves and finds checkpoints; every method is called by all ranks together."""

    def __init__(self, run_dir: Path, *, rank: int, world_size: int, keep: int):
        self.root = Path(run_dir) / "checkpoints"
        self.rank, self.world_size, self.keep = rank, world_size, keep

    # -- saving -------------------------------------------------------------------------------
    def save(self, engine, step: int, trainer_state: dict, hf_config, extra: dict | None = None) -> Path:
        """All ranks write, barrier, hash; then the marker and ``latest`` (rank 0); then prune."""
        tag = step_dir_name(step)
        tag_dir = self.root / tag
        if self.rank == 0:
            self.root.mkdir(parents=True, exist_ok=True)
            if tag_dir.exists():  # leftover of a save that was interrupted: never mixed with new files
                shutil.rmtree(tag_dir)
        dist.barrier()
        engine.save_checkpoint(str(self.root), tag=tag, client_state={"trainer_state": trainer_state}, save_latest=False)
        mine = [f"rng_state_rank{self.rank}.pt"]
        torch.save(rng_state(), tag_dir / mine[0])
        if self.rank == 0:
            hf_config.save_pretrained(tag_dir)
            atomic_write_text(tag_dir / "trainer_state.json", json.dumps(trainer_state, indent=1))
            for name, writer in (extra or {}).items():
                writer(tag_dir / name)
        dist.barrier()
        # Each rank hashes its own ZeRO partition files (in parallel); rank 0 hashes the rest.
        all_files = sorted(str(p.relative_to(tag_dir)) for p in tag_dir.rglob("*") if p.is_file())
        own = [f for f in all_files if f"zero_pp_rank_{self.rank}_" in f or f == mine[0]]
        if self.rank == 0:
            own += [f for f in all_files if "zero_pp_rank_" not in f and not f.startswith("rng_state_rank")]
        digests = {f: sha256_file(tag_dir / f) for f in own}
        gathered: list[dict] = [None] * self.world_size  # type: ignore[list-item]
        dist.all_gather_object(gathered, digests)
        if self.rank == 0:
            files: dict[str, str] = {}
            for d in gathered:
                files.update(d)
            atomic_write_text(tag_dir / MARKER, json.dumps({"step": step, "files": dict(sorted(files.items()))}, indent=1))
            atomic_write_text(self.root / LATEST, tag + "\n")
            self._prune(step)
        dist.barrier()
        return tag_dir

    def _prune(self, current: int) -> None:
        # Complete checkpoints newer than the one just saved were refused at resume (damaged): they
        # are left for inspection and replaced when training reaches their step again; they do not
        # count towards ``keep``, so the fallback chain behind ``current`` stays intact.
        steps = [s for s in complete_steps(self.root) if s <= current]
        for old in steps[self.keep :]:
            # Marker first: a deletion cut short by a kill must never look like a complete checkpoint.
            (self.root / f"step_{old}" / MARKER).unlink(missing_ok=True)
            shutil.rmtree(self.root / f"step_{old}", ignore_errors=True)
        # Conversions for another world size live only as long as their checkpoint.
        uni = self.root / UNIVERSAL
        if uni.is_dir():
            for d in uni.iterdir():
                m = STEP_DIR.match(d.name)
                if d.name.startswith("."):  # an interrupted or failed conversion (none runs during a save)
                    shutil.rmtree(d, ignore_errors=True) if d.is_dir() else d.unlink(missing_ok=True)
                elif d.is_dir() and (not m or int(m.group(1)) not in steps[: self.keep]):
                    shutil.rmtree(d, ignore_errors=True)
        # Interrupted saves older than the newest complete one can never complete: remove them.
        newest = steps[0] if steps else None
        for d in self.root.iterdir():
            m = STEP_DIR.match(d.name)
            if m and newest is not None and int(m.group(1)) < newest and not (d / MARKER).exists():
                shutil.rmtree(d, ignore_errors=True)

    # -- finding ------------------------------------------------------------------------------
    def newest_valid(self) -> Path | None:
        """The newest complete checkpoint whose checksums hold; damaged ones are named and skipped.

        The files are verified in parallel (rank r checks every world_size-th file); all ranks
        return the same answer.
        """
        for step in complete_steps(self.root):
            ckpt = self.root / f"step_{step}"
            try:
                names = sorted(json.loads((ckpt / MARKER).read_text())["files"])
            except (OSError, ValueError, KeyError):
                names = []
            problem = verify(ckpt, names[self.rank :: self.world_size]) if names else f"{ckpt / MARKER}: unreadable"
            found: list[str | None] = [None] * self.world_size
            dist.all_gather_object(found, problem)
            problems = [p for p in found if p]
            if not problems:
                return ckpt
            if self.rank == 0:
                log.warning("refusing checkpoint %s: %s; falling back to the previous complete one", ckpt.name, problems[0])
                print(f"warning: refusing checkpoint {ckpt.name}: {problems[0]}; trying the previous one", flush=True)
        return None

    def saved_world_size(self, ckpt: Path) -> int:
        try:
            return int(json.loads((ckpt / "trainer_state.json").read_text())["world_size"])
        except (OSError, ValueError, KeyError):
            return self.world_size

    def load(self, engine, ckpt: Path) -> dict:
        """Load ``ckpt`` into ``engine``; a checkpoint of another world size goes through DeepSpeed's
        universal checkpoint (every parameter's fp32 weights and Adam moments, whole), re-partitioned
        for this world size. The data position is world-size independent (global rows per step)."""
        saved_ws = self.saved_world_size(ckpt)
        if saved_ws == self.world_size:
            _, client = engine.load_checkpoint(
                str(ckpt.parent), tag=ckpt.name, load_optimizer_states=True, load_lr_scheduler_states=True
            )
        else:
            uni = self.universal(ckpt)
            if self.rank == 0:
                print(f"checkpoint {ckpt.name} was saved by {saved_ws} ranks; resuming on {self.world_size} "
                      f"through the universal checkpoint {uni}", flush=True)
            cfg = engine._config
            # DeepSpeed's universal loader copies the hyperparameters of the first parameter group
            # into every group (weight decay included); ours differ per group (no decay on norms).
            groups = engine.optimizer.optimizer.param_groups
            hyper = [{k: v for k, v in g.items() if k not in ("params", "lr")} for g in groups]
            cfg.load_universal_checkpoint = True
            try:
                _, client = engine.load_checkpoint(
                    str(uni.parent), tag=uni.name, load_optimizer_states=True, load_lr_scheduler_states=True
                )
            finally:
                cfg.load_universal_checkpoint = False
            for g, h in zip(groups, hyper):
                g.update(h)
            own_step_per_group(engine.optimizer)
        rng_file = ckpt / f"rng_state_rank{self.rank}.pt"
        if rng_file.exists() and saved_ws == self.world_size:
            set_rng_state(torch.load(rng_file, weights_only=False))
        return (client or {}).get("trainer_state") or json.loads((ckpt / "trainer_state.json").read_text())

    def universal(self, ckpt: Path) -> Path:
        """``ckpt`` converted to DeepSpeed's universal format (converted once, by rank 0).

        The conversion runs in a separate process (DeepSpeed's ``ds_to_universal``) into a hidden
        folder that is renamed into place when done; the other ranks wait for that folder on the
        filesystem, not in a collective, so a long conversion cannot trip the collective timeout.
        """
        out = self.root / UNIVERSAL / ckpt.name
        failed = out.with_name(f".{ckpt.name}.failed")
        if self.rank == 0 and not (out / MARKER).is_file():
            tmp = out.with_name("." + ckpt.name)
            failed.unlink(missing_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.rmtree(out, ignore_errors=True)
            tmp.parent.mkdir(parents=True, exist_ok=True)
            t0 = time.time()
            res = subprocess.run(
                [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder", str(ckpt),
                 "--output_folder", str(tmp), "--num_extract_workers", "2", "--num_merge_workers", "2"],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            )
            if res.returncode != 0:
                print(res.stdout[-4000:], file=sys.stderr, flush=True)
                atomic_write_text(failed, res.stdout[-4000:])  # tells the waiting ranks to stop too
                raise RuntimeError(f"converting {ckpt} to a universal checkpoint failed (exit {res.returncode})")
            atomic_write_text(tmp / MARKER, json.dumps({"source": str(ckpt), "seconds": time.time() - t0}))
            os.replace(tmp, out)
            print(f"universal checkpoint {out} written in {time.time() - t0:.1f}s", flush=True)
        else:
            while not (out / MARKER).is_file():
                if failed.is_file():
                    raise RuntimeError(f"rank 0 could not convert {ckpt} to a universal checkpoint (see its log)")
                time.sleep(1)
        dist.barrier()
        return out
