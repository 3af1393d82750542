"""``python -m llama3zh_dist.eval``: CMMLU / C-Eval accuracy and chat samples for an export or a run.

    python -m llama3zh_dist.eval model.path=<export folder>
    python -m llama3zh_dist.eval run.dir=<run>                 # its export/
    python -m llama3zh_dist.eval run.dir=<run> eval.step=40    # checkpoints/step_40, exported to eval/step_40/model

With ``run.dir`` the run's saved config (``run.dir/config.yaml``) is the base, as for export: its
model, tokenizer and evaluation settings (the quickstart's bundled set) apply; settings given on the
command line win.

Writes results.json, items.jsonl and generations.jsonl to ``eval.out_dir`` (default
``run.dir/eval/<export|step_N>``; for ``model.path=<folder>``, ``eval/<folder name>`` beside the
folder, so ``model.path=runs/x/export`` lands where ``run.dir=runs/x`` does), prints a table, and
logs the figures and the chat samples table to W&B (offline unless configured online).
"""

from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import DictConfig

from ..config import load_config, load_run_config, resolve_path
from ..errors import UserError, exits_cleanly_on_user_error
from ..process_exit import exit_process
from .core import evaluate_model_folder


def _given(argv: list[str], key: str) -> bool:
    return any(a.split("=", 1)[0].lstrip("+") == key for a in argv)


def resolve_target(cfg: DictConfig, argv: list[str]) -> tuple[Path, Path, str]:
    """(model folder, output folder, tag) for the command line."""
    ev = cfg.eval
    run_dir = resolve_path(str(cfg.run.dir))
    if ev.step is not None:
        from ..export import export_checkpoint
        from ..export.core import resolve_checkpoint, run_tokenizer_loader

        ckpt = resolve_checkpoint(run_dir, ev.step)
        tag = ckpt.name
        out = resolve_path(str(ev.out_dir)) if ev.out_dir else run_dir / "eval" / tag
        folder = out / "model"
        if not (folder / "config.json").exists():
            print(f"exporting {ckpt} to {folder} for evaluation", file=sys.stderr, flush=True)
            # the checkpoint's own tokenizer/ is copied; the run's is loaded only for older checkpoints
            export_checkpoint(ckpt, folder, tokenizer=run_tokenizer_loader(cfg), dtype=cfg.export.dtype,
                              max_shard_size=cfg.export.max_shard_size, workers=int(cfg.export.workers), verify=True)
        return folder, out, tag
    bare_model = _given(argv, "model.path") and cfg.model.path and not _given(argv, "run.dir")
    if _given(argv, "model.path") and cfg.model.path:
        folder = resolve_path(str(cfg.model.path))
    else:
        folder = run_dir / "export"
    if not (folder / "config.json").exists():
        raise UserError(f"no exported model at {folder} (config.json missing): pass model.path=<export folder>, "
                        f"or run.dir=<run> whose training finished, or eval.step=N for a checkpoint of run.dir")
    if cfg.eval.out_dir:
        out = resolve_path(str(cfg.eval.out_dir))
    elif bare_model:  # results belong with the model evaluated, not with the default run folder
        out = folder.parent / "eval" / folder.name
    else:
        out = run_dir / "eval" / "export"
    return folder, out, "export"


@exits_cleanly_on_user_error
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # A bare model.path is evaluated as configured here; a run (run.dir, or the default run) on its saved config.
    bare_model = _given(argv, "model.path") and not _given(argv, "run.dir")
    cfg = load_config(argv) if bare_model else load_run_config(argv)
    folder, out, tag = resolve_target(cfg, argv)
    results = evaluate_model_folder(cfg, folder, out, tag=tag)
    return 0 if results else 1


if __name__ == "__main__":
    exit_process(main())
