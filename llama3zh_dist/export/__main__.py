"""python -m llama3zh_dist.export run.dir=... [export.step=N] [export.dtype=bfloat16] [export.max_shard_size=5GB]
   [export.gguf=[f16,q8_0]]
python -m llama3zh_dist.export model.path=<export folder> export.gguf=[f16,q8_0]

Consolidates a complete checkpoint of ``run.dir`` into ``run.dir/export``. The resolved config the run
saved (``run.dir/config.yaml``) is the base, so the model path and export settings of the run apply;
settings given on the command line win. The second form adds GGUF files to an existing export folder
(and rewrites its model card when the folder is a run's export).
"""

from __future__ import annotations

import json
import pathlib
import sys

from llama3zh_dist.errors import UserError, exits_cleanly_on_user_error
from llama3zh_dist.process_exit import exit_process


def compose(argv: list[str]):
    """The run's saved config, with the command-line overrides (validated by ``load_config``) on top."""
    from llama3zh_dist.config import load_run_config

    return load_run_config(argv)


@exits_cleanly_on_user_error
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    keys = [a.split("=", 1)[0].lstrip("+") for a in argv]
    wants_help = bool({"-h", "--help"} & set(argv))
    if not wants_help and "run.dir" not in keys and "model.path" in keys:
        return _gguf_of_export(argv)
    if not wants_help and "run.dir" not in keys:
        raise UserError("say which run to export: python -m llama3zh_dist.export run.dir=runs/<name> "
                        "[export.step=N] [export.dtype=bfloat16] [export.max_shard_size=5GB]")
    cfg = compose(argv)
    from .core import export_run_summary

    s = export_run_summary(cfg)
    out = s["out_dir"]
    brief = {k: s[k] for k in ("out_dir", "step", "dtype", "num_parameters", "shards", "seconds", "peak_rss_bytes")}
    if s.get("verification"):
        brief["verification"] = s["verification"]
    print(json.dumps(brief, indent=1), file=sys.stderr, flush=True)
    print(out, flush=True)
    return 0


def _gguf_of_export(argv: list[str]) -> int:
    """GGUF files (and the card) for an existing export folder given as ``model.path``."""
    from llama3zh_dist.config import load_config

    cfg = load_config(argv)
    folder = pathlib.Path(str(cfg.model.path))
    if not (folder / "config.json").is_file() or not (any(folder.glob("*.safetensors"))):
        raise UserError(f"model.path={folder}: not an export folder (config.json and *.safetensors); give "
                        "run.dir=<run> to export a run, or the folder an export wrote")
    types = list(cfg.export.gguf or [])
    if not types:
        raise UserError("say which GGUF files to write: export.gguf=[f16] (any of bf16, f16, q8_0)")
    from .extras import add_gguf

    files = add_gguf(folder, types, say=lambda m: print(m, file=sys.stderr, flush=True))
    run_dir = folder.resolve().parent
    if (folder / "README.md").is_file() and (run_dir / "config.yaml").is_file():
        from .card import write_card

        write_card(folder, run_dir)
    print(json.dumps(files, indent=1), file=sys.stderr, flush=True)
    print(folder, flush=True)
    return 0


if __name__ == "__main__":
    exit_process(main())
