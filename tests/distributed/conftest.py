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


# ---------------------------------------------------------------- serve (tests/distributed/test_serve*.py)
SERVE_KEY = "sk-test-serve-0123456789"


@pytest.fixture(scope="session")
def quickstart_export(quickstart_run):
    return quickstart_run[0] / "export"


@pytest.fixture(scope="session")
def served(quickstart_export, tmp_path_factory):
    """The quickstart export served once for the API and load tests, with an API key (from the
    environment variable) and a queue small enough to fill: 8 rows + 12 waiting."""
    from _serve_helpers import ServeProcess

    server = ServeProcess([f"model.path={quickstart_export}", "serve.max_concurrent=8", "serve.max_queue=12",
                           "serve.max_request_bytes=65536", "serve.max_tokens=256",
                           f"serve.out_dir={tmp_path_factory.mktemp('serve_out')}"],
                          env={"LLAMA3ZH_API_KEY": SERVE_KEY})
    yield server
    server.stop()


@pytest.fixture(scope="session")
def step80_export(quickstart_run, tmp_path_factory):
    """A second export of the same run: its step-80 checkpoint (compare mode's other model)."""
    from llama3zh_dist.checkpoint_layout import resolve_checkpoint
    from llama3zh_dist.export import export_checkpoint
    from llama3zh_dist.llama3.hf_tokenizer import load_tokenizer

    out = tmp_path_factory.mktemp("step80") / "export"
    export_checkpoint(resolve_checkpoint(quickstart_run[0], 80), out, tokenizer=load_tokenizer(None),
                      dtype="float32", max_shard_size="50MB", workers=1, verify=False)
    return out
