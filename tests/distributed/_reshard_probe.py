"""One rank of the real recipe: resume ``run.dir`` (whatever world size saved it), then save the state
it loaded, unchanged, as a checkpoint of this world size in ``$PROBE_OUT/checkpoints``.

Started once per rank by ``_job.run_ranks`` with RANK/WORLD_SIZE/MASTER_* set, and
``LLAMA3ZH_DATA_DIR`` pointing at the prepared dataset; arguments are Hydra overrides.
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch.distributed as dist  # noqa: E402

from llama3zh_dist.checkpoint import CheckpointManager  # noqa: E402
from llama3zh_dist.config import load_config  # noqa: E402
from llama3zh_dist.train import SFTRecipe  # noqa: E402


def main() -> int:
    cfg = load_config(sys.argv[1:])
    recipe = SFTRecipe(cfg, Path(os.environ["LLAMA3ZH_DATA_DIR"]))
    recipe.setup()
    assert recipe.step > 0, "nothing was resumed"
    recipe.ckpt = CheckpointManager(Path(os.environ["PROBE_OUT"]), rank=recipe.rank,
                                    world_size=recipe.world_size, keep=2)
    recipe.saved_step = -1
    recipe.save_checkpoint()
    recipe.metrics.close()
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
