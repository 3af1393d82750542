"""The model a config describes, without its weights: expected names/shapes, and a streaming forward.

``skeleton(config)`` builds the ``transformers`` model with every parameter on the ``meta`` device but
real buffers (rotary frequencies), so it costs no memory whatever the model size. It tells which tensors
an export must hold (tied weights once, as ``save_pretrained`` writes them) and, with
``streaming_logits``, runs the exported weights one module at a time: each module's parameters are read
from the safetensors files just before it runs and dropped right after, so checking the logits of a
70B export needs the memory of its largest layer, not of the model.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict

import torch


@contextlib.contextmanager
def _params_on_meta():
    """Parameters registered inside go to the meta device; buffers stay real (like accelerate's
    ``init_empty_weights(include_buffers=False)``)."""
    orig = torch.nn.Module.register_parameter

    def register_parameter(self, name, param):
        if param is not None and param.device.type != "meta":
            param = torch.nn.Parameter(param.detach().to("meta"), requires_grad=param.requires_grad)
        orig(self, name, param)

    torch.nn.Module.register_parameter = register_parameter
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = orig


def skeleton(config, trust_remote_code: bool = False):
    from transformers import AutoModelForCausalLM

    with _params_on_meta():
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    model.eval()
    return model


def expected_tensors(model) -> "OrderedDict[str, tuple[tuple[int, ...], bool]]":
    """name -> (shape, is_parameter) of the state dict ``save_pretrained`` writes: a tensor shared by
    several names (tied embeddings) is kept once, under its first name."""
    out: "OrderedDict[str, tuple[tuple[int, ...], bool]]" = OrderedDict()
    seen: set[int] = set()
    params = {id(p) for p in model.parameters()}
    for name, t in model.state_dict(keep_vars=True).items():
        if id(t) in seen:
            continue
        seen.add(id(t))
        out[name] = (tuple(t.shape), id(t) in params)
    return out


def canonical_param_names(model) -> dict[int, str]:
    """id(parameter) -> the name it is stored under (the first name, as in ``expected_tensors``)."""
    names: dict[int, str] = {}
    for name, t in model.state_dict(keep_vars=True).items():
        names.setdefault(id(t), name)
    return names


BIG_WEIGHT = 1 << 24  # elements: Linear weights above this are applied in row blocks
ROW_BLOCK = 1 << 22  # elements per block


@torch.no_grad()
def streaming_logits(model, get_slice, input_ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Logits of ``model`` for ``input_ids``, with the weights read per module from the export.

    ``get_slice(name)`` returns a safetensors slice (``[a:b]`` reads rows, ``get_shape()``). Every
    module that owns parameters gets them (cast to ``dtype``) just before its forward and gives them
    back to the meta device right after. Embeddings read only the rows of the tokens used; a Linear
    with a huge weight (the LM head) is applied block of rows by block. So the memory needed is that of
    the largest ordinary layer, never of the vocabulary matrices.
    """
    import torch.nn.functional as F

    canon = canonical_param_names(model)
    handles = []

    def load(name):
        return get_slice(name)[:].to(dtype)

    def pre(module, args, kwargs):
        module._export_saved = dict(module._parameters)
        for pname, p in module._parameters.items():
            if p is None:
                continue
            if isinstance(module, torch.nn.Embedding) and pname == "weight":
                ids = args[0] if args else kwargs["input"]
                uniq, inverse = torch.unique(ids, return_inverse=True)
                sl = get_slice(canon[id(p)])
                rows = torch.cat([sl[int(i): int(i) + 1] for i in uniq]).to(dtype)
                module._parameters[pname] = torch.nn.Parameter(rows, requires_grad=False)
                args, kwargs = ((inverse,) + tuple(args[1:]), kwargs) if args else (args, {**kwargs, "input": inverse})
                continue
            module._parameters[pname] = torch.nn.Parameter(load(canon[id(p)]), requires_grad=False)
        return args, kwargs

    def post(module, args, output):
        module._parameters.update(module._export_saved)
        del module._export_saved

    def blocked_linear(module, name, x):
        sl = get_slice(name)
        out_f, in_f = sl.get_shape()
        rows = max(1, ROW_BLOCK // max(1, in_f))
        bias = module._parameters.get("bias")
        b = load(canon[id(bias)]) if bias is not None else None
        reader = getattr(sl, "read_rows", None)
        buf = torch.empty(rows * in_f, dtype=getattr(sl, "dtype", dtype)) if reader else None
        x = x.to(dtype)
        outs = []
        for a in range(0, out_f, rows):
            e = min(out_f, a + rows)
            w = reader(a, e, buf) if reader else sl[a:e]
            outs.append(F.linear(x, w.to(dtype), None if b is None else b[a:e]))
        return torch.cat(outs, dim=-1)

    patched = []
    for m in model.modules():
        if isinstance(m, torch.nn.Embedding):
            # The hook hands the embedding only the rows it looks up, so the pad id no longer
            # indexes into it; padding_idx only matters for gradients, not for these logits.
            m.padding_idx = None
        w = m._parameters.get("weight")
        if isinstance(m, torch.nn.Linear) and w is not None and w.numel() > BIG_WEIGHT:
            name = canon[id(w)]
            m.forward = (lambda mod, nm: (lambda x: blocked_linear(mod, nm, x)))(m, name)
            patched.append(m)
        elif any(p is not None for p in m._parameters.values()):
            handles.append(m.register_forward_pre_hook(pre, with_kwargs=True))
            handles.append(m.register_forward_hook(post))
    try:
        out = model(input_ids=input_ids, use_cache=False)
    finally:
        for h in handles:
            h.remove()
        for m in patched:
            del m.forward
    return out.logits.float()
