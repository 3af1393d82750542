"""The search space: ``sweep.space`` (Hydra leaves) as Ray Tune domains and Hydra overrides,
and the data settings each trial needs prepared before the sweep starts."""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from ..errors import UserError

SPACE_TYPES = ("loguniform", "uniform", "quniform", "randint", "lograndint", "choice", "grid")


def flatten_space(space: Any, prefix: str = "") -> dict[str, dict]:
    """``{trainer: {lr: {type: loguniform, ...}}}`` -> ``{"trainer.lr": {type: loguniform, ...}}``."""
    out: dict[str, dict] = {}
    if space is None:
        return out
    if isinstance(space, DictConfig):
        space = OmegaConf.to_container(space, resolve=True)
    if not isinstance(space, dict):
        raise UserError(f"sweep.space.{prefix.rstrip('.')} must be a mapping of config keys to distributions")
    for k, v in space.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and "type" in v:
            if v["type"] not in SPACE_TYPES:
                raise UserError(f"sweep.space.{key}.type={v['type']}: use one of {', '.join(SPACE_TYPES)}")
            out[key] = v
        elif isinstance(v, dict):
            out.update(flatten_space(v, key + "."))
        else:
            raise UserError(
                f"sweep.space.{key}={v!r}: give a distribution, e.g. {{type: choice, values: [...]}} or "
                "{type: loguniform, lower: 1e-6, upper: 1e-4}; fixed settings go outside sweep.space"
            )
    return out


def _need(spec: dict, key: str, name: str):
    if spec.get(key) is None:
        raise UserError(f"sweep.space.{name}: type {spec['type']} needs '{key}'")
    return spec[key]


def tune_domain(name: str, spec: dict):
    from ray import tune

    kind = spec.get("type")
    if kind not in SPACE_TYPES:
        raise UserError(f"sweep.space.{name}.type={kind!r}: use one of {', '.join(SPACE_TYPES)}")
    if kind in ("choice", "grid"):
        values = list(_need(spec, "values", name))
        if not values:
            raise UserError(f"sweep.space.{name}.values is empty")
        return tune.grid_search(values) if kind == "grid" else tune.choice(values)
    lo, hi = float(_need(spec, "lower", name)), float(_need(spec, "upper", name))
    if not lo < hi:
        raise UserError(f"sweep.space.{name}: lower={lo} must be below upper={hi}")
    if kind in ("loguniform", "lograndint") and lo <= 0:
        raise UserError(f"sweep.space.{name}: {kind} needs lower > 0 (got {lo})")
    if kind == "loguniform":
        return tune.loguniform(lo, hi)
    if kind == "uniform":
        return tune.uniform(lo, hi)
    if kind == "quniform":
        return tune.quniform(lo, hi, float(_need(spec, "q", name)))
    if kind == "randint":
        return tune.randint(int(lo), int(hi))
    return tune.lograndint(int(lo), int(hi))


def representative(spec: dict) -> Any:
    """One value of a distribution, to check the config before the sweep starts."""
    if spec["type"] in ("choice", "grid"):
        return list(spec["values"])[0]
    lo, hi = float(spec["lower"]), float(spec["upper"])
    if spec["type"] in ("randint", "lograndint"):
        return int(lo)
    return math.sqrt(lo * hi) if spec["type"] == "loguniform" else (lo + hi) / 2


def hydra_value(v: Any) -> str:
    """A Python value as a Hydra override value."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(hydra_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ",".join(f"{k}:{hydra_value(x)}" for k, x in v.items()) + "}"
    s = str(v)
    if re.fullmatch(r"[A-Za-z_/.\-][\w/.\-]*", s) and s not in ("null", "true", "false"):
        return s
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"


def param_overrides(params: dict[str, Any]) -> list[str]:
    return [f"{k}={hydra_value(v)}" for k, v in params.items()]


def _flat_points(points: Any) -> list[dict[str, Any]]:
    """``sweep.points_to_evaluate`` entries (nested or dotted keys) as flat dotted dicts."""
    if isinstance(points, (DictConfig, ListConfig)):
        points = OmegaConf.to_container(points, resolve=True)
    out = []
    for p in points or []:
        flat: dict[str, Any] = {}

        def walk(d: dict, prefix: str = "") -> None:
            for k, v in d.items():
                if isinstance(v, dict):
                    walk(v, f"{prefix}{k}.")
                else:
                    flat[f"{prefix}{k}"] = v

        if not isinstance(p, dict):
            raise UserError(f"sweep.points_to_evaluate: each entry is a mapping of settings, got {p!r}")
        walk(p)
        out.append(flat)
    return out




# Data: prepared once per distinct data setting, before any trial
def _data_keys(space: dict[str, dict]) -> list[str]:
    return [k for k in space if k.startswith("data.") or k in ("trainer.seed", "model.path")]


def prepared_dir(run_dir: Path, data_params: dict[str, Any]) -> Path:
    if not data_params:
        return run_dir / "prepared" / "data"
    tag = hashlib.sha256(json.dumps(data_params, sort_keys=True).encode()).hexdigest()[:10]
    return run_dir / "prepared" / f"data-{tag}"


def data_combinations(space: dict[str, dict], points: list[dict]) -> list[dict[str, Any]]:
    """Every distinct value set of the data-shaping parameters the sweep can produce."""
    keys = _data_keys(space)
    for k in keys:
        if space[k]["type"] not in ("choice", "grid"):
            raise UserError(
                f"sweep.space.{k} is type {space[k]['type']}: settings that change the prepared data "
                "(data.*, trainer.seed, model.path) must be type choice or grid, so that the data is "
                "prepared once per value before the trials start"
            )
    combos = [dict(zip(keys, vals)) for vals in itertools.product(*(list(space[k]["values"]) for k in keys))]
    for p in points:
        combo = {k: p[k] for k in keys if k in p}
        if len(combo) == len(keys) and combo not in combos:
            combos.append(combo)
    return combos


