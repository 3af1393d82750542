"""``python -m llama3zh_dist [overrides]``: prepare data, train, export.

Outside a distributed launch this process is the node's launcher: it checks the config, prepares
the data (before any process group exists) and starts ``cluster.nproc_per_node`` ranks. Under
torchrun (or srun with one task per GPU), RANK/WORLD_SIZE are set and it runs as that rank.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from .config import load_config
from .errors import exits_cleanly_on_user_error
from .launch import ensure_prepared_data, in_worker_mode, launch_local_ranks, node_rank
from .preflight import check, check_data
from .process_exit import exit_process


@exits_cleanly_on_user_error
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    cfg = load_config(argv)
    if in_worker_mode():
        world = int(os.environ["WORLD_SIZE"])
        data_dir = os.environ.get("LLAMA3ZH_DATA_DIR")
        if data_dir is None:  # started by torchrun/srun directly: global rank 0 prepares
            check(cfg, world_size=world)
            data_dir = ensure_prepared_data(cfg, is_preparer=int(os.environ["RANK"]) == 0)
            check_data(cfg, Path(data_dir))
        from .train import run_rank

        return run_rank(cfg, Path(data_dir))
    check(cfg)
    data_dir = ensure_prepared_data(cfg, is_preparer=node_rank(cfg) == 0)
    check_data(cfg, Path(data_dir))
    return launch_local_ranks(cfg, argv, data_dir)


if __name__ == "__main__":
    exit_process(main())
