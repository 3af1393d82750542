"""The other ways in (launchers/): torchrun on one machine, a Ray cluster inside a Slurm allocation."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # slurm_util, whatever the import mode
from slurm_util import REPO, describe, read_log, require_cluster, sbatch, wait_job  # noqa: E402


@pytest.mark.slow
def test_torchrun_local_trains_two_cpu_ranks(tmp_path: Path):
    """launchers/torchrun_local.sh: preflight, then torchrun workers (worker mode of the trainer)."""
    run_dir = tmp_path / "run"
    env = {**os.environ, "NPROC": "2", "LLAMA3ZH_PYTHON": sys.executable, "WANDB_MODE": "offline"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    out = subprocess.run(
        ["bash", str(REPO / "launchers" / "torchrun_local.sh"), "+experiment=quickstart", "trainer.max_steps=2",
         "export.enabled=false", f"run.dir={run_dir}", f"data.out_dir={tmp_path}/prepared",
         *os.environ.get("SLURM_TEST_OVERRIDES", "").split()],
        cwd=REPO, env=env, capture_output=True, text=True,
    )
    assert out.returncode == 0, (out.stdout + out.stderr)[-6000:]
    assert "preflight ok: world size 2" in out.stdout
    rows = [line for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    assert len(rows) == 2 and all('"world_size": 2' in r for r in rows), rows


def test_torchrun_local_bad_config_fails_before_torchrun(tmp_path: Path):
    env = {**os.environ, "NPROC": "2", "LLAMA3ZH_PYTHON": sys.executable}
    out = subprocess.run(
        ["bash", str(REPO / "launchers" / "torchrun_local.sh"), "+experiment=quickstart",
         "trainer.global_batch_size=3", f"run.dir={tmp_path}/run"],
        cwd=REPO, env=env, capture_output=True, text=True,
    )
    assert out.returncode == 2, out.stdout + out.stderr
    assert "error: trainer.global_batch_size=3" in out.stderr and "torch.distributed" not in out.stderr


def test_torchrun_local_held_master_port_fails_with_one_line(tmp_path: Path):
    """Several nodes: node 0's MASTER_PORT held by another process ends in one message naming
    MASTER_PORT before torchrun starts (one node uses --standalone: torchrun binds port 0 itself)."""
    import socket

    with socket.socket() as held:
        held.bind(("", 0))
        held.listen()
        port = held.getsockname()[1]
        env = {**os.environ, "NPROC": "1", "NNODES": "2", "NODE_RANK": "0", "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(port), "LLAMA3ZH_PYTHON": sys.executable}
        out = subprocess.run(
            ["bash", str(REPO / "launchers" / "torchrun_local.sh"), "+experiment=quickstart", f"run.dir={tmp_path}/run"],
            cwd=REPO, env=env, capture_output=True, text=True,
        )
    assert out.returncode == 2, out.stdout + out.stderr
    assert f"error: rendezvous port {port} (MASTER_PORT={port}) is already in use" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.slurm
def test_slurm_ray_cluster_runs_a_command_against_its_cluster(tmp_path: Path):
    require_cluster()
    log = tmp_path / "ray.out"
    probe = "import ray; ray.init(); print('RAY_CPUS', int(ray.cluster_resources().get('CPU', 0)))"
    job = sbatch(["--nodes=1", "--gpus-per-node=0", f"--output={log}"], ["python", "-c", probe],
                 env={"LLAMA3ZH_PYTHON": sys.executable}, script=REPO / "launchers" / "slurm_ray_cluster.sh")
    info = wait_job(job, log)
    text = read_log(log)
    assert info.get("JobState") == "COMPLETED", describe(job, log)
    assert "ray cluster up: 1/1 nodes" in text and "RAY_CPUS " in text and "command exited 0" in text, describe(job, log)
