"""Record an export in W&B: an artifact of ``file://`` references (nothing uploaded) with the checksums."""

from __future__ import annotations

import pathlib
import re


def log_export_to_wandb(wandb_run, export_dir, summary: dict):
    """Log ``export_dir`` to ``wandb_run`` as a ``model`` artifact of file references.

    Each file of the export is referenced by its ``file://`` URI (``checksum=False``: W&B neither reads
    nor uploads it); its SHA-256 from ``SHA256SUMS`` is in the artifact metadata, with the dtype,
    parameter count, step and source checkpoint. The run summary gets ``export/path``. Returns the
    artifact (None when ``wandb_run`` is None or disabled).
    """
    if wandb_run is None or getattr(wandb_run, "disabled", False):
        return None
    import wandb

    export_dir = pathlib.Path(export_dir).resolve()
    files = dict(summary.get("files") or {})
    sums = export_dir / "SHA256SUMS"
    if sums.is_file():
        files["SHA256SUMS"] = None
    run_name = getattr(wandb_run, "name", None) or getattr(wandb_run, "id", None) or "run"
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", f"{run_name}-export")
    meta = {k: summary.get(k) for k in ("dtype", "num_parameters", "num_tensors", "total_bytes", "step",
                                         "checkpoint", "shards", "seconds", "peak_rss_bytes")}
    meta["path"] = str(export_dir)
    meta["sha256"] = {k: v for k, v in files.items() if v}
    art = wandb.Artifact(name=name, type="model", metadata=meta,
                         description=f"Hugging Face export of {summary.get('checkpoint')} ({summary.get('dtype')})")
    for fname in sorted(files):
        art.add_reference(f"file://{export_dir / fname}", name=fname, checksum=False)
    wandb_run.log_artifact(art)
    try:
        wandb_run.summary["export/path"] = str(export_dir)
        wandb_run.summary["export/sha256_sums"] = str(sums)
    except (AttributeError, TypeError, KeyError):
        pass
    return art
