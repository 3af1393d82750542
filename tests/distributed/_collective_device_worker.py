"""One rank of a real quickstart training run whose collectives are checked for their device
(tests/distributed/test_collective_device.py). Run with RANK, WORLD_SIZE, MASTER_* set.

NCCL takes only tensors on the rank's CUDA device; gloo takes CPU tensors, so a CPU run cannot
tell the two apart by itself. This rank therefore trains on the CPU but gives the recipe's
collectives an accelerator device, ``cuda:<local rank>`` (EXPECTED below). This CPU build of torch
cannot allocate there, so a tensor asked for on that device is made on the CPU and tagged with
it (``Tagged``); every ``torch.distributed`` call made from llama3zh_dist code is checked for
tensors on EXPECTED and then runs on gloo with the CPU data. DeepSpeed's own collectives place
their tensors themselves and are not checked. Writes ``OUT_DIR/rank<r>.json``:
{"checked": [...], "violations": [...]}.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.overrides import TorchFunctionMode

EXPECTED = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
TENSOR_COLLECTIVES = ("all_reduce", "broadcast", "reduce", "all_gather", "all_gather_into_tensor",
                      "reduce_scatter", "reduce_scatter_tensor", "all_to_all_single", "gather", "scatter")
PACKAGE = str(Path(__file__).resolve().parents[2] / "llama3zh_dist")
checked: list[str] = []
violations: list[str] = []


class Tagged(torch.Tensor):
    """A CPU tensor that reports the device it was asked for."""

    __torch_function__ = torch._C._disabled_torch_function_impl

    @staticmethod
    def __new__(cls, data: torch.Tensor, device: torch.device):
        t = torch.Tensor._make_subclass(cls, data)
        t.tagged_device = device
        return t

    @property
    def device(self):
        return self.tagged_device


def _is_expected(device) -> bool:
    return device is not None and torch.device(device) == EXPECTED


class PlaceOnExpected(TorchFunctionMode):
    """Tensor creation / moves onto EXPECTED produce ``Tagged`` CPU tensors."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if _is_expected(kwargs.get("device")):
            kwargs["device"] = "cpu"
            return Tagged(func(*args, **kwargs), EXPECTED)
        if func in (torch.Tensor.to, torch.Tensor.cuda) and any(_is_expected(a) for a in args[1:] if isinstance(a, (str, torch.device))):
            rest = [a for a in args[1:] if not isinstance(a, (str, torch.device))]
            return Tagged(func(args[0], *rest, **kwargs), EXPECTED)
        return func(*args, **kwargs)


def _caller() -> str | None:
    """file:line of the first frame outside torch and this file, if it is llama3zh_dist code."""
    f = sys._getframe(2)
    while f is not None and ("/torch/" in f.f_code.co_filename or f.f_code.co_filename == __file__):
        f = f.f_back
    if f is None or not f.f_code.co_filename.startswith(PACKAGE):
        return None
    return f"{Path(f.f_code.co_filename).name}:{f.f_lineno}"


def _spy(name: str, real):
    def call(*args, **kwargs):
        where = _caller()
        tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
        tensors += [t for a in (*args, *kwargs.values()) if isinstance(a, (list, tuple)) for t in a if isinstance(t, torch.Tensor)]
        if where is not None:
            checked.append(f"{name} at {where}")
            for t in tensors:
                if t.device != EXPECTED:
                    violations.append(f"{name} at {where}: tensor on {t.device}, expected {EXPECTED}")
        unwrap = lambda a: a.as_subclass(torch.Tensor) if isinstance(a, Tagged) else a  # noqa: E731
        args = [unwrap(a) if not isinstance(a, list) else [unwrap(x) for x in a] for a in args]
        return real(*args, **{k: unwrap(v) for k, v in kwargs.items()})

    return call


def main(out_dir: Path, argv: list[str]) -> int:
    for name in TENSOR_COLLECTIVES:
        if hasattr(dist, name):
            setattr(dist, name, _spy(name, getattr(dist, name)))

    import llama3zh_dist.train as train
    from llama3zh_dist.__main__ import main as entry

    real_setup = train.SFTRecipe.setup

    def setup(self):
        real_setup(self)
        if hasattr(train, "Collectives"):
            self.comm = train.Collectives(EXPECTED)  # the recipe trains on CPU; its collectives use EXPECTED

    train.SFTRecipe.setup = setup
    with PlaceOnExpected():
        try:
            code = entry(argv)
        except SystemExit as e:
            code = e.code
    report = {"checked": checked, "violations": violations, "exit": code}
    (out_dir / f"rank{os.environ['RANK']}.json").write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), sys.argv[2:]))
