"""Every collective the training loop issues carries its tensors on the training device.

NCCL rejects CPU tensors and gloo accepts them, so this is checked with the device chosen by the
test: a real 2-rank quickstart run (ZeRO-3, gloo) whose recipe is given ``cuda:<local rank>`` as
its collective device (see _collective_device_worker.py); every torch.distributed call made from
llama3zh_dist code must carry tensors there.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from _job import job_args, run_ranks

HERE = Path(__file__).resolve().parent
pytestmark = pytest.mark.slow


def test_every_collective_of_the_training_loop_gets_tensors_on_the_training_device(tmp_path):
    args = job_args(tmp_path / "run", tmp_path / "prepared", "trainer.max_steps=2", "checkpoint.every_steps=1",
                    "checkpoint.every_minutes=0")
    code, log = run_ranks(HERE / "_collective_device_worker.py", 2, [str(tmp_path), *args], log=tmp_path / "ranks.log")
    assert code == 0, log[-4000:]
    for rank in range(2):
        report = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert report["exit"] == 0, log[-4000:]
        # per step: the flags, the token counts and the loss totals; per checkpoint: the finite check
        assert len(report["checked"]) >= 2 * 3 + 2, report["checked"]
        assert report["violations"] == [], "\n".join(report["violations"])
