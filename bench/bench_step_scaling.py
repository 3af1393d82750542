"""Step time against tokens per step on 2 CPU ranks (gloo, ZeRO-3): the quickstart's steps of 1 row
per rank (the calibration run's shape) and of 2 rows per rank, side by side with the planner's
FLOP ratio (issue 20 item 2: the calibrated prediction across micro-batch sizes).

    python bench/bench_step_scaling.py [--steps 8] [overrides...]

One engine runs both shapes, alternating step by step, so that both see the same machine load (two
runs minutes apart on a shared machine differ by the load, not the code). Prints per shape the
median wall and CPU seconds of a rank's step and its minor page faults, then the ratios: the CPU
ratio is what a quiet machine's wall ratio would be, the FLOP ratio is what the planner predicts.
The first round carries start-up work and is not counted.
"""

from __future__ import annotations

import argparse
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASE = ["+experiment=quickstart", "trainer.progress_bar=false", "checkpoint.every_steps=0", "export.enabled=false",
        "logger.mode=disabled", "checkpoint.resume=false"]


def _rank(steps: int, overrides: list[str]) -> None:
    from llama3zh_dist.config import load_config
    from llama3zh_dist.data.loader import StepBatches
    from llama3zh_dist.train import SFTRecipe

    rank, data = int(os.environ["RANK"]), Path(os.environ["LLAMA3ZH_DATA_DIR"])
    cfg = load_config([*BASE, f"trainer.max_steps={2 * steps + 2}", *overrides])
    recipe = SFTRecipe(cfg, data)
    recipe.setup()
    shapes = {m: StepBatches(data, global_batch_rows=2 * m, micro_batch_size=m, rank=rank, world_size=2, seed=1)
              for m in (1, 2)}
    seen: dict[int, list[tuple]] = {m: [] for m in shapes}
    for i in range(steps + 1):
        for m, batches in shapes.items():
            recipe.batches = batches  # the trainer's own step, fed rows of the other shape
            f0, t0, c0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter(), time.process_time()
            record = recipe._train_step(i + 1)
            if i:
                seen[m].append((time.perf_counter() - t0, time.process_time() - c0,
                                resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0, record["flops"]))
    if rank == 0:
        med = {m: [statistics.median(s[j] for s in v) for j in range(4)] for m, v in seen.items()}
        print(f"{'rows/rank':>9} {'wall s':>7} {'cpu s':>7} {'page faults':>11} {'GFLOP':>7}")
        for m, (wall, cpu, faults, flops) in med.items():
            print(f"{m:>9} {wall:7.3f} {cpu:7.3f} {faults:11.0f} {flops / 1e9:7.1f}")
        print(f"2 rows / 1 row: wall {med[2][0] / med[1][0]:.2f}x, cpu {med[2][1] / med[1][1]:.2f}x, "
              f"FLOPs (the planner's prediction) {med[2][3] / med[1][3]:.2f}x")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=8)
    args, overrides = p.parse_known_args()
    if "RANK" in os.environ:
        _rank(args.steps, overrides)
        return 0
    from llama3zh_dist.config import load_config
    from llama3zh_dist.data.prep import prepare_dataset
    from llama3zh_dist.launch import cpu_rank_environment  # the ranks run with the launcher's CPU settings

    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config([*BASE, f"data.out_dir={tmp}/data", f"run.dir={tmp}/run", *overrides])
        data = prepare_dataset(cfg)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = {**os.environ, "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(port), "LLAMA3ZH_DATA_DIR": str(data)}
        env = cpu_rank_environment(env, 2)
        procs = [subprocess.Popen([sys.executable, __file__, f"--steps={args.steps}", f"run.dir={tmp}/run", *overrides],
                                  env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}, cwd=ROOT) for r in range(2)]
        return max(p.wait() for p in procs)


if __name__ == "__main__":
    sys.exit(main())
