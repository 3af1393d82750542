"""Compose, validate and save the one Hydra config tree in ``conf/``.

Every entry point composes the same tree with the same overrides, so ``trainer.lr=1e-5`` means the
same thing to ``python -m llama3zh_dist``, ``.prep``, ``.export``, ``.chat`` and ``.sweep``. We use
Hydra's compose API rather than ``@hydra.main`` because each rank re-composes the config and must
not get Hydra's per-run output folders, working-directory changes or logging takeover; overrides,
config groups and ``+experiment=...`` work exactly as in a Hydra app.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from .errors import UserError
from .schema.data import FORMATS

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = Path(os.environ.get("LLAMA3ZH_CONF_DIR", PROJECT_ROOT / "conf"))

# Names whose values never reach a file, a log or W&B.
SECRET_NAME = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL)", re.IGNORECASE)
REDACTED = "***REDACTED***"


def load_config(overrides: list[str] | None = None) -> DictConfig:
    """Compose ``conf/config.yaml`` with Hydra command-line overrides.

    Bad overrides (unknown key, unknown group option, syntax) become a UserError naming them.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    overrides = list(overrides or [])
    for o in overrides:
        if o.startswith("-"):
            raise UserError(
                f"unknown option {o!r}: settings are Hydra overrides such as trainer.lr=1e-5 "
                "or +experiment=quickstart (see README)"
            )
    from .schema import ConfigValueError, register, validate

    register()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name="config", overrides=overrides)
    except (HydraException, OmegaConfBaseException) as e:
        group = re.match(r"You must specify '([\w/]+)'", str(e).strip())
        if group:
            raise UserError(_choose_group_message(group.group(1), overrides)) from None
        msg = str(e).strip().splitlines()
        raise UserError(f"bad command line {' '.join(overrides)!r}: {' '.join(msg[:3])}") from None
    finally:
        GlobalHydra.instance().clear()
    try:
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as e:
        raise UserError(f"config cannot be resolved: {e}") from None
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise UserError(
            "missing required setting(s): "
            + ", ".join(missing)
            + " (set them on the command line, e.g. data.files=[a.jsonl] data.format=sharegpt)"
        )
    try:
        validate(cfg)
    except ConfigValueError as e:
        raise UserError(f"{e.key}={e.value!r} is rejected: {e.reason}") from None
    return cfg


def _choose_group_message(group: str, overrides: list[str]) -> str:
    """An experiment that leaves a group to the user (``override /data: ???``) and no choice given."""
    names = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml") if not p.name.startswith("_"))
    if group == "data":
        return ("no dataset chosen: " + " ".join(overrides) + " trains on the data you pick. Add "
                "data=llama3_chinese_chat (the Chinese chat mixture, see conf/data/llama3_chinese_chat.yaml), "
                f"or data=files data.files=[a.jsonl,...] data.format={'|'.join(FORMATS)}; "
                f"configs in conf/data/: {', '.join(names)}")
    return f"{' '.join(overrides)} needs a choice for {group}: add {group}=<name> ({', '.join(names)})"


def redact(obj: Any) -> Any:
    """A plain container copy of ``obj`` with every value under a secret-looking key replaced."""
    if isinstance(obj, DictConfig):
        obj = OmegaConf.to_container(obj, resolve=True)
    if isinstance(obj, dict):
        return {
            k: (REDACTED if SECRET_NAME.search(str(k)) and v not in (None, "") else redact(v))
            for k, v in obj.items()
        }
    if isinstance(obj, list):
        return [redact(v) for v in obj]
    if isinstance(obj, str):
        return redact_text(obj)
    return obj


def secret_values() -> list[str]:
    """Values of environment variables whose names look secret (to scrub from any text)."""
    return [v for k, v in os.environ.items() if SECRET_NAME.search(k) and len(v) >= 6]


def redact_text(text: str) -> str:
    for v in secret_values():
        text = text.replace(v, REDACTED)
    return text


def save_config(cfg: DictConfig, path: Path) -> None:
    """Write the resolved, redacted config (``run.dir/config.yaml``) atomically."""
    from .fileio import atomic_write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, OmegaConf.to_yaml(OmegaConf.create(redact(cfg))))


def resolve_path(p: str | os.PathLike) -> Path:
    """A user path: absolute, or relative to the current directory, else to the project root."""
    path = Path(os.path.expanduser(str(p)))
    if path.is_absolute() or path.exists():
        return path.resolve() if path.exists() else path.absolute()
    alt = PROJECT_ROOT / path
    return alt if alt.exists() else path.absolute()
