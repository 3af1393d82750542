"""The W&B offline run folder holds the same losses as metrics.jsonl.

The session's real quickstart run (conftest.py: 2 gloo ranks, ZeRO-3, W&B offline as configured by
default) is read: the test reads the ``.wandb`` run file back (``_wandb_file``: the LevelDB-log
records, CRCs checked, parsed as ``wandb_internal_pb2.Record``) and compares its history rows with
``metrics.jsonl`` step by step.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))

from _wandb_file import history  # noqa: E402

STEPS = 120  # the quickstart's trainer.max_steps
pytestmark = pytest.mark.slow


@pytest.fixture
def run_dir(quickstart_run):
    return quickstart_run[0]


def metrics_rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def wandb_file(run: Path) -> Path:
    folders = sorted((run / "wandb").glob("offline-run-*"))
    assert len(folders) == 1, folders
    files = list(folders[0].glob("run-*.wandb"))
    assert len(files) == 1, files
    return files[0]


def test_training_writes_an_offline_wandb_run_under_run_dir_with_the_run_id_of_the_folder(run_dir):
    f = wandb_file(run_dir)
    run_id = (run_dir / "wandb_run_id").read_text().strip()
    assert f.name == f"run-{run_id}.wandb"


def test_wandb_offline_run_holds_the_same_loss_per_step_as_metrics_jsonl(run_dir):
    metrics = metrics_rows(run_dir)
    assert [m["step"] for m in metrics] == list(range(1, STEPS + 1))
    rows = history(wandb_file(run_dir))
    assert [r["_step"] for r in rows] == [m["step"] for m in metrics]
    for m, r in zip(metrics, rows):
        assert r["loss"] == m["loss"], (m["step"], r["loss"], m["loss"])


def test_wandb_offline_run_holds_the_other_step_metrics_of_metrics_jsonl(run_dir):
    rows = {r["_step"]: r for r in history(wandb_file(run_dir))}
    for m in metrics_rows(run_dir):
        r = rows[m["step"]]
        for key in ("lr", "grad_norm", "tokens", "supervised_tokens", "tokens_per_s", "epoch", "world_size"):
            assert r[key] == m[key], (m["step"], key, r[key], m[key])
