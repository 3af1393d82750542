"""Where serving reads and writes: the model folders, their ids, the output folder, the API key."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from omegaconf import DictConfig

from ..config import resolve_path

API_KEY_ENV = "LLAMA3ZH_API_KEY"


def _given(argv, key: str) -> Optional[str]:
    for a in argv:
        k, _, v = a.partition("=")
        if k.lstrip("+") == key:
            return v
    return None


def out_dir_for(cfg: DictConfig, argv) -> Path:
    """serve.out_dir; else run.dir/serve when run.dir is on the command line; else ./serve_out."""
    if cfg.serve.out_dir:
        return Path(os.path.expanduser(cfg.serve.out_dir)).absolute()
    if _given(argv, "run.dir") is not None:
        return resolve_path(cfg.run.dir) / "serve"
    return Path("serve_out").absolute()


def model_ids(cfg: DictConfig, argv) -> list[tuple[str, Path]]:
    """(model id, folder) per served export: the id is the path as given (as vLLM names a model);
    with run.dir alone, the id is run.dir/export as given."""
    from ..chat import resolve_model_folder

    folder = resolve_model_folder(cfg, argv)
    given = _given(argv, "model.path")
    first = given if given else (str(Path(_given(argv, "run.dir") or cfg.run.dir) / "export"))
    out = [(first, folder)]
    if cfg.serve.compare:
        out.append((str(cfg.serve.compare), resolve_path(cfg.serve.compare)))
    if len(out) == 2 and out[0][0] == out[1][0]:
        from ..errors import UserError

        raise UserError(f"serve.compare={cfg.serve.compare} is the model itself: compare two different exports")
    return out


def api_key(cfg: DictConfig) -> Optional[str]:
    return cfg.serve.api_key or os.environ.get(API_KEY_ENV) or None
