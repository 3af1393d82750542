"""Loading a pretrained checkpoint into ZeRO-3 partitions without a host copy of the whole model.

With ZeRO-3, transformers 5.x has global rank 0 read every checkpoint tensor into host memory
(``load_state_dict(map_location="cpu")``, 16 GB for 8B, 141 GB for 70B) and then scatter it layer
by layer. transformers also accepts the state dict from the caller; here it is a dict of tensors
that are memory-mapped views of the safetensors files (``torch.frombuffer`` over ``mmap``): rank 0
reads each tensor from the page cache while its layer is being scattered, the other ranks touch
only the shapes, and the pages are file-backed (reclaimable), not anonymous memory.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
import threading
import time
import warnings
from pathlib import Path

import torch

_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool}


class MappedStateDict(dict):
    """name -> tensor viewing the mapped file (each tensor keeps its mapping open)."""

    nbytes: int = 0


def safetensors_files(folder: Path) -> list[Path]:
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.exists():
        return [folder / f for f in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    single = folder / "model.safetensors"
    return [single] if single.exists() else []


def mapped_state_dict(folder: Path) -> MappedStateDict | None:
    """The checkpoint in ``folder`` as memory-mapped tensors; None without safetensors files."""
    files = safetensors_files(folder)
    if not files:
        return None
    out = MappedStateDict()
    for path in files:
        with open(path, "rb") as f:
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        (header_len,) = struct.unpack("<Q", mm[:8])
        header = json.loads(mm[8:8 + header_len])
        base = 8 + header_len
        for name, meta in header.items():
            if name == "__metadata__":
                continue
            begin, end = meta["data_offsets"]
            dtype = _DTYPES[meta["dtype"]]
            count = (end - begin) // torch.empty((), dtype=dtype).element_size()
            # read-only mapping: torch warns that the buffer is not writable; the loader only reads it
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                t = torch.frombuffer(mm, dtype=dtype, count=count, offset=base + begin) if count else torch.empty(0, dtype=dtype)
            out[name] = t.view(meta["shape"])
            out.nbytes += end - begin
    return out


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
