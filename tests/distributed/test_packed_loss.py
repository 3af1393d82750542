"""The loss of a packed row equals the sum of its samples' unpacked losses (fp32, 1e-5),
on 2 ranks on gloo under the real DeepSpeed ZeRO-3 engine.

The ranks run ``_packed_loss_worker.py`` in their own processes (the pytest process never imports
DeepSpeed's distributed state).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(out_dir: Path) -> list[dict]:
    port = _free_port()
    procs = []
    for rank in range(WORLD):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
        log = open(out_dir / f"rank{rank}.log", "w")
        procs.append((subprocess.Popen([sys.executable, str(HERE / "_packed_loss_worker.py"), str(out_dir)],
                                       cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT), log))
    # a rank that fails leaves the other waiting in a collective: end it rather than wait for gloo
    while any(p.poll() is None for p, _ in procs):
        if any(p.poll() not in (None, 0) for p, _ in procs):
            for p, _ in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
            break
        time.sleep(0.5)
    for p, log in procs:
        log.close()
    codes = [p.returncode for p, _ in procs]
    if codes != [0] * WORLD:
        logs = "\n".join(f"--- rank {r} (exit {c}) ---\n" + (out_dir / f"rank{r}.log").read_text()[-4000:]
                         for r, c in enumerate(codes))
        pytest.fail(f"ranks failed:\n{logs}")
    return [json.loads((out_dir / f"rank{r}.json").read_text()) for r in range(WORLD)]


@pytest.fixture(scope="module")
def ranks(module_tmp):
    return run_ranks(module_tmp("packed_loss"))


def test_the_check_runs_on_two_gloo_ranks_under_zero3_with_partitioned_parameters(ranks):
    assert [r["rank"] for r in ranks] == [0, 1]
    for r in ranks:
        assert r["world_size"] == 2 and r["zero_stage"] == 3 and r["partitioned"]
        assert r["samples"] == 3  # several samples in the row of each rank


def test_packed_row_loss_equals_sum_of_unpacked_sample_losses_on_each_rank(ranks):
    for r in ranks:
        n = r["supervised_tokens"]
        # fp32 sums over n tokens; compared per supervised token to 1e-5
        assert abs(r["packed_sum"] - sum(r["unpacked_sums"])) / n < 1e-5, r


def test_global_packed_loss_equals_global_unpacked_loss_over_both_ranks(ranks):
    for r in ranks:
        assert abs(r["global_packed_loss"] - r["global_unpacked_loss"]) < 1e-5
    assert ranks[0]["global_packed_loss"] == ranks[1]["global_packed_loss"]
