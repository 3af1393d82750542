"""Writing the shards: headers first, then every tensor streamed from the ZeRO-3 partitions in pieces,
cast, written at its offset in parallel and hashed; then each file read back from disk against those
hashes.

The per-tensor check is XXH3-64 (``xxhash``, a dependency of ``datasets``), not CRC-32: each byte is
hashed twice (written, read back), and zlib's CRC-32 runs at ~2 GB/s on one core against ~12 GB/s for
XXH3: 1.1 s of CPU per GB of export, a third of what the export of a 300M model spends besides
reading and writing. It detects a torn or stale write just the same (it is a checksum of the bytes,
not a security claim; ``SHA256SUMS`` is that)."""

from __future__ import annotations

import ctypes
import hashlib
import os
import pathlib
import signal
import threading
from concurrent.futures import ThreadPoolExecutor

import torch
import xxhash

from .safetensors_stream import Shard, TensorEntry, header_bytes, tensor_bytes
from .zero3 import Zero3Checkpoint

CRASH_ENV = "LLAMA3ZH_EXPORT_CRASH_AT"  # test hook: SIGKILL this process at a named point


def crash_point(name: str) -> None:
    if os.environ.get(CRASH_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


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


def background_priority(nice: int = 5) -> None:
    """Thread-pool initializer: this thread runs ``nice`` steps below the process's CPU priority.

    The writers and read-back threads run while the main thread imports transformers and builds the
    model (the export's critical path, single-threaded Python); on a machine with few cores they
    would otherwise take its core half of the time. They still get every cycle it leaves. Threads
    they start inherit the setting. Linux applies ``setpriority`` to the thread id alone; where a
    thread cannot be reniced this is a no-op."""
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, os.getpid()) + nice))
    except (AttributeError, OSError):
        pass


_thread_buffers = threading.local()  # each writer thread's reusable piece buffers


def _write_tensor(ckpt: Zero3Checkpoint, fd: int, pos: int, e: TensorEntry, src: str, abort: threading.Event) -> int:
    """Stream one tensor to its place in its shard; returns the XXH3-64 of the bytes meant to be there."""
    digest, start = xxhash.xxh3_64(), pos
    bufs = _thread_buffers.__dict__.setdefault("by_dtype", {})
    if e.dtype not in bufs:  # one buffer per writer thread and dtype, reused for every tensor
        bufs[e.dtype] = torch.empty(CHUNK_ELEMENTS, dtype=e.dtype)
    for piece in ckpt.iter_chunks(src, e.dtype, CHUNK_ELEMENTS, bufs[e.dtype]):
        if abort.is_set():
            raise RuntimeError("aborted")
        mv = tensor_bytes(piece)
        _pwrite_all(fd, mv, pos)
        digest.update(mv)
        _writeback(fd, pos, mv.nbytes)
        pos += mv.nbytes
    if pos - start != e.nbytes:
        raise RuntimeError(f"{e.name}: wrote {pos - start} of {e.nbytes} bytes")
    crash_point("mid_shard")
    return digest.intdigest()


class WriteProgress:
    """Which tensors of each shard are on disk, with the XXH3 of their bytes, so that the read-back
    follows the writers through each file instead of starting after the last tensor: it reads a part
    of a file once every byte before that part's end is written. For a 300M-parameter export that
    takes the read-back (SHA-256, hashes, fsync: 1.5 s) off the end of the export."""

    def __init__(self, shards: list[Shard]):
        self.layout: dict[str, list[tuple[int, int, str]]] = {}
        self.headers: dict[str, bytes] = {}
        for s in shards:
            head = header_bytes(s.entries, {"format": "pt"})
            pos, rows = len(head), []
            for e in s.entries:
                rows.append((pos, pos + e.nbytes, e.name))
                pos += e.nbytes
            self.layout[s.filename], self.headers[s.filename] = rows, head
        self._cond = threading.Condition()
        self._digests: dict[str, int] = {}
        self._written = {fn: -1 for fn in self.layout}  # bytes written from the start; -1: no file yet
        self._next = {fn: 0 for fn in self.layout}
        self._failed: BaseException | None = None

    def _advance(self, fn: str) -> None:
        rows, i = self.layout[fn], self._next[fn]
        while i < len(rows) and rows[i][2] in self._digests:
            self._written[fn] = rows[i][1]
            i += 1
        self._next[fn] = i
        self._cond.notify_all()

    def header_written(self, fn: str) -> None:
        with self._cond:
            self._written[fn] = len(self.headers[fn])
            self._advance(fn)

    def tensor_written(self, fn: str, name: str, digest: int) -> None:
        with self._cond:
            self._digests[name] = digest
            if self._written[fn] >= 0:
                self._advance(fn)

    def failed(self, exc: BaseException) -> None:
        with self._cond:
            self._failed = exc
            self._cond.notify_all()

    def wait(self, fn: str, upto: int) -> None:
        """Until bytes ``[0, upto)`` of ``fn`` are written (0: until the file exists)."""
        with self._cond:
            while self._written[fn] < upto and self._failed is None:
                self._cond.wait()
            if self._written[fn] < upto:
                raise RuntimeError(f"writing {fn} failed") from self._failed

    def digest(self, name: str) -> int:
        with self._cond:
            return self._digests[name]


