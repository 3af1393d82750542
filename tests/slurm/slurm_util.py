"""Helpers for the tests against the local Slurm test cluster (tests/slurm/cluster.sh)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TRAIN_SH = REPO / "slurm" / "train.sh"
CLUSTER_SH = REPO / "tests" / "slurm" / "cluster.sh"

# Only a guard against hanging forever; no test relies on it for its verdict.
POLL_BOUND_S = 20 * 60
TERMINAL = {
    "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
    "PREEMPTED", "BOOT_FAIL", "DEADLINE",
}


def cluster_problem() -> str | None:
    """Why the Slurm tests cannot run here, or None when the test cluster answers."""
    if shutil.which("sbatch") is None:
        return f"sbatch not found: install and start the test cluster with `{CLUSTER_SH.relative_to(REPO)} start` (as root)"
    try:
        out = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %t"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"sinfo failed ({e}): start the test cluster with `{CLUSTER_SH.relative_to(REPO)} start`"
    if out.returncode != 0:
        return f"the Slurm test cluster is not up ({out.stderr.strip()}): run `{CLUSTER_SH.relative_to(REPO)} start`"
    states = dict(line.split()[:2] for line in out.stdout.splitlines() if len(line.split()) >= 2)
    bad = [n for n in ("node1", "node2") if not re.match(r"(idle|mix|alloc|comp)", states.get(n, "missing"))]
    if bad:
        return f"test cluster nodes not usable: {states} (expected node1 and node2 idle): run `{CLUSTER_SH.relative_to(REPO)} start`"
    return None


def require_cluster() -> None:
    problem = cluster_problem()
    if problem is None:
        return
    # CI brings the cluster up and sets this, so that a broken cluster fails instead of skipping.
    if os.environ.get("LLAMA3ZH_REQUIRE_SLURM") == "1":
        pytest.fail(problem)
    pytest.skip(problem)


def sbatch(sbatch_args: list[str], overrides: list[str], *, env: dict | None = None, script: Path = TRAIN_SH) -> str:
    """Submit ``script`` from the repository root; returns the job id."""
    cmd = ["sbatch", "--parsable", *sbatch_args, str(script), *overrides]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env={**os.environ, **(env or {})})
    assert out.returncode == 0, f"sbatch failed: {' '.join(cmd)}\n{out.stdout}{out.stderr}"
    return out.stdout.strip().split(";")[0]


def job_info(job_id: str) -> dict[str, str]:
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True)
    if out.returncode != 0:
        return {}
    return dict(re.findall(r"(\S+?)=(\S*)", out.stdout))


def wait_job(job_id: str, log: Path | None = None, *, until=None) -> dict[str, str]:
    """Poll until the job is over (or ``until(info)`` holds); returns scontrol's fields."""
    t0 = time.time()
    info: dict[str, str] = {}
    while time.time() - t0 < POLL_BOUND_S:
        info = job_info(job_id)
        if until is not None and until(info):
            return info
        if info.get("JobState") in TERMINAL:
            return info
        time.sleep(0.5)
    subprocess.run(["scancel", job_id])
    tail = log.read_text(errors="replace")[-4000:] if log and log.exists() else "<no log>"
    pytest.fail(f"job {job_id} still not done after {POLL_BOUND_S} s (state {info.get('JobState')}); cancelled.\n{tail}")


def read_log(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return rows


def describe(job_id: str, log: Path) -> str:
    info = job_info(job_id)
    return (
        f"job {job_id}: state {info.get('JobState')} exit {info.get('ExitCode')} restarts {info.get('Restarts')}\n"
        f"--- job output ({log}) ---\n{read_log(log)[-6000:]}"
    )
