"""One rank of the numerical fp32-accumulation check (test_bf16_accumulation.py).

A bf16 parameter ``w`` trained with the DeepSpeed config the trainer builds for bf16 (ZeRO-3, 2
micro-steps a step). Micro-step k's loss is ``(w * g_k).sum()``, so its gradient is exactly ``g_k``
(scaled by 1/2 for the accumulation, both exact in binary): ``g_1`` is of order 1 and ``g_2`` below half
a bf16 step of it, so summed in bf16 ``g_2`` rounds away entirely and summed in fp32 it stays.
Writes OUT_DIR/rank<r>.pt with the gradient DeepSpeed holds at the step boundary and both sums.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

N = 4096  # elements of w: several ZeRO partitions' worth of distinct values


class Probe:
    """Built lazily so that importing this file needs no torch."""

    @staticmethod
    def module():
        import torch

        class Scaled(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.w = torch.nn.Parameter(torch.ones(N))

            def forward(self, g):
                return (self.w * g).sum()

        return Scaled()


def gradients():
    """g_1 (magnitudes in [1, 2)) and g_2 (between 1/8 and 1/2 of a bf16 step of g_1), both bf16-exact."""
    import torch

    gen = torch.Generator().manual_seed(0)
    g1 = (1 + torch.rand(N, generator=gen)).to(torch.bfloat16)
    sign = torch.where(torch.rand(N, generator=gen) < 0.5, -1.0, 1.0)
    g1 = (g1.float() * sign).to(torch.bfloat16)
    step = 2.0 ** -7  # bf16 spacing in [1, 2): 8 significant bits
    g2 = (step * (0.125 + 0.375 * torch.rand(N, generator=gen)) * sign).to(torch.bfloat16)
    return g1, g2


def main(out_dir: Path) -> None:
    import deepspeed
    import torch
    from deepspeed.utils import safe_get_full_grad

    from llama3zh_dist.config import load_config
    from llama3zh_dist.deepspeed_config import build_deepspeed_config, build_optimizer

    rank = int(os.environ["RANK"])
    deepspeed.init_distributed(dist_backend="gloo")
    cfg = load_config(["+experiment=quickstart", "model.dtype=bfloat16", "trainer.global_batch_size=4"])
    ds = build_deepspeed_config(cfg, int(os.environ["WORLD_SIZE"]))  # the trainer's config, unchanged
    model = Probe.module()
    params = list(model.parameters())
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=build_optimizer(cfg, [{"params": params}]),
                                           model_parameters=params, config=ds)
    g1, g2 = gradients()
    for g in (g1, g2):  # the same gradients on both ranks: the data-parallel mean is g itself
        engine.backward(engine(g))
    got = safe_get_full_grad(engine.module.w)  # the accumulated, reduced gradient before the update
    half = torch.tensor(0.5)  # DeepSpeed divides each micro-step's loss by the accumulation steps
    torch.save({"got": got.detach().float().cpu(),
                "fp32_sum": (g1.float() * half + g2.float() * half),
                "bf16_sum": (g1 * half.bfloat16() + g2 * half.bfloat16()).float(),
                "accumulation_steps": engine.gradient_accumulation_steps(),
                "param_dtype": str(engine.module.w.dtype)}, out_dir / f"rank{rank}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