def write_weights(ckpt: Zero3Checkpoint, shards: list[Shard], mapping: dict[str, str], folder: pathlib.Path,
                  workers: int, abort: threading.Event | None = None,
                  progress: WriteProgress | None = None) -> WriteProgress:
    """Write every shard: headers first, then the tensors in parallel (``workers`` threads, in file
    order so that a reader can follow, each at its offset with ``pwrite``), each reported to
    ``progress`` with its XXH3 as it completes. ``abort`` set by the caller stops the writers at their
    next piece."""
    progress = progress or WriteProgress(shards)
    fds: dict[str, int] = {}
    abort = abort or threading.Event()
    try:
        for s in shards:
            fd = os.open(folder / s.filename, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            fds[s.filename] = fd
            head = progress.headers[s.filename]
            _pwrite_all(fd, head, 0)
            os.ftruncate(fd, len(head) + s.nbytes)
            progress.header_written(s.filename)
        by_name = {e.name: e for s in shards for e in s.entries}
        tasks = [(fn, start, by_name[name]) for fn, rows in progress.layout.items() for start, _, name in rows]

        def write(fn: str, pos: int, e: TensorEntry) -> None:
            progress.tensor_written(fn, e.name, _write_tensor(ckpt, fds[fn], pos, e, mapping[e.name], abort))

        with ThreadPoolExecutor(max(1, min(workers, len(tasks)))) as ex:
            futs = [ex.submit(write, fn, pos, e) for fn, pos, e in tasks]
            try:
                for fut in futs:
                    fut.result()
            except BaseException:
                abort.set()
                raise
    except BaseException as exc:
        progress.failed(exc)
        raise
    finally:
        for fd in fds.values():
            os.close(fd)
    return progress


def read_back(path: pathlib.Path, progress: WriteProgress | None = None) -> str:
    """SHA-256 of a file as read from disk, then fsync. With ``progress`` (a shard being written), each
    part is read once it is written, and the XXH3-64 of every tensor's bytes is checked against what
    was written (so the checksum in SHA256SUMS is of what is on disk and equals what was meant)."""
    sha = hashlib.sha256()
    buf = bytearray(READ_CHUNK)
    view = memoryview(buf)
    fn = path.name
    if progress is not None:
        progress.wait(fn, 0)
    todo = [r for r in (progress.layout[fn] if progress else []) if r[1] > r[0]]
    i, digest, pos = 0, xxhash.xxh3_64(), 0
    with open(path, "rb", buffering=0) as f:
        size = os.fstat(f.fileno()).st_size
        while pos < size:
            if progress is not None:
                progress.wait(fn, min(pos + READ_CHUNK, size))
            n = f.readinto(buf)
            if not n:
                break
            chunk = view[:n]
            sha.update(chunk)
            end = pos + n
            while i < len(todo) and todo[i][0] < end:
                a, b, name = todo[i]
                lo, hi = max(a, pos), min(b, end)
                digest.update(chunk[lo - pos:hi - pos])
                if hi < b:
                    break
                if digest.intdigest() != progress.digest(name):
                    raise RuntimeError(f"export verification failed: {fn} bytes {a}-{b} read back "
                                       "other than written")
                i += 1
                digest.reset()
            pos = end
        os.fsync(f.fileno())
    if i != len(todo) or pos != size:
        raise RuntimeError(f"export verification failed: {fn} is shorter than written")
    return sha.hexdigest()
