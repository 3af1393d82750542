"""The best trial's settings as a ready-to-run experiment file, ``conf/experiment/<name>.yaml``:
only what differs from the experiment the sweep ran, checked to compose back to the trial."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from ..config import CONF_DIR, load_config
from ..fileio import atomic_write_text
from .space import param_overrides

# Keys a trial gets from the sweep itself; they never reach the best-config experiment file.
RUN_KEYS = ("run.dir", "run.name", "logger.group", "data.out_dir")


def _compose_choices(overrides: list[str]) -> tuple[DictConfig, dict[str, str]]:
    """The composed config and the chosen option of every config group."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()
    choices = {k: v for k, v in OmegaConf.to_container(cfg.hydra.runtime.choices).items()
               if not k.startswith("hydra/") and v is not None}
    with open_dict(cfg):
        del cfg["hydra"]
    OmegaConf.resolve(cfg)
    return cfg, choices


def _diff(new: Any, base: Any, prefix: str = "") -> dict:
    out: dict = {}
    for k, v in new.items():
        key = f"{prefix}{k}"
        if key in RUN_KEYS or key == "sweep":
            continue
        b = base.get(k) if isinstance(base, dict) else None
        if isinstance(v, dict) and isinstance(b, dict):
            sub = _diff(v, b, key + ".")
            if sub:
                out[k] = sub
        elif not isinstance(base, dict) or k not in base or v != b:
            out[k] = v
    return out


def write_best_experiment(name: str, argv: list[str], params: dict[str, Any], header: list[str]) -> Path:
    """``conf/experiment/<name>.yaml``: the best trial's settings on top of the experiment it swept."""
    trial_cfg, choices = _compose_choices([*argv, *param_overrides(params)])
    base_exp = choices.get("experiment")
    groups = {g: c for g, c in choices.items() if g not in ("experiment", "sweep") and "/" not in g}
    if base_exp:
        _, base_choices = _compose_choices([f"+experiment={base_exp}"])
    else:
        base_choices = {}
    group_overrides = {g: c for g, c in groups.items() if base_choices.get(g) != c}
    base_cfg, _ = _compose_choices(([f"+experiment={base_exp}"] if base_exp else [])
                                   + [f"{g}={c}" for g, c in group_overrides.items()])
    values = _diff(OmegaConf.to_container(trial_cfg), OmegaConf.to_container(base_cfg))
    for key, v in params.items():  # the swept values, always spelled out (even where equal to the base)
        *parents, leaf = key.split(".")
        node = values
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = v
    values.setdefault("run", {})["name"] = name
    defaults: list[Any] = ([base_exp] if base_exp else []) + [{f"override /{g}": c} for g, c in group_overrides.items()] + ["_self_"]
    body = OmegaConf.to_yaml(OmegaConf.create({"defaults": defaults, **values}))
    path = CONF_DIR / "experiment" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "# @package _global_\n" + "".join(f"# {h}\n" if h else "#\n" for h in header) + body)
    # It must compose to the best trial's settings, or it is no use.
    check = load_config([f"+experiment={name}"])
    for k, v in params.items():
        got = OmegaConf.select(check, k)
        if got != v and not (isinstance(v, float) and isinstance(got, float) and math.isclose(got, v)):
            raise RuntimeError(f"{path}: {k} composes to {got!r}, expected {v!r}")
    return path
