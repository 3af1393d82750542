"""Which checkpoint tensor becomes which exported tensor: the model config's state dict (built on the
meta device) matched by name and shape against the ZeRO-3 checkpoint, tied weights included."""

from __future__ import annotations

from llama3zh_dist.errors import UserError

from .zero3 import Zero3Checkpoint


def names_in_checkpoint(ckpt: Zero3Checkpoint) -> dict[str, tuple[tuple[int, ...], bool]]:
    """name -> (shape, is_parameter) as the checkpoint holds them: in the module's state-dict order, a
    tied tensor once under its first name (as ``save_pretrained`` writes it). For every checkpoint this
    project saves that is what the model config implies, so the export can start writing before
    transformers has built the config's model (and checks it against that afterwards)."""
    out: dict[str, tuple[tuple[int, ...], bool]] = {}
    seen: set[str] = set()
    order = [n for n in ckpt.state_dict_names if n in ckpt.sources or n in ckpt.shared_params]
    listed = set(order)
    for name in order + [n for n in ckpt.sources if n not in listed]:
        src = name if name in ckpt.sources else ckpt.shared_params[name]
        if src in seen or src not in ckpt.sources:
            continue
        seen.add(src)
        out[name] = (tuple(ckpt.sources[src].shape), ckpt.sources[src].kind != "buffer")
    return out


def match_names(ckpt: Zero3Checkpoint, expected: dict) -> dict[str, str]:
    """export name -> checkpoint tensor name; UserError on any mismatch with the model config."""
    alias: dict[str, str] = {}
    for a, b in ckpt.shared_params.items():
        alias.setdefault(a, b)
        alias.setdefault(b, a)
    have = set(ckpt.sources)
    prefix = ""
    first = next(iter(expected))
    if first not in have and first not in alias:
        cands = [n[: -len(first)] for n in have if n.endswith(first)]
        if len(cands) == 1:
            prefix = cands[0]
    mapping: dict[str, str] = {}
    missing, bad_shape = [], []
    for name, (shape, _) in expected.items():
        src = prefix + name
        if src not in have and alias.get(src) in have:
            src = alias[src]
        if src not in have:
            missing.append(name)
            continue
        if ckpt.sources[src].shape != tuple(shape):
            bad_shape.append(f"{name}: checkpoint {list(ckpt.sources[src].shape)} vs config {list(shape)}")
            continue
        mapping[name] = src
    used = set(mapping.values())
    extra = [n for n in have - used if n not in alias or alias[n] not in used]
    extra = [n for n in extra if not n.startswith(prefix) or n[len(prefix):] not in expected]
    problems = []
    if missing:
        problems.append(f"{len(missing)} tensor(s) of the model config missing from the checkpoint (e.g. {missing[0]})")
    if bad_shape:
        problems.append(f"{len(bad_shape)} shape mismatch(es) (e.g. {bad_shape[0]})")
    if extra:
        problems.append(f"{len(extra)} checkpoint tensor(s) unknown to the model config (e.g. {sorted(extra)[0]})")
    if problems:
        raise UserError(f"checkpoint {ckpt.dir} does not match its config.json: " + "; ".join(problems))
    return mapping
