"""Launches on one machine never race for the rendezvous port.

A port is taken only while it is free and held until the ranks end (node 0's launcher hosts the
store): launches started at once all finish, and a relaunch finds another port when something still
holds its first choice -- or, when the user fixed the port, stops with one line naming the setting.
Every job is the real command (launcher + 2 gloo ranks, tiny model, 2 steps).
"""

from __future__ import annotations

import socket
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

from _job import ROOT, job_args, run, start
from llama3zh_dist.rendezvous import ANY_PORT, PORT_SOURCE_ENV

pytestmark = pytest.mark.slow

FAST = ("trainer.max_steps=2", "checkpoint.every_steps=2")


@pytest.fixture(scope="module")
def data_dir(module_tmp) -> Path:
    """Prepared once, so that concurrent launches only read it."""
    base = module_tmp("ports")
    data = base / "prepared"
    proc = subprocess.run([sys.executable, "-m", "llama3zh_dist.prep", *job_args(base / "prep_run", data)],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return data


@contextmanager
def held_port():
    """A port some other process holds (listening), as an earlier launch's surviving rank would."""
    with socket.socket() as s:
        s.bind(("", 0))
        s.listen()
        yield s.getsockname()[1]


def _finished(job_or_dir, rc: int, out: str) -> None:
    assert rc == 0, out[-4000:]
    assert (Path(job_or_dir) / "FINISHED").exists(), out[-4000:]


def test_launches_started_at_once_all_finish(data_dir, tmp_path):
    """Three jobs at once: a single-node job and a two-"node" job (one launcher per node, as srun
    starts them) handed the same first-choice port by their environment (as slurm/train.sh derives
    one per job; here something else holds it too), and a job with cluster.master_port=0."""
    with held_port() as port:
        first_choice = {"MASTER_PORT": str(port), PORT_SOURCE_ENV: ANY_PORT, "MASTER_ADDR": "127.0.0.1"}
        node = dict(first_choice, LLAMA3ZH_LAUNCH_ID="two-nodes")
        two = ("cluster.nodes=2", "cluster.nproc_per_node=1")
        jobs = [
            start(tmp_path / "single", data_dir, *FAST, env=first_choice),
            start(tmp_path / "nodes", data_dir, *FAST, *two, env=dict(node, NODE_RANK="0"), log_suffix="_node0"),
            start(tmp_path / "nodes", data_dir, *FAST, *two, env=dict(node, NODE_RANK="1"), log_suffix="_node1"),
            start(tmp_path / "any", data_dir, *FAST, "cluster.master_port=0"),
        ]
        codes = [job.wait() for job in jobs]
    for job, rc in zip(jobs, codes):
        _finished(job.run_dir, rc, job.output())
    for job in jobs[:2]:  # (node 1 of the two-node job learned node 0's port from run.dir)
        assert f"rendezvous port {port} is held by another process" in job.output()


def test_relaunch_while_the_old_port_is_held(data_dir, tmp_path):
    with held_port() as port:
        # The port was a first choice only (slurm/train.sh derived it): the run takes a free one.
        rc, out = run(tmp_path / "flexible", data_dir, *FAST,
                      env={"MASTER_PORT": str(port), PORT_SOURCE_ENV: ANY_PORT})
        _finished(tmp_path / "flexible", rc, out)
        assert f"rendezvous port {port} is held by another process; using free port" in out

        # The user fixed it: one line naming the setting and the fix, no traceback, no rank started.
        for overrides, env, setting in [
            ((f"cluster.master_port={port}",), {}, "cluster.master_port"),
            ((), {"MASTER_PORT": str(port)}, "MASTER_PORT"),
            ((), {"MASTER_PORT": str(port), PORT_SOURCE_ENV: "LLAMA3ZH_MASTER_PORT"}, "LLAMA3ZH_MASTER_PORT"),
        ]:
            rc, out = run(tmp_path / f"fixed_{setting}", data_dir, *FAST, *overrides, env=env)
            assert rc == 2, out[-4000:]
            assert f"error: rendezvous port {port} ({setting}={port}) is already in use" in out, out[-4000:]
            assert "Traceback" not in out and "DistNetworkError" not in out, out[-4000:]
