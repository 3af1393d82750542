"""One rank of the bf16 gradient-accumulation check (test_bf16_accumulation.py). Builds the trainer's
model, DeepSpeed config and optimizer for bf16 with 2 micro-steps a step, runs one micro-step and
writes OUT_DIR/rank<r>.json with the dtypes ZeRO-3 accumulates and reduces in."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def main(out_dir: Path, data_dir: Path) -> None:
    import deepspeed
    import torch

    from llama3zh_dist.config import load_config
    from llama3zh_dist.data.loader import StepBatches
    from llama3zh_dist.deepspeed_config import build_deepspeed_config, build_optimizer
    from llama3zh_dist.model import build_model, supervised_loss_sum

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    deepspeed.init_distributed(dist_backend="gloo")
    cfg = load_config(["+experiment=quickstart", "model.dtype=bfloat16", "trainer.global_batch_size=4"])
    ds = build_deepspeed_config(cfg, world)
    model = build_model(cfg, ds)
    params = [p for p in model.parameters() if p.requires_grad]
    engine, optimizer, _, _ = deepspeed.initialize(model=model, optimizer=build_optimizer(cfg, [{"params": params}]),
                                                   model_parameters=params, config=ds)
    micro = StepBatches(data_dir, global_batch_rows=4, micro_batch_size=1, rank=rank, world_size=world,
                        seed=42).micro_batches(1)
    engine.backward(supervised_loss_sum(engine, micro[0], torch.device("cpu")))
    engine.step()  # not a boundary: the gradient stays in the accumulation buffer
    report = {
        "gradient_accumulation_steps": engine.gradient_accumulation_steps(),
        "param_dtype": str(next(model.parameters()).dtype),
        "accumulation_dtype": str(optimizer.gradient_accumulation_dtype),
        "accumulation_buffer_dtype": str(optimizer.grad_partitions_flat_buffer.dtype),
        "accumulated_nonzero": bool(optimizer.grad_partitions_flat_buffer.abs().sum() > 0),
        "reduce_dtype": str(optimizer.communication_data_type),
    }
    (out_dir / f"rank{rank}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
