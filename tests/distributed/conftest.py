"""Runs shared by the tests that only read their outputs.

``quickstart_run``: one real ``python -m llama3zh_dist +experiment=quickstart`` (prep, 120 steps on
2 ZeRO-3 ranks, W&B offline as configured by default, export), made once per session. The
quickstart, W&B read-back and planner-calibration promises are all checked on this run.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_python(args: list[str], **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "WANDB_MODE": "offline"}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, **kw)


@pytest.fixture(scope="session")
def quickstart_run(tmp_path_factory):
    """(run_dir, overrides, console log) of a finished quickstart."""
    base = tmp_path_factory.mktemp("quickstart")
    run_dir, data_dir = base / "run", base / "prepared"
    overrides = ["+experiment=quickstart", f"run.dir={run_dir}", f"data.out_dir={data_dir}",
                 "trainer.progress_bar=false"]
    proc = run_python(["-m", "llama3zh_dist", *overrides])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return run_dir, overrides, proc.stdout + proc.stderr
