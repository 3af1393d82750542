"""``plan.calibrate_from`` takes the speed of a run on the device it plans for, never another's.

The session's quickstart ran on CPU: its FLOP/s priced as H100 steps predicted 151,220 s per step.
"""

from __future__ import annotations

import pytest
from conftest import run_python

pytestmark = pytest.mark.slow


def test_a_cpu_run_cannot_calibrate_an_h100_plan(quickstart_run):
    run_dir, overrides, _ = quickstart_run
    proc = run_python(["-m", "llama3zh_dist.plan", "+experiment=full_sft", "data=llama3_chinese_chat",
                       "cluster.gpu=H100-SXM", f"plan.calibrate_from={run_dir}"])
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and f"plan.calibrate_from={run_dir} was measured on cpu" in lines[0], proc.stderr
    assert "H100-SXM" in lines[0] and "step time" not in proc.stdout
    same_device = run_python(["-m", "llama3zh_dist.plan", *overrides, f"plan.calibrate_from={run_dir}"])
    assert same_device.returncode == 0 and "measured FLOP/s per rank" in same_device.stdout, same_device.stderr[-3000:]
