"""One rank of the real recipe: resume ``run.dir`` (whatever world size saved it), then save the state
it loaded, unchanged, as a checkpoint of this world size in ``$PROBE_OUT/checkpoints``.

Started once per rank by ``_job.run_ranks`` with RANK/WORLD_SIZE/MASTER_* set, and
``LLAMA3ZH_DATA_DIR`` pointing at the prepared dataset; arguments are Hydra overrides.
"""

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch.distributed as dist  # noqa: E402

from llama3zh_dist.checkpoint import CheckpointManager  # noqa: E402
from llama3zh_dist.config import load_config  # noqa: E402
from llama3zh_dist.train import SFTRecipe  # noqa: E402


def optimizer_steps(engine) -> list[dict]:
    """Per ZeRO sub-group (its flat fp32 partition is the torch optimizer's state key): its ``step``
    tensor (identity, value, device, dtype) and the devices of its parameter and Adam moments."""
    zero = engine.optimizer
    inner = zero.optimizer
    out = []
    for i, p in enumerate(zero.fp32_partitioned_groups_flat):
        state = inner.state[p]
        step = state["step"]
        group = inner.param_groups[zero.sub_group_to_group_id[i]]
        out.append({"step_id": id(step), "step": float(step), "step_device": str(step.device),
                    "step_dtype": str(step.dtype), "param_device": str(p.device),
                    "moment_devices": sorted({str(state[k].device) for k in ("exp_avg", "exp_avg_sq")}),
                    "optimizer": type(inner).__name__, "fused": bool(group.get("fused"))})
    return out


def main() -> int:
    cfg = load_config(sys.argv[1:])
    recipe = SFTRecipe(cfg, Path(os.environ["LLAMA3ZH_DATA_DIR"]))
    recipe.setup()
    assert recipe.step > 0, "nothing was resumed"
    report = {"after_load": optimizer_steps(recipe.engine)}
    recipe.ckpt = CheckpointManager(Path(os.environ["PROBE_OUT"]), rank=recipe.rank,
                                    world_size=recipe.world_size, keep=2)
    recipe.saved_step = -1
    recipe.save_checkpoint()
    recipe._train_step(recipe.step + 1)  # one update after the resume: each group's step advances by one
    report["after_one_update"] = optimizer_steps(recipe.engine)
    out = Path(os.environ["PROBE_OUT"]) / f"optimizer_steps_rank{recipe.rank}.json"
    out.write_text(json.dumps(report, indent=1))
    recipe.metrics.close()
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
