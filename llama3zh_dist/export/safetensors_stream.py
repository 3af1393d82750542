"""Write safetensors files one tensor at a time, and plan HF-style shards.

The safetensors format is an 8-byte little-endian header length, a JSON header
(``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}``) and the raw
little-endian tensor bytes. Since every name, shape and dtype is known before any data is read, the
header is written first and each tensor streamed after it: nothing but the tensor being written is
held in memory.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import struct
from dataclasses import dataclass, field

import torch

SAFETENSORS_DTYPES = {
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float64: "F64",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(size) -> int:
    """``"5GB"`` -> 5_000_000_000 (decimal units as in ``transformers``; ``GiB`` etc. binary)."""
    if isinstance(size, int):
        return size
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?)\s*([KMGT]I?B|B)?\s*", str(size), re.IGNORECASE)
    if not m:
        raise ValueError(f"cannot read the size {size!r}: write e.g. 5GB, 500MB or 2GiB")
    return int(float(m.group(1)) * _UNITS[(m.group(2) or "").upper()])


@dataclass
class TensorEntry:
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * torch.empty((), dtype=self.dtype).element_size()


@dataclass
class Shard:
    filename: str
    entries: list[TensorEntry] = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        return sum(e.nbytes for e in self.entries)


def plan_shards(entries: list[TensorEntry], max_shard_size: int) -> list[Shard]:
    """Greedy in order, as ``transformers`` does: a new shard starts when the next tensor would not fit;
    a tensor larger than the limit gets a shard of its own. One shard is named ``model.safetensors``."""
    groups: list[list[TensorEntry]] = [[]]
    size = 0
    for e in entries:
        if groups[-1] and size + e.nbytes > max_shard_size:
            groups.append([])
            size = 0
        groups[-1].append(e)
        size += e.nbytes
    if len(groups) == 1:
        return [Shard("model.safetensors", groups[0])]
    n = len(groups)
    return [Shard(f"model-{i + 1:05d}-of-{n:05d}.safetensors", g) for i, g in enumerate(groups)]


def header_bytes(entries: list[TensorEntry], metadata: dict | None = None) -> bytes:
    header: dict = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    pos = 0
    for e in entries:
        header[e.name] = {"dtype": SAFETENSORS_DTYPES[e.dtype], "shape": list(e.shape),
                          "data_offsets": [pos, pos + e.nbytes]}
        pos += e.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # align the data to 8 bytes, as safetensors does
    return struct.pack("<Q", len(raw)) + raw


def tensor_bytes(t: torch.Tensor) -> memoryview:
    """A zero-copy little-endian byte view of a contiguous CPU tensor (any dtype, bf16 included)."""
    flat = t.reshape(-1)
    if flat.numel() == 0:
        return memoryview(b"")
    if flat.dtype == torch.bool:
        flat = flat.view(torch.uint8)
    return memoryview(flat.view(torch.uint8).numpy())


class HashingWriter:
    """A binary file that hashes what is written to it (sha256)."""

    def __init__(self, path):
        self.path = path
        self.f = open(path, "wb")
        self.sha = hashlib.sha256()
        self.written = 0

    def write(self, data) -> None:
        self.f.write(data)
        self.sha.update(data)
        self.written += len(data) if isinstance(data, bytes) else data.nbytes

    def close(self, fsync: bool = True) -> str:
        self.f.flush()
        if fsync:
            import os

            os.fsync(self.f.fileno())
        self.f.close()
        return self.sha.hexdigest()

    def abort(self) -> None:
        self.f.close()
