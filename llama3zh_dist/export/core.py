"""Export a ZeRO-3 checkpoint into a Hugging Face model folder: streaming, bounded memory, verified.

Flow of :func:`export_checkpoint`:

1. open the checkpoint (fp32 partitions memory-mapped, nothing read yet) and the HF config in it;
   build the model skeleton on the meta device and match its state dict (names, shapes) against the
   checkpoint: a mismatch stops the export before anything is written;
2. plan the shards (``max_shard_size`` in the export dtype), write each shard's safetensors header,
   then the tensors in parallel (``workers`` threads, largest first), each streamed from the rank
   partitions in pieces of ``CHUNK_ELEMENTS``, cast, written at its offset (``pwrite``) and CRC'd. A
   writer holds one piece (about 12 MB) at a time and the consumed checkpoint pages are dropped, so the
   export needs ``workers`` pieces of memory whatever the shard, tensor or model size (well inside
   "one shard plus the largest tensor"); the logits check loads one ordinary layer at a time and reads
   the vocabulary matrices by rows;
3. write ``model.safetensors.index.json``, ``config.json`` (``torch_dtype`` = export dtype),
   ``generation_config.json``, the tokenizer (``save_pretrained``; it carries the chat template);
4. read every file back from disk: its SHA-256 (for ``SHA256SUMS``) and, for the shards, the CRC-32 of
   each tensor's bytes against what was written; fsync. With ``verify`` (default): the safetensors
   headers against the expected names/shapes/dtypes, the config and tokenizer files (exact chat
   template), and the logits of the reference prompts (``reference_logits.safetensors`` in the
   checkpoint) against the trained model's, run module by module from the written shards;
   ``verify="full"`` first re-hashes the checkpoint's files against its ``complete.json``;
5. write ``SHA256SUMS`` last and swap the temp folder into place (atomic exchange where the OS has
   it), so ``out_dir`` is always either the previous complete export or the new complete one.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import math
import logging
import os
import pathlib
import resource
import shutil
import struct
import threading
import time
import uuid
import zlib
from concurrent.futures import ThreadPoolExecutor

import torch

from llama3zh_dist.errors import UserError

from .safetensors_stream import (
    SAFETENSORS_DTYPES,
    Shard,
    TensorEntry,
    header_bytes,
    parse_size,
    plan_shards,
    tensor_bytes,
)
from .zero3 import Zero3Checkpoint

log = logging.getLogger(__name__)

DTYPES = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16,
          "float32": torch.float32, "fp32": torch.float32}
DTYPE_NAMES = {torch.bfloat16: "bfloat16", torch.float16: "float16", torch.float32: "float32"}


# Llama 3 generation defaults (ids of the real Llama 3 tokenizer).
GENERATION_DEFAULTS = {"bos_token_id": 128000, "eos_token_id": [128009, 128001], "pad_token_id": 128004}

MARKER = "complete.json"
SUMS = "SHA256SUMS"
_TMP_TAG = ".tmp-export-"
_OLD_TAG = ".old-export-"
CRASH_ENV = "LLAMA3ZH_EXPORT_CRASH_AT"  # test hook: SIGKILL this process at a named point


def _crash_point(name: str) -> None:
    if os.environ.get(CRASH_ENV) == name:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def resolve_dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        if dtype in DTYPE_NAMES:
            return dtype
    elif str(dtype).replace("torch.", "") in DTYPES:
        return DTYPES[str(dtype).replace("torch.", "")]
    raise UserError(f"export.dtype={dtype!r} is not supported: use bfloat16, float16 or float32")


# ---------------------------------------------------------------------------------------------------
# helpers


def sha256_file(path: pathlib.Path, chunk: int = 1 << 22) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _fsync_dir(path: pathlib.Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _exchange(a: pathlib.Path, b: pathlib.Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    AT_FDCWD, RENAME_EXCHANGE = -100, 2
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return fn(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) == 0


def _move_into_place(tmp: pathlib.Path, out: pathlib.Path) -> None:
    if out.exists() or out.is_symlink():
        if _exchange(tmp, out):  # out is now the new export, tmp holds the old one
            _fsync_dir(out.parent)
            shutil.rmtree(tmp, ignore_errors=True)
            return
        old = out.with_name(f"{_OLD_TAG}{out.name}-{uuid.uuid4().hex[:8]}")
        os.rename(out, old)
        _crash_point("between_renames")
        os.rename(tmp, out)
        _fsync_dir(out.parent)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, out)
        _fsync_dir(out.parent)


def _remove_leftovers(out: pathlib.Path) -> None:
    """Temp/old folders of exports of ``out`` that were killed (their pid is gone) are removed."""
    if not out.parent.exists():
        return
    for p in out.parent.iterdir():
        for tag in (_TMP_TAG, _OLD_TAG):
            prefix = f"{tag}{out.name}-"
            if p.name.startswith(prefix) and p.is_dir():
                pid = p.name[len(prefix):].split("-")[0]
                if tag == _TMP_TAG and pid.isdigit() and _pid_alive(int(pid)):
                    continue
                shutil.rmtree(p, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def check_complete_checkpoint(ckpt_dir: pathlib.Path) -> dict:
    """``complete.json`` of a checkpoint; UserError if the checkpoint is missing or incomplete."""
    ckpt_dir = pathlib.Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        raise UserError(f"checkpoint {ckpt_dir} does not exist: pick another with export.step=N "
                        "(see run.dir/checkpoints/)")
    marker = ckpt_dir / MARKER
    if not marker.is_file():
        raise UserError(f"checkpoint {ckpt_dir} is incomplete (no {MARKER}: its save was interrupted) and "
                        "cannot be exported; export a complete one with export.step=N")
    try:
        info = json.loads(marker.read_text())
        files = info["files"]
    except (OSError, ValueError, KeyError, TypeError):
        raise UserError(f"{marker} is unreadable: the checkpoint is damaged; export another with export.step=N") from None
    missing = [f for f in files if not (ckpt_dir / f).is_file()]
    if missing:
        raise UserError(f"checkpoint {ckpt_dir} lacks files listed in {MARKER} (e.g. {missing[0]}); "
                        "export another with export.step=N")
    return info


def _verify_source_checksums(ckpt_dir: pathlib.Path, info: dict, workers: int) -> None:
    files = info.get("files") or {}
    with ThreadPoolExecutor(max(1, workers)) as ex:
        bad = [f for f, ok in zip(files, ex.map(lambda f: sha256_file(ckpt_dir / f) == files[f], files)) if not ok]
    if bad:
        raise UserError(f"checkpoint {ckpt_dir}: {bad[0]} does not match its checksum in {MARKER} "
                        "(damaged on disk); export another with export.step=N")


# ---------------------------------------------------------------------------------------------------
# name matching


def _match_names(ckpt: Zero3Checkpoint, expected: dict) -> dict[str, str]:
    """export name -> checkpoint tensor name; UserError on any mismatch with the model config."""
    alias: dict[str, str] = {}
    for a, b in ckpt.shared_params.items():
        alias.setdefault(a, b)
        alias.setdefault(b, a)
    have = set(ckpt.sources)
    prefix = ""
    first = next(iter(expected))
    if first not in have and first not in alias:
        cands = [n[: -len(first)] for n in have if n.endswith(first)]
        if len(cands) == 1:
            prefix = cands[0]
    mapping: dict[str, str] = {}
    missing, bad_shape = [], []
    for name, (shape, _) in expected.items():
        src = prefix + name
        if src not in have and alias.get(src) in have:
            src = alias[src]
        if src not in have:
            missing.append(name)
            continue
        if ckpt.sources[src].shape != tuple(shape):
            bad_shape.append(f"{name}: checkpoint {list(ckpt.sources[src].shape)} vs config {list(shape)}")
            continue
        mapping[name] = src
    used = set(mapping.values())
    extra = [n for n in have - used if n not in alias or alias[n] not in used]
    extra = [n for n in extra if not n.startswith(prefix) or n[len(prefix):] not in expected]
    problems = []
    if missing:
        problems.append(f"{len(missing)} tensor(s) of the model config missing from the checkpoint (e.g. {missing[0]})")
    if bad_shape:
        problems.append(f"{len(bad_shape)} shape mismatch(es) (e.g. {bad_shape[0]})")
    if extra:
        problems.append(f"{len(extra)} checkpoint tensor(s) unknown to the model config (e.g. {sorted(extra)[0]})")
    if problems:
        raise UserError(f"checkpoint {ckpt.dir} does not match its config.json: " + "; ".join(problems))
    return mapping


# ---------------------------------------------------------------------------------------------------
# writing


CHUNK_ELEMENTS = 1 << 21  # 2M elements: 8 MB of fp32 source + the cast copy, per writer
READ_CHUNK = 8 << 20


def _pwrite_all(fd: int, data, pos: int) -> None:
    mv = memoryview(data).cast("B")
    while mv.nbytes:
        n = os.pwrite(fd, mv, pos)
        mv, pos = mv[n:], pos + n


class _Writeback:
    """``sync_file_range(SYNC_FILE_RANGE_WRITE)``: start writing a range to disk now, without waiting,
    so that the fsync before the rename finds little left to do (Linux; a no-op elsewhere)."""

    def __init__(self):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            self.fn = libc.sync_file_range
            self.fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
        except (OSError, AttributeError):
            self.fn = None

    def __call__(self, fd: int, pos: int, nbytes: int) -> None:
        if self.fn is not None and nbytes > 0:
            self.fn(fd, pos, nbytes, 2)


_writeback = _Writeback()
_thread_buffers = threading.local()


def _write_tensor(ckpt: Zero3Checkpoint, fd: int, pos: int, e: TensorEntry, src: str, abort: threading.Event) -> int:
    """Stream one tensor to its place in its shard; returns the CRC-32 of the bytes meant to be there."""
    crc, start = 0, pos
    bufs = _thread_buffers.__dict__.setdefault("by_dtype", {})
    if e.dtype not in bufs:  # one buffer per writer thread and dtype, reused for every tensor
        bufs[e.dtype] = torch.empty(CHUNK_ELEMENTS, dtype=e.dtype)
    for piece in ckpt.iter_chunks(src, e.dtype, CHUNK_ELEMENTS, bufs[e.dtype]):
        if abort.is_set():
            raise RuntimeError("aborted")
        mv = tensor_bytes(piece)
        _pwrite_all(fd, mv, pos)
        crc = zlib.crc32(mv, crc)
        _writeback(fd, pos, mv.nbytes)
        pos += mv.nbytes
    if pos - start != e.nbytes:
        raise RuntimeError(f"{e.name}: wrote {pos - start} of {e.nbytes} bytes")
    _crash_point("mid_shard")
    return crc


def _write_weights(ckpt: Zero3Checkpoint, shards: list[Shard], mapping: dict[str, str], folder: pathlib.Path,
                   workers: int) -> dict[str, list[tuple[int, int, int]]]:
    """Write every shard: headers first, then the tensors in parallel (``workers`` threads, largest first,
    each at its offset with ``pwrite``). Returns per file the (start, end, crc32) of each tensor."""
    fds: dict[str, int] = {}
    tasks = []
    layout: dict[str, list] = {}
    abort = threading.Event()
    try:
        for s in shards:
            fd = os.open(folder / s.filename, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            fds[s.filename] = fd
            head = header_bytes(s.entries, {"format": "pt"})
            _pwrite_all(fd, head, 0)
            os.ftruncate(fd, len(head) + s.nbytes)
            pos = len(head)
            layout[s.filename] = []
            for e in s.entries:
                tasks.append((e.nbytes, s.filename, pos, e))
                layout[s.filename].append([pos, pos + e.nbytes, None, e.name])
                pos += e.nbytes
        crcs: dict[str, int] = {}
        tasks.sort(key=lambda t: -t[0])
        with ThreadPoolExecutor(max(1, min(workers, len(tasks)))) as ex:
            futs = [(ex.submit(_write_tensor, ckpt, fds[fn], pos, e, mapping[e.name], abort), e.name)
                    for _, fn, pos, e in tasks]
            try:
                for fut, name in futs:
                    crcs[name] = fut.result()
            except BaseException:
                abort.set()
                raise
    finally:
        for fd in fds.values():
            os.close(fd)
    return {fn: [(a, b, crcs[name]) for a, b, _, name in rows] for fn, rows in layout.items()}


def _read_back(path: pathlib.Path, ranges: list[tuple[int, int, int]] | None = None) -> str:
    """SHA-256 of a file as read from disk, checking on the way the CRC-32 of each byte range that was
    written (so the checksum in SHA256SUMS is of what is on disk and equals what was meant); then fsync."""
    sha = hashlib.sha256()
    buf = bytearray(READ_CHUNK)
    view = memoryview(buf)
    todo = [r for r in (ranges or []) if r[1] > r[0]]
    i, crc, pos = 0, 0, 0
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            chunk = view[:n]
            sha.update(chunk)
            end = pos + n
            while i < len(todo) and todo[i][0] < end:
                a, b, want = todo[i]
                lo, hi = max(a, pos), min(b, end)
                crc = zlib.crc32(chunk[lo - pos:hi - pos], crc)
                if hi < b:
                    break
                if crc != want:
                    raise RuntimeError(f"export verification failed: {path.name} bytes {a}-{b} read back "
                                       "other than written")
                i, crc = i + 1, 0
            pos = end
        os.fsync(f.fileno())
    if i != len(todo):
        raise RuntimeError(f"export verification failed: {path.name} is shorter than written")
    return sha.hexdigest()


def _write_generation_config(path: pathlib.Path, tokenizer, hf_config) -> None:
    from transformers import GenerationConfig

    ids = dict(GENERATION_DEFAULTS)
    vocab = tokenizer.get_vocab() if tokenizer is not None and hasattr(tokenizer, "get_vocab") else {}
    named = {"bos_token_id": ["<|begin_of_text|>"], "eos_token_id": ["<|eot_id|>", "<|end_of_text|>"],
             "pad_token_id": ["<|finetune_right_pad_id|>"]}
    for key, toks in named.items():
        if all(t in vocab for t in toks):
            got = [vocab[t] for t in toks]
            ids[key] = got if key == "eos_token_id" else got[0]
    gen = GenerationConfig(do_sample=False, **ids)
    gen.save_pretrained(path)


def _write_config(path: pathlib.Path, hf_config, dtype: torch.dtype) -> None:
    import copy

    cfg = copy.deepcopy(hf_config)
    cfg.dtype = dtype  # transformers 5 writes it as "dtype"; 4.x reads "torch_dtype" (set below)
    cfg.save_pretrained(path)
    f = path / "config.json"
    data = json.loads(f.read_text())
    data["torch_dtype"] = DTYPE_NAMES[dtype]  # read by transformers 4.x; 5.x reads "dtype"
    if "dtype" in data:
        data["dtype"] = DTYPE_NAMES[dtype]
    f.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


# ---------------------------------------------------------------------------------------------------
# verification


def _verify_folder(tmp: pathlib.Path, shards: list[Shard], tokenizer, hf_config, dtype: torch.dtype,
                   ckpt_dir: pathlib.Path, skel) -> dict:
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
    # 3. config, tokenizer and chat template reload
    from transformers import AutoConfig

    cfg2 = AutoConfig.from_pretrained(tmp)
    if cfg2.to_dict().get("vocab_size") != hf_config.to_dict().get("vocab_size"):
        raise RuntimeError("export verification failed: config.json does not reload")
    if tokenizer is not None:
        report["tokenizer"] = _verify_tokenizer_files(tmp, tokenizer)
    # 4. logits against the trained model's
    ref = ckpt_dir / "reference_logits.safetensors"
    if ref.is_file():
        report["logits"] = _verify_logits(tmp, shards, ref, dtype, skel)
    return report


def _verify_tokenizer_files(tmp: pathlib.Path, tokenizer) -> bool:
    """The saved tokenizer parses, has the vocabulary of ``tokenizer`` and its exact chat template.

    Checked on the files (``tokenizers`` parses tokenizer.json; the template is read back as text)
    rather than by a full ``AutoTokenizer`` reload, which would cost ~80 MB for the Llama 3 vocabulary;
    the tests load the export with ``AutoTokenizer``.
    """
    want = getattr(tokenizer, "chat_template", None)
    cfg_file = tmp / "tokenizer_config.json"
    saved = json.loads(cfg_file.read_text()) if cfg_file.is_file() else {}
    jinja = tmp / "chat_template.jinja"
    got = jinja.read_text() if jinja.is_file() else saved.get("chat_template")
    if want != got:
        raise RuntimeError("export verification failed: the saved tokenizer's chat template differs")
    tj = tmp / "tokenizer.json"
    if tj.is_file() and hasattr(tokenizer, "backend_tokenizer"):
        from tokenizers import Tokenizer

        back = Tokenizer.from_file(str(tj))
        if back.get_vocab_size(with_added_tokens=True) != tokenizer.backend_tokenizer.get_vocab_size(with_added_tokens=True):
            raise RuntimeError("export verification failed: the saved tokenizer has another vocabulary size")
    return True


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


# ---------------------------------------------------------------------------------------------------


def export_checkpoint(ckpt_dir, out_dir, *, tokenizer, dtype="bfloat16", max_shard_size="5GB", workers=4,
                      verify=True) -> dict:
    """Export the ZeRO-3 checkpoint ``ckpt_dir`` into the HF model folder ``out_dir`` (replaced atomically).

    ``verify``: False writes and checksums only; True (default) also checks the written folder: every
    file re-read (its CRC-32 per tensor against what was written, and the SHA-256 for ``SHA256SUMS``
    taken from that read), the safetensors headers against the names/shapes/dtypes the model config
    implies, the tokenizer files and chat template, and the logits of the reference prompts against
    ``reference_logits.safetensors`` when the checkpoint has it; ``"full"`` also re-hashes every
    checkpoint file against ``complete.json`` first (reads the whole checkpoint, Adam moments included:
    about 3x the fp32 model size).

    Returns a summary: ``out_dir``, ``files`` (name -> sha256), ``num_parameters``, ``num_tensors``,
    ``total_bytes``, ``dtype``, ``shards``, ``peak_rss_bytes`` (this process's peak so far),
    ``seconds``, ``verification``.
    """
    t0 = time.time()
    ckpt_dir = pathlib.Path(ckpt_dir)
    out_dir = pathlib.Path(out_dir).absolute()
    dt = resolve_dtype(dtype)
    shard_limit = parse_size(max_shard_size)
    workers = max(1, int(workers or 1))
    info = check_complete_checkpoint(ckpt_dir)
    if verify == "full":
        _verify_source_checksums(ckpt_dir, info, workers)

    from transformers import AutoConfig

    try:
        hf_config = AutoConfig.from_pretrained(ckpt_dir)
    except (OSError, ValueError) as e:
        raise UserError(f"checkpoint {ckpt_dir} has no readable config.json ({e})") from None
    from .model_meta import expected_tensors, skeleton

    skel = skeleton(hf_config)
    expected = expected_tensors(skel)
    ckpt = Zero3Checkpoint(ckpt_dir)
    mapping = _match_names(ckpt, expected)

    entries = []
    for name in expected:
        src_dtype = ckpt.dtype_of(mapping[name])
        entries.append(TensorEntry(name, ckpt.sources[mapping[name]].shape,
                                   dt if src_dtype.is_floating_point else src_dtype))
    shards = plan_shards(entries, shard_limit)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(out_dir)
    tmp = out_dir.with_name(f"{_TMP_TAG}{out_dir.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        layout = _write_weights(ckpt, shards, mapping, tmp, workers)
        _crash_point("after_weights")
        # the shards are read back (checksums of what is on disk) and flushed while the rest is
        # written and verified
        with ThreadPoolExecutor(max(1, workers)) as readers:
            weight_sums = {fn: readers.submit(_read_back, tmp / fn, rows) for fn, rows in layout.items()}
            total_bytes = sum(e.nbytes for e in entries)
            num_params = sum(e.numel for e in entries if expected[e.name][1])
            if len(shards) > 1:
                index = {"metadata": {"total_size": total_bytes, "total_parameters": num_params},
                         "weight_map": {e.name: s.filename for s in shards for e in s.entries}}
                (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
            _write_generation_config(tmp, tokenizer, hf_config)
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)
            _write_config(tmp, hf_config, dt)  # config.json last among the model files
            hashes = {p.name: _read_back(p) for p in sorted(tmp.iterdir()) if p.is_file() and p.name not in layout}
            verification = {}
            if verify:
                verification.update(_verify_folder(tmp, shards, tokenizer, hf_config, dt, ckpt_dir, skel))
            hashes.update({fn: f.result() for fn, f in weight_sums.items()})
        verification["checksums"] = len(hashes)
        _crash_point("before_sums")
        with open(tmp / SUMS, "w") as f:
            for name in sorted(hashes):
                f.write(f"{hashes[name]}  {name}\n")
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(tmp)
        _crash_point("before_rename")
        del ckpt
        _move_into_place(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    summary = {
        "out_dir": str(out_dir),
        "checkpoint": str(ckpt_dir),
        "step": info.get("step"),
        "dtype": DTYPE_NAMES[dt],
        "files": dict(sorted(hashes.items())),
        "shards": [s.filename for s in shards],
        "num_parameters": num_params,
        "num_tensors": len(entries),
        "total_bytes": total_bytes,
        "max_shard_size": shard_limit,
        "largest_tensor_bytes": max((e.nbytes for e in entries), default=0),
        "workers": workers,
        "peak_rss_bytes": _peak_rss_bytes(),
        "seconds": round(time.time() - t0, 3),
        "verification": verification,
    }
    log.info("exported %s -> %s (%d tensors, %.1f MB, %.1fs)", ckpt_dir, out_dir, len(entries),
             total_bytes / 1e6, summary["seconds"])
    return summary


# ---------------------------------------------------------------------------------------------------


def resolve_checkpoint(run_dir, step=None) -> pathlib.Path:
    """``run.dir/checkpoints/step_<step>``, or the one ``checkpoints/latest`` names; UserError if it is
    missing or incomplete."""
    root = pathlib.Path(run_dir) / "checkpoints"
    if step is not None and str(step) not in ("", "null", "None"):
        try:
            n = int(str(step).removeprefix("step_"))
        except ValueError:
            raise UserError(f"export.step={step!r} is not a step number (e.g. export.step=120)") from None
        ckpt = root / f"step_{n}"
        if not ckpt.is_dir():
            have = sorted(p.name for p in root.glob("step_*")) if root.is_dir() else []
            raise UserError(f"export.step={n}: no checkpoint {ckpt} (have: {', '.join(have) or 'none'})")
    else:
        latest = root / "latest"
        if not latest.is_file():
            raise UserError(f"no complete checkpoint in {root} ({latest} is missing): train first, or set "
                            "run.dir to a run folder with checkpoints")
        name = latest.read_text().strip()
        ckpt = root / name
    check_complete_checkpoint(ckpt)
    return ckpt


def _verify_setting(v):
    if isinstance(v, str) and v.strip().lower() == "full":
        return "full"
    if isinstance(v, str):
        return v.strip().lower() not in ("false", "0", "no", "off", "")
    return bool(v)


def export_run(cfg, step=None, *, wandb_run=None) -> pathlib.Path:
    """Export ``run.dir``'s newest complete checkpoint (or ``step`` / ``export.step``) into ``run.dir/export``.

    With ``wandb_run``, the export is also recorded there (:func:`log_export_to_wandb`). The summary of
    the last export is kept in ``export_run.last_summary``.
    """
    from omegaconf import OmegaConf

    run_dir = pathlib.Path(str(OmegaConf.select(cfg, "run.dir")))
    exp = OmegaConf.select(cfg, "export") or {}
    if step is None:
        step = exp.get("step")
    ckpt = resolve_checkpoint(run_dir, step)
    from llama3zh_dist.tokenizer import load_tokenizer

    model_path = OmegaConf.select(cfg, "model.path")
    tok = load_tokenizer(model_path, bool(OmegaConf.select(cfg, "model.trust_remote_code", default=False)))
    summary = export_checkpoint(
        ckpt, run_dir / "export", tokenizer=tok,
        dtype=exp.get("dtype", "bfloat16"), max_shard_size=exp.get("max_shard_size", "5GB"),
        workers=exp.get("workers", 4), verify=_verify_setting(exp.get("verify", True)),
    )
    export_run.last_summary = summary
    if wandb_run is not None:
        from .wandb_log import log_export_to_wandb

        log_export_to_wandb(wandb_run, summary["out_dir"], summary)
    return pathlib.Path(summary["out_dir"])
