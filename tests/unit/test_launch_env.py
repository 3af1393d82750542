"""The environment the launcher gives CPU ranks (``launch.cpu_rank_environment``)."""

from __future__ import annotations

import os

from llama3zh_dist.launch import cpu_rank_environment


def test_cpu_ranks_share_the_cores_and_keep_large_buffers_in_the_heap():
    """glibc would unmap the loss head's [tokens, 128256] logits after every step and fault them in
    zeroed again on the next (a third of a CPU rank's time in the kernel): the mmap and trim
    thresholds are raised above any buffer of a CPU run."""
    env = cpu_rank_environment({"PATH": "/usr/bin"}, nproc=2)
    assert env["PATH"] == "/usr/bin"
    assert env["OMP_NUM_THREADS"] == str(max(1, (os.cpu_count() or 1) // 2))
    assert int(env["MALLOC_MMAP_THRESHOLD_"]) >= 1 << 30 and int(env["MALLOC_TRIM_THRESHOLD_"]) >= 1 << 30
    assert env["DS_ACCELERATOR"] == "cpu"


def test_values_the_user_set_win():
    mine = {"OMP_NUM_THREADS": "3", "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "131072"}
    env = cpu_rank_environment(mine, nproc=2)
    assert {k: env[k] for k in mine} == mine
    assert mine == {"OMP_NUM_THREADS": "3", "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "131072"}
