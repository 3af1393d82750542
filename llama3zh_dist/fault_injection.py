"""Faults the resilience tests inject into a real run, through the environment (never the config,
so no experiment file can carry one by accident).

    LLAMA3ZH_INJECT_HANG="<rank>:<step>"            that rank stops answering at that step
    LLAMA3ZH_INJECT_NAN="<rank>:<step>[,<step>...]"  that rank's loss is NaN at those steps
"""

from __future__ import annotations

import os
import time


class FaultInjector:
    def __init__(self, rank: int):
        self.rank = rank
        self.hang_spec = os.environ.get("LLAMA3ZH_INJECT_HANG")
        self.nan_spec = os.environ.get("LLAMA3ZH_INJECT_NAN")

    def hang(self, step: int) -> None:
        if self.hang_spec and self.hang_spec.split(":") == [str(self.rank), str(step)]:
            print(f"rank {self.rank}: test hook LLAMA3ZH_INJECT_HANG: hanging at step {step}", flush=True)
            while True:
                time.sleep(3600)

    def nan(self, step: int) -> bool:
        if not self.nan_spec:
            return False
        rank, steps = self.nan_spec.split(":")
        return int(rank) == self.rank and str(step) in steps.split(",")
