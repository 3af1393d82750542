"""python -m llama3zh_dist.export run.dir=... [export.step=N] [export.dtype=bfloat16] [export.max_shard_size=5GB]

Consolidates a complete checkpoint of ``run.dir`` into ``run.dir/export``. The resolved config the run
saved (``run.dir/config.yaml``) is the base, so the model path and export settings of the run apply;
settings given on the command line win.
"""

from __future__ import annotations

import json
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
    if not any(a.split("=", 1)[0].lstrip("+") == "run.dir" for a in argv) and not {"-h", "--help"} & set(argv):
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


if __name__ == "__main__":
    exit_process(main())
