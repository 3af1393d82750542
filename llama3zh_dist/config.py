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
    if "--help" in overrides or "-h" in overrides:
        print(usage_text())
        raise SystemExit(0)
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
        raise UserError(explain_override_error(e, overrides)) from None
    finally:
        GlobalHydra.instance().clear()
    added = [o for o in overrides if o.startswith("+") and "=" in o and "." in _override_key(o)]
    if added and any(_unknown_key(_override_key(o), _schema_fields()) for o in added):
        # ``+key=`` appends a key Hydra does not know; one the schema lacks would be ignored silently.
        raise UserError(explain_override_error(ValueError("unknown key"), added))
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
    names = group_options(group)
    if group == "data":
        return ("no dataset chosen: " + " ".join(overrides) + " trains on the data you pick. Add "
                "data=llama3_chinese_chat (the Chinese chat mixture, see conf/data/llama3_chinese_chat.yaml), "
                f"or data=files data.files=[a.jsonl,...] data.format={'|'.join(FORMATS)}; "
                f"configs in conf/data/: {', '.join(names)}")
    return f"{' '.join(overrides)} needs a choice for {group}: add {group}=<name> ({', '.join(names)})"


def group_options(group: str) -> list[str]:
    """The choices of a config group: the YAML files of ``conf/<group>/`` (``_*.yaml`` are shared parts)."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml") if not p.name.startswith("_"))


def config_groups() -> list[str]:
    return sorted(p.name for p in CONF_DIR.iterdir() if p.is_dir())


def _schema_fields() -> dict[str, Any]:
    """Every key of the schema (``chat.prompt``, ``data.clean.near_dedup.enabled``, ...) and its type."""
    import dataclasses
    import typing

    from .schema import SCHEMAS

    out: dict[str, Any] = {}

    def walk(cls, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            typ = hints[f.name]
            inner = [a for a in typing.get_args(typ) if a is not type(None)]
            if typing.get_origin(typ) is typing.Union and len(inner) == 1:
                typ = inner[0]  # Optional[X]
            out[prefix + f.name] = typ
            if dataclasses.is_dataclass(typ):
                walk(typ, f"{prefix}{f.name}.")

    for name, cls in SCHEMAS.items():
        out[name] = cls
        walk(cls, f"{name}.")
    return out


def _unknown_key(key: str, fields: dict[str, Any]) -> bool:
    """``key`` is not in the schema (keys below a free-form field, a dict or list, are accepted)."""
    import dataclasses

    if key in fields:
        return False
    parts = key.split(".")
    for i in range(len(parts) - 1, 0, -1):
        parent = ".".join(parts[:i])
        if parent in fields:
            return dataclasses.is_dataclass(fields[parent])  # a typed section has no such key
    return parts[0] in fields  # an unknown top-level section is Hydra's business (+sweep=..., hydra.*)


def _override_key(o: str) -> str:
    return o.split("=", 1)[0].lstrip("+~")


_TYPE_NAMES = {float: "a number (float), e.g. 1e-5", int: "a whole number (int)", bool: "true or false",
               str: "text (str)"}


def explain_override_error(e: Exception, overrides: list[str]) -> str:
    """Hydra's compose error as the user's fix: the whole option list of a mistyped group option (and
    the closest one), the closest key of a mistyped key, the expected type of a badly typed value.

    Hydra cuts its option list short in one-line form, suggests ``+key=`` for a mistyped key (which
    then fails too) and says only "Error merging override" for a wrong type; the schema knows better.
    """
    import difflib

    text = str(e).strip()
    missing = re.search(r"Could not find '([\w/]+)/([^']+)'", text)
    if missing:
        group, name = missing.groups()
        options = group_options(group)
        close = difflib.get_close_matches(name, options, n=1, cutoff=0.5)
        hint = f"did you mean {group}={close[0]}? " if close else ""
        where = f"conf/{group}/" if (CONF_DIR / group).is_dir() else "conf/"
        return f"{group}={name}: no such option in {where}; {hint}the options are: {', '.join(options)}"
    fields = _schema_fields()
    for o in overrides:
        key = _override_key(o)
        if "=" not in o or "@" in key or "/" in key or (CONF_DIR / key).is_dir() or not _unknown_key(key, fields):
            continue
        close = difflib.get_close_matches(key, list(fields), n=1, cutoff=0.6)
        if close:
            return f"unknown setting {key!r}: did you mean `{close[0]}`? ({o} -> {close[0]}={o.split('=', 1)[1]})"
        section = key.split(".")[0]
        keys = sorted(k for k in fields if k.startswith(section + ".") and k.count(".") == 1)
        return f"unknown setting {key!r}; the settings of {section} are: {', '.join(keys)}"
    cause = e.__cause__ or e.__context__
    key = getattr(cause, "full_key", None)
    if type(cause).__name__ == "ValidationError" and key:
        given = next((o.split("=", 1)[1] for o in overrides if "=" in o and _override_key(o) == key), None)
        typ = fields.get(key)
        expected = _TYPE_NAMES.get(typ) or getattr(typ, "__name__", None) or str(cause).splitlines()[0]
        return f"{key}={given}: expected {expected}, not {given!r}"
    msg = text.splitlines()
    return f"bad command line {' '.join(overrides)!r}: {' '.join(msg[:3])}"


def usage_text() -> str:
    """``--help``: the command's own usage (its module docstring) and the config groups with their options."""
    import sys

    main = sys.modules.get("__main__")
    doc = (getattr(main, "__doc__", None) or "").strip()
    command = (getattr(main, "__spec__", None) and main.__spec__.name) or "llama3zh_dist"
    command = command.removesuffix(".__main__")
    lines = [doc or f"python -m {command} [overrides]", "",
             "Settings are Hydra overrides: key=value (trainer.lr=1e-5), group=option (data=files),",
             "+experiment=<name>. Config groups (conf/) and their options:"]
    for group in config_groups():
        lines.append(f"  {group:<11} {', '.join(group_options(group))}")
    sections = sorted({k.split('.')[0] for k in _schema_fields()})
    lines.append(f"Sections of keys: {', '.join(sections)} (see the README and SPEC.md for each key)")
    return "\n".join(lines)


