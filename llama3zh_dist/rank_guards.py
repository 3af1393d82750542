"""What keeps one rank honest: a watchdog for hangs, and preemption signals turned into a flag."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time


class Watchdog:
    """Ends a rank that has made no progress for longer than the collective timeout.

    The rank waiting in a collective for a hung peer gets a timeout error from the process group;
    the hung rank itself (stuck in compute, I/O, or a collective that never times out) is ended
    here, a few seconds later, with its last completed step in the log. Either way every rank
    exits non-zero and the launcher (or srun) ends the job.
    """

    GRACE_S = 10.0  # the peers' collective timeout should speak first

    def __init__(self, rank: int, timeout_s: float):
        self.rank, self.limit = rank, timeout_s + self.GRACE_S
        self.completed, self.doing, self.last = 0, "starting", time.monotonic()
        self.armed = False
        threading.Thread(target=self._run, name="llama3zh-watchdog", daemon=True).start()

    def beat(self, doing: str, completed: int | None = None) -> None:
        self.last, self.doing, self.armed = time.monotonic(), doing, True
        if completed is not None:
            self.completed = completed

    def _run(self) -> None:
        while True:
            time.sleep(min(5.0, max(0.5, self.limit / 10)))
            idle = time.monotonic() - self.last
            if self.armed and idle > self.limit:
                print(f"rank {self.rank}: no progress for {idle:.0f}s (cluster.timeout_minutes) while "
                      f"{self.doing}; last completed step {self.completed}; exiting", file=sys.stderr, flush=True)
                os._exit(1)


class PreemptionSignals:
    """SIGUSR1/SIGTERM only set a flag here; ranks agree on it at the next step boundary."""

    def __init__(self):
        self.requested = False
        for sig in (signal.SIGUSR1, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):  # no I/O in a signal handler
        self.requested = True
