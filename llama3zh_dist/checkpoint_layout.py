"""The checkpoint folder layout, owned here alone: training writes it, resume, export and sweeps read it.

    run.dir/checkpoints/step_<N>/             one checkpoint (DeepSpeed shards, RNG, trainer state, config)
    run.dir/checkpoints/step_<N>/complete.json   written last: {"step": N, "files": {name: sha256}}
    run.dir/checkpoints/latest                text: the name of the newest complete checkpoint
    run.dir/checkpoints/universal/step_<N>/   step_<N> converted for another world size

A checkpoint counts only once its marker exists; its checksums say whether it is still intact.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from .errors import UserError
from .fileio import sha256_file

MARKER = "complete.json"
LATEST = "latest"
STEP_DIR = re.compile(r"^step_(\d+)$")
UNIVERSAL = "universal"
# The tokenizer the run trained with, saved by rank 0 into every checkpoint (as the Hugging Face
# Trainer does): the export copies these files (checksummed in ``complete.json``) instead of loading
# and re-saving a tokenizer, and carries exactly the one the weights were trained with.
TOKENIZER_DIR = "tokenizer"


def checkpoints_dir(run_dir) -> Path:
    return Path(run_dir) / "checkpoints"


def step_dir_name(step: int) -> str:
    return f"step_{int(step)}"


def complete_steps(ckpt_root: Path) -> list[int]:
    """Steps of the checkpoints that carry a completion marker, newest first."""
    if not ckpt_root.is_dir():
        return []
    steps = []
    for d in ckpt_root.iterdir():
        m = STEP_DIR.match(d.name)
        if m and (d / MARKER).is_file():
            steps.append(int(m.group(1)))
    return sorted(steps, reverse=True)


def verify(ckpt_dir: Path, files: list[str] | None = None) -> str | None:
    """None if the listed files of ``ckpt_dir`` match their marker checksums, else the problem."""
    try:
        marker = json.loads((ckpt_dir / MARKER).read_text())
    except (OSError, ValueError) as e:
        return f"{ckpt_dir / MARKER}: unreadable ({e})"
    for rel, digest in marker["files"].items():
        if files is not None and rel not in files:
            continue
        path = ckpt_dir / rel
        if not path.is_file():
            return f"{path}: missing"
        if sha256_file(path) != digest:
            return f"{path}: checksum mismatch (file damaged)"
    return None


def check_complete_checkpoint(ckpt_dir: Path) -> dict:
    """``complete.json`` of a checkpoint; UserError if the checkpoint is missing or incomplete."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        raise UserError(f"checkpoint {ckpt_dir} does not exist: pick another with export.step=N "
                        "(see run.dir/checkpoints/)")
    marker = ckpt_dir / MARKER
    if not marker.is_file():
        raise UserError(f"checkpoint {ckpt_dir} is incomplete (no {MARKER}: its save was interrupted) and "
                        "cannot be exported; export a complete one with export.step=N")
    try:
        info = json.loads(marker.read_text())
        files = info["files"]
    except (OSError, ValueError, KeyError, TypeError):
        raise UserError(f"{marker} is unreadable: the checkpoint is damaged; export another with export.step=N") from None
    missing = [f for f in files if not (ckpt_dir / f).is_file()]
    if missing:
        raise UserError(f"checkpoint {ckpt_dir} lacks files listed in {MARKER} (e.g. {missing[0]}); "
                        "export another with export.step=N")
    return info


def resolve_checkpoint(run_dir, step=None) -> Path:
    """``run.dir/checkpoints/step_<step>``, or the one ``checkpoints/latest`` names; UserError if it is
    missing or incomplete."""
    root = checkpoints_dir(run_dir)
    if step is not None and str(step) not in ("", "null", "None"):
        try:
            n = int(str(step).removeprefix("step_"))
        except ValueError:
            raise UserError(f"export.step={step!r} is not a step number (e.g. export.step=120)") from None
        ckpt = root / step_dir_name(n)
        if not ckpt.is_dir():
            have = sorted(p.name for p in root.glob("step_*")) if root.is_dir() else []
            raise UserError(f"export.step={n}: no checkpoint {ckpt} (have: {', '.join(have) or 'none'})")
    else:
        latest = root / LATEST
        if not latest.is_file():
            raise UserError(f"no complete checkpoint in {root} ({latest} is missing): train first, or set "
                            "run.dir to a run folder with checkpoints")
        ckpt = root / latest.read_text().strip()
    check_complete_checkpoint(ckpt)
    return ckpt
