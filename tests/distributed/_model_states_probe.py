"""One rank: build the recipe's model under ZeRO-3 exactly as training does, and write the bytes this
rank actually holds for model states (parameter partitions, gradient partitions, optimizer state),
counted over unique storages, to ``$PROBE_OUT/rank<R>-<variant>.json``.

Started once per rank by ``_job.run_ranks``; arguments are Hydra overrides; ``PROBE_VARIANTS`` is a
JSON list of extra override lists, one model per entry.
"""

import datetime
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import deepspeed  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from llama3zh_dist.config import load_config  # noqa: E402
from llama3zh_dist.deepspeed_config import build_deepspeed_config, build_optimizer  # noqa: E402
from llama3zh_dist.model import build_model  # noqa: E402


def held_bytes(engine) -> dict:
    """Bytes of the storages behind this rank's ZeRO-3 state, each storage counted once."""
    opt = engine.optimizer
    seen: dict[int, int] = {}

    def add(t):
        if isinstance(t, torch.Tensor) and t.numel() > 1:
            st = t.untyped_storage()
            seen[st.data_ptr()] = st.nbytes()

    params = list(engine.module.parameters())
    for p in params:
        add(p.ds_tensor)
    param_bytes = sum(seen.values())
    for t in opt.fp32_partitioned_groups_flat:
        add(t)
    add(opt.grad_partitions_flat_buffer)
    for state in opt.optimizer.state.values():
        for v in state.values():
            add(v)
    moments = sum(1 for s in opt.optimizer.state.values() for k in s if k in ("exp_avg", "exp_avg_sq"))
    persistent = sum(p.numel() * p.element_size() for p in params if getattr(p, "ds_persist", False))
    return {"model_states": sum(seen.values()), "parameters": param_bytes, "moments": moments,
            "persistent": persistent, "numel": sum(p.ds_numel for p in params)}


def main() -> int:
    base = sys.argv[1:]
    deepspeed.init_distributed(dist_backend="gloo", timeout=datetime.timedelta(minutes=5))
    world, rank = dist.get_world_size(), dist.get_rank()
    out = Path(os.environ["PROBE_OUT"])
    for k, extra in enumerate(json.loads(os.environ["PROBE_VARIANTS"])):
        cfg = load_config([*base, *extra])
        ds = build_deepspeed_config(cfg, world)
        model = build_model(cfg, ds)
        groups = [{"params": [p for p in model.parameters() if len(p.ds_shape) >= 2], "weight_decay": 0.01},
                  {"params": [p for p in model.parameters() if len(p.ds_shape) < 2], "weight_decay": 0.0}]
        engine, _, _, _ = deepspeed.initialize(model=model, optimizer=build_optimizer(cfg, groups),  # as train.py
                                                model_parameters=groups, config=ds)
        # One optimizer step, so that Adam's moments exist as they do for the rest of a run.
        logits = engine(input_ids=torch.randint(0, 1000, (1, 16)), use_cache=False).logits
        engine.backward(logits.float().mean())
        engine.step()
        (out / f"rank{rank}-{k}.json").write_text(json.dumps(held_bytes(engine)))
        model._llama3zh_hf_ds = None
        del engine, model
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