def load_run_config(argv: list[str]) -> DictConfig:
    """The config a run saved (``run.dir/config.yaml``) with the command line's settings on top.

    What the commands that act on a finished run use (export, eval), so the run's model, data and
    evaluation settings apply at any step; keys a newer version added come from today's defaults.
    A ``run.dir`` given on the command line must exist.
    """
    cli = load_config(argv)
    given = any(_override_key(a) == "run.dir" for a in argv)
    run_dir = resolve_path(str(cli.run.dir))
    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file():
        if given and not run_dir.is_dir():
            raise UserError(f"run.dir={cli.run.dir}: no such run folder ({run_dir}); pass the folder of a "
                            "training run (run.dir=runs/<name>)")
        return cli
    try:
        saved = OmegaConf.load(saved_path)
    except Exception as e:  # noqa: BLE001 - one clear message
        raise UserError(f"{saved_path} is unreadable ({e}); fix or remove it") from None
    cfg = OmegaConf.merge(OmegaConf.create(OmegaConf.to_container(cli)), saved)
    absent = object()
    for key in (_override_key(a) for a in argv if "=" in a):
        value = OmegaConf.select(cli, key, default=absent)
        if key and "@" not in key and value is not absent:
            OmegaConf.update(cfg, key, value, merge=False, force_add=True)
    return cfg


def require_run_dir(cfg: DictConfig, argv: list[str]) -> None:
    """A ``run.dir`` typed on the command line names a folder that exists (else one clear error)."""
    if any(_override_key(a) == "run.dir" for a in argv) and not resolve_path(str(cfg.run.dir)).is_dir():
        raise UserError(f"run.dir={cfg.run.dir}: no such run folder; pass the folder of a training run "
                        "(run.dir=runs/<name>) or model.path=<export folder>")


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
