"""Reading back a W&B run file (``run-<id>.wandb``) without a W&B server.

wandb >= 0.2x writes it from its Go core and no longer ships the Python reader
(``wandb.sdk.internal.datastore``). The format is LevelDB's log format with a W&B header: 7 bytes
``:W&B`` + magic 0xBEE1 (little-endian) + version 0, then 32 KiB blocks of chunks, each a 7-byte
header (CRC-32 of type byte + data, little-endian uint32; data length, uint16; type: 1 full,
2 first, 3 middle, 4 last) and its data; a block tail shorter than a header is zero padding. Each
reassembled payload is a serialised ``wandb.proto.wandb_internal_pb2.Record``.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

HEADER = b":W&B" + struct.pack("<HB", 0xBEE1, 0)
BLOCK = 32 * 1024
CHUNK_HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path):
    """Every Record of a .wandb file, in order; raises ValueError on a corrupt file."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    if not data.startswith(HEADER):
        raise ValueError(f"{path}: not a W&B run file (header {data[:7]!r})")
    pos, parts = len(HEADER), None
    while pos < len(data):
        room = BLOCK - pos % BLOCK
        if room < CHUNK_HEADER:
            pos += room  # zero padding at the end of a block
            continue
        if pos + CHUNK_HEADER > len(data):
            raise ValueError(f"{path}: truncated chunk header at byte {pos}")
        crc, length, kind = struct.unpack("<IHB", data[pos:pos + CHUNK_HEADER])
        if crc == 0 and length == 0 and kind == 0:
            pos += room  # zero-filled rest of a block (e.g. a preallocated tail)
            continue
        body = data[pos + CHUNK_HEADER:pos + CHUNK_HEADER + length]
        if len(body) != length:
            raise ValueError(f"{path}: truncated chunk at byte {pos}")
        if zlib.crc32(body, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF != crc:
            raise ValueError(f"{path}: checksum mismatch at byte {pos}")
        pos += CHUNK_HEADER + length
        if kind == FULL:
            payload = body
        elif kind == FIRST:
            parts = [body]
            continue
        elif kind == MIDDLE and parts is not None:
            parts.append(body)
            continue
        elif kind == LAST and parts is not None:
            payload, parts = b"".join(parts + [body]), None
        else:
            raise ValueError(f"{path}: unexpected chunk type {kind} at byte {pos}")
        record = pb.Record()
        record.ParseFromString(payload)
        yield record


def history(path: Path) -> list[dict]:
    """The logged history rows (``run.log`` calls), each a dict of key -> value, ``_step`` included."""
    rows = []
    for r in records(path):
        if r.WhichOneof("record_type") == "history":
            rows.append({(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in r.history.item})
    return rows
