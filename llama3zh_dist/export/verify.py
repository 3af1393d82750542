"""Checking a written export before it replaces the old one: checkpoint checksums (optional), the
safetensors headers against the model config, the tokenizer and its chat template, and the logits of the
reference prompts against the trained model's, computed module by module from the written shards."""

from __future__ import annotations

import json
import math
import os
import pathlib
import struct
from concurrent.futures import ThreadPoolExecutor

import torch

from llama3zh_dist.checkpoint_layout import MARKER
from llama3zh_dist.errors import UserError
from llama3zh_dist.fileio import sha256_file

from .hf_files import DTYPES
from .safetensors_stream import SAFETENSORS_DTYPES, Shard

def verify_source_checksums(ckpt_dir: pathlib.Path, info: dict, workers: int) -> None:
    files = info.get("files") or {}
    with ThreadPoolExecutor(max(1, workers)) as ex:
        bad = [f for f, ok in zip(files, ex.map(lambda f: sha256_file(ckpt_dir / f) == files[f], files)) if not ok]
    if bad:
        raise UserError(f"checkpoint {ckpt_dir}: {bad[0]} does not match its checksum in {MARKER} "
                        "(damaged on disk); export another with export.step=N")


def verify_folder(tmp: pathlib.Path, shards: list[Shard], hf_config, dtype: torch.dtype,
                  ckpt_dir: pathlib.Path, skel) -> dict:
    """The written folder against the config and the trained model (the tokenizer files are checked
    as they are written: ``tokenizer_files.py``)."""
    from safetensors import safe_open

    report: dict = {}
    # 2. safetensors headers: names, shapes, dtypes
    seen = {}
    for shard in shards:
        want = {e.name: e for e in shard.entries}
        with safe_open(str(tmp / shard.filename), framework="pt") as f:
            keys = set(f.keys())
            if keys != set(want):
                raise RuntimeError(f"export verification failed: {shard.filename} holds {sorted(keys ^ set(want))[:3]} "
                                   "other than planned")
            for k in keys:
                sl = f.get_slice(k)
                if tuple(sl.get_shape()) != want[k].shape or sl.get_dtype() != _st_name(want[k].dtype):
                    raise RuntimeError(f"export verification failed: {k} in {shard.filename} is "
                                       f"{sl.get_dtype()}{sl.get_shape()}, expected {want[k].dtype}{list(want[k].shape)}")
                seen[k] = shard.filename
    from .model_meta import expected_tensors

    exp = expected_tensors(skel)
    if set(seen) != set(exp):
        raise RuntimeError(f"export verification failed: tensors differ from the model config: {sorted(set(seen) ^ set(exp))[:3]}")
    report["tensors"] = len(seen)
    # 3. config reload
    from transformers import AutoConfig

    cfg2 = AutoConfig.from_pretrained(tmp)
    if cfg2.to_dict().get("vocab_size") != hf_config.to_dict().get("vocab_size"):
        raise RuntimeError("export verification failed: config.json does not reload")
    # 4. logits against the trained model's
    ref = ckpt_dir / "reference_logits.safetensors"
    if ref.is_file():
        report["logits"] = _verify_logits(tmp, shards, ref, dtype, skel)
    return report


def _st_name(dtype: torch.dtype) -> str:
    from .safetensors_stream import SAFETENSORS_DTYPES

    return SAFETENSORS_DTYPES[dtype]


class _ShardReader:
    """Reads rows of tensors of a safetensors file with ``pread`` into fresh buffers (no mmap, so what
    was read is not left resident in this process)."""

    _DT = {v: k for k, v in SAFETENSORS_DTYPES.items()}

    def __init__(self, path: pathlib.Path):
        self.fd = os.open(path, os.O_RDONLY)
        (n,) = struct.unpack("<Q", os.pread(self.fd, 8, 0))
        self.header = json.loads(os.pread(self.fd, n, 8))
        self.base = 8 + n

    def get_slice(self, name: str) -> "_RowSlice":
        return _RowSlice(self, self.header[name])

    def close(self) -> None:
        os.close(self.fd)


class _RowSlice:
    def __init__(self, reader: _ShardReader, meta: dict):
        self.r, self.shape, self.dtype = reader, list(meta["shape"]), _ShardReader._DT[meta["dtype"]]
        self.start = reader.base + meta["data_offsets"][0]

    def get_shape(self) -> list[int]:
        return self.shape

    def __getitem__(self, key) -> torch.Tensor:
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError("row slices only")
        a, b, _ = key.indices(self.shape[0] if self.shape else 1)
        b = max(a, b)
        out = torch.empty((b - a) * (math.prod(self.shape[1:]) if self.shape else 1), dtype=self.dtype)
        return self.read_rows(a, b, out)

    def read_rows(self, a: int, b: int, out: torch.Tensor) -> torch.Tensor:
        """Rows ``a:b`` read into the front of the 1-D buffer ``out`` (reused by the caller: no
        allocation per block, so no heap growth from freed blocks)."""
        per_row = math.prod(self.shape[1:]) if self.shape else 1
        n = (b - a) * per_row
        dst = out[:n]
        if n:
            view = memoryview(dst.view(torch.uint8).numpy()).cast("B")
            pos, want = self.start + a * per_row * dst.element_size(), view.nbytes
            while view.nbytes:
                got = os.preadv(self.r.fd, [view], pos)
                if got <= 0:
                    raise RuntimeError(f"short read of a tensor ({want} bytes wanted)")
                view, pos = view[got:], pos + got
        return dst.view([b - a] + self.shape[1:]) if self.shape else dst.view([])


def _verify_logits(tmp: pathlib.Path, shards: list[Shard], ref_path: pathlib.Path, dtype: torch.dtype, skel) -> dict:
    from safetensors.torch import load_file

    from .logits_check import governing_dtype, judge_logits
    from .model_meta import streaming_logits

    ref = load_file(str(ref_path))
    ids, want = ref["input_ids"].long(), ref["logits"].float()
    lengths = ref.get("lengths")
    where = {e.name: s.filename for s in shards for e in s.entries}
    handles = {}

    def get_slice(name):
        fn = where[name]
        if fn not in handles:
            handles[fn] = _ShardReader(tmp / fn)
        return handles[fn].get_slice(name)

    # one batched forward (each vocabulary matrix read once); padding is on the right and attention
    # causal, so the real positions of each prompt do not see it
    n_real = [int(lengths[i]) if lengths is not None else ids.shape[1] for i in range(ids.shape[0])]
    got_all = streaming_logits(skel, get_slice, ids[:, :max(n_real)], dtype)
    for h in handles.values():
        h.close()
    # The reference records the dtype the trained model computed it in (older ones do not).
    ref_dtype = DTYPES.get(_reference_dtype_name(ref_path) or "", None)
    result = judge_logits([got_all[i, :n] for i, n in enumerate(n_real)], [want[i, :n] for i, n in enumerate(n_real)],
                          governing_dtype(dtype, ref_dtype))
    result["prompts"] = int(ids.shape[0])
    if result["failures"]:
        raise RuntimeError("export verification failed: logits differ from the trained model's: "
                           + "; ".join(result["failures"]))
    return result


def _reference_dtype_name(ref_path: pathlib.Path) -> str | None:
    from safetensors import safe_open

    with safe_open(str(ref_path), framework="pt") as f:
        return (f.metadata() or {}).get("compute_dtype")
