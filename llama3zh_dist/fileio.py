"""File safety, written once: checksums, atomic writes, fsync, atomic folder swaps.

Every file a run leaves behind (checkpoint markers, ``latest``, exports, prepared datasets, the best
experiment of a sweep) is written through these, so a crash at any point leaves either the old
complete file or the new complete one, never half of either.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import uuid
from pathlib import Path


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable (a no-op where directories cannot be opened)."""
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


def atomic_write_text(path: Path, text: str, *, fsync: bool = True) -> None:
    """Write ``text`` to a temp file beside ``path``, flush it to disk, rename it over ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}-{uuid.uuid4().hex[:6]}")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def rename_exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False where unsupported.

    Python has no binding for it; a folder replaced by two renames is briefly absent, which a reader
    (a serving process, a resuming rank) could observe.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    AT_FDCWD, RENAME_EXCHANGE = -100, 2
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return fn(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) == 0


def swap_dir_into_place(tmp: Path, out: Path, *, old_name: str, between_renames=lambda: None) -> None:
    """Replace the folder ``out`` by the complete folder ``tmp``: one atomic exchange where the OS
    has it, else ``out`` -> ``old_name`` then ``tmp`` -> ``out`` (``between_renames`` runs in the gap,
    for crash tests). The old contents are removed afterwards."""
    if out.exists() or out.is_symlink():
        if rename_exchange(tmp, out):  # out is now the new folder, tmp holds the old one
            fsync_dir(out.parent)
            shutil.rmtree(tmp, ignore_errors=True)
            return
        old = out.with_name(old_name)
        os.rename(out, old)
        between_renames()
        os.rename(tmp, out)
        fsync_dir(out.parent)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, out)
        fsync_dir(out.parent)


def pid_alive(pid: int) -> bool:
    """Whether another process with this pid exists (the owner of a temp folder, say)."""
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
