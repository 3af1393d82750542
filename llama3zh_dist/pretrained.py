"""How much host memory loading a pretrained checkpoint takes on this rank.

Under ZeRO-3 transformers has global rank 0 read the checkpoint and scatter it layer by layer
while the other ranks wait; on a node that also runs 7 other ranks that read is the host-memory
peak of the job. Training logs the measured peak next to the checkpoint size.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path


def checkpoint_bytes(folder) -> int | None:
    """Size of the safetensors weights in a local model folder (None for a Hub id)."""
    folder = Path(os.path.expanduser(str(folder)))
    files = list(folder.glob("*.safetensors")) if folder.is_dir() else []
    return sum(f.stat().st_size for f in files) or None


class HostMemoryPeak:
    """Peak anonymous (not file-backed) resident memory of this process while the block runs.

    Sampled every ``interval`` s by a thread: anonymous memory is what a node can run out of; the
    page cache behind mapped files is given back under pressure.
    """

    def __init__(self, interval: float = 0.02):
        self.interval = interval
        self.start = self.peak = self.peak_rss = 0
        self._stop = threading.Event()

    @staticmethod
    def _now() -> tuple[int, int]:
        import psutil

        info = psutil.Process(os.getpid()).memory_info()
        return info.rss - getattr(info, "shared", 0), info.rss

    def _sample(self) -> None:
        while not self._stop.is_set():
            anon, rss = self._now()
            self.peak, self.peak_rss = max(self.peak, anon), max(self.peak_rss, rss)
            time.sleep(self.interval)

    def __enter__(self) -> "HostMemoryPeak":
        self.start, _ = self._now()
        self.peak = self.start
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        anon, rss = self._now()
        self.peak, self.peak_rss = max(self.peak, anon), max(self.peak_rss, rss)

    @property
    def grew_by(self) -> int:
        return self.peak - self.start
