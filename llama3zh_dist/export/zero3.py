"""Read the fp32 master weights of a DeepSpeed ZeRO-3 checkpoint one tensor at a time.

A ZeRO-3 checkpoint (``engine.save_checkpoint``) holds, per data-parallel rank ``r``:

* ``zero_pp_rank_<r>_mp_rank_00_model_states.pt``: ``param_shapes`` (list of ordered dicts, one per
  sub-group, in flattening order), ``shared_params`` (tied names), buffers, frozen-parameter fragments;
* ``*zero_pp_rank_<r>_mp_rank_00_optim_states.pt``: ``optimizer_state_dict.fp32_flat_groups``, a list of
  1-D fp32 tensors (one per sub-group). Parameter ``i`` of numel ``n_i`` is split into
  ``p_i = ceil(n_i / world)`` elements per rank (the last rank zero-padded); rank ``r`` stores its piece at
  offset ``sum_{j<i} p_j`` of the concatenation of its flat groups.

The files are opened with ``torch.load(..., mmap=True)``: nothing is read until a tensor is assembled.
Tensors are streamed in pieces of a few MB (``iter_chunks``); after each piece is written, its pages
are dropped from this process (``madvise(MADV_DONTNEED)`` on the private, never-written file mapping),
so resident memory holds a few MB per writer, whatever the tensor or model size. Unpickling uses stub classes for
DeepSpeed's own objects (enums, loss scaler), so DeepSpeed need not be imported.
"""

from __future__ import annotations

import ctypes
import math
import os
import pathlib
import pickle
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass

import torch

from llama3zh_dist.errors import UserError

_RANK_RE = re.compile(r"zero_pp_rank_(\d+)_mp_rank_(\d+)_(model|optim)_states\.pt$")


# ---------------------------------------------------------------------------------------------------
# Unpickling without DeepSpeed


class _Stub:
    """Stands in for any DeepSpeed class found in a checkpoint pickle."""

    _stub_name = "?"

    def __init__(self, *args, **kwargs):
        self._stub_args = args

    def __setstate__(self, state):
        if isinstance(state, dict):
            self.__dict__.update(state)
        else:
            self._stub_state = state

    def __repr__(self):
        return f"<{self._stub_name}{self._stub_args}>"


class _Unpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if module == "deepspeed" or module.startswith("deepspeed."):
            return type(name, (_Stub,), {"_stub_name": f"{module}.{name}"})
        return super().find_class(module, name)


class _PickleModule:
    """A ``pickle_module`` for ``torch.load`` that never imports DeepSpeed."""

    Unpickler = _Unpickler
    load = staticmethod(pickle.load)
    __name__ = "llama3zh_dist_export_pickle"


def _torch_load(path: pathlib.Path):
    try:
        return torch.load(str(path), map_location="cpu", mmap=True, weights_only=False, pickle_module=_PickleModule)
    except Exception as e:  # noqa: BLE001 - turned into one clear message
        raise UserError(f"cannot read checkpoint file {path}: {e}. The checkpoint is damaged; export another "
                        "step with export.step=N") from e


def _as_int(v) -> int:
    if isinstance(v, (list, tuple)):
        return max(_as_int(x) for x in v)
    args = getattr(v, "_stub_args", None)
    if args:
        return int(args[0])
    return int(v)


# ---------------------------------------------------------------------------------------------------
# Dropping pages of a memory-mapped file from this process


class _PageDropper:
    """``madvise(MADV_DONTNEED)`` on ranges of read-only private file mappings (Linux).

    Only addresses that /proc/self/maps shows inside a mapping of the expected checkpoint file are
    ever advised, so anonymous memory (which MADV_DONTNEED would zero) is never touched.
    """

    MADV_DONTNEED = 4

    def __init__(self):
        self.page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
        try:
            self._libc = ctypes.CDLL(None, use_errno=True)
            self._libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
            self._ok = pathlib.Path("/proc/self/maps").exists()
        except (OSError, AttributeError):
            self._ok = False

    @staticmethod
    def file_mappings(path: pathlib.Path) -> list[tuple[int, int]]:
        real = os.path.realpath(path)
        out = []
        try:
            with open("/proc/self/maps") as f:
                for line in f:
                    parts = line.split(maxsplit=5)
                    if len(parts) == 6 and parts[5].strip() == real and parts[1].startswith("r"):
                        lo, hi = (int(x, 16) for x in parts[0].split("-"))
                        out.append((lo, hi))
        except OSError:
            return []
        return out

    def covered(self, t: torch.Tensor, maps: list[tuple[int, int]]) -> bool:
        lo = t.data_ptr()
        hi = lo + t.numel() * t.element_size()
        return self._ok and any(a <= lo and hi <= b for a, b in maps)

    def drop(self, addr: int, nbytes: int) -> None:
        if nbytes <= 0:
            return
        start = addr - addr % self.page
        length = addr + nbytes - start
        self._libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(length), self.MADV_DONTNEED)


# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorSource:
    """Where one consolidated tensor comes from."""

    name: str
    shape: tuple[int, ...]
    kind: str  # "partitioned" | "frozen" | "buffer"
    offset: int = 0  # rank-local offset into the concatenated flat groups (partitioned)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


class Zero3Checkpoint:
    """The fp32 weights of one ZeRO-3 checkpoint folder, readable tensor by tensor."""

    def __init__(self, ckpt_dir: str | os.PathLike):
        self.dir = pathlib.Path(ckpt_dir)
        model_files = self._rank_files("model")
        optim_files = self._rank_files("optim")
        if not model_files or not optim_files:
            raise UserError(f"{self.dir} is not a DeepSpeed ZeRO-3 checkpoint (no *_model_states.pt / "
                            "*_optim_states.pt files)")
        ms0 = _torch_load(model_files[0])
        if "param_shapes" not in ms0:
            raise UserError(f"{model_files[0]} is not a DeepSpeed model-state file")
        self.ds_version = ms0.get("ds_version")
        self.shared_params: dict[str, str] = dict(ms0.get("shared_params") or {})
        shapes = ms0["param_shapes"]
        if isinstance(shapes, dict):
            shapes = [shapes]
        self.sources: "OrderedDict[str, TensorSource]" = OrderedDict()
        offset = 0
        optims = [_torch_load(f) for f in optim_files]
        osd0 = optims[0]["optimizer_state_dict"]
        stage = _as_int(osd0.get("zero_stage", 0))
        if stage != 3:
            raise UserError(f"{self.dir} is a ZeRO stage {stage} checkpoint; this exporter reads ZeRO-3 "
                            "checkpoints (deepspeed.stage=3)")
        self.world_size = _as_int(osd0["partition_count"])
        if self.world_size != len(optim_files):
            raise UserError(f"{self.dir} has {len(optim_files)} optimizer-state files but was saved by "
                            f"{self.world_size} ranks: the checkpoint is incomplete")
        ws = self.world_size
        for group in shapes:
            for name, shape in group.items():
                shape = tuple(int(s) for s in shape)
                self.sources[name] = TensorSource(name, shape, "partitioned", offset)
                offset += math.ceil(math.prod(shape) / ws)
        # fp32 flat groups per rank (mmap'd 1-D tensors); drop the Adam moments right away
        self._groups: list[list[torch.Tensor]] = []
        for f, sd in zip(optim_files, optims):
            osd = sd["optimizer_state_dict"]
            osd.pop("optimizer_state_dict", None)
            groups = [g.detach() for g in osd["fp32_flat_groups"]]
            if any(g.dtype != torch.float32 or g.dim() != 1 for g in groups):
                raise UserError(f"{f}: fp32_flat_groups are not 1-D fp32 tensors")
            self._groups.append(groups)
        del optims, osd0
        sizes = [g.numel() for g in self._groups[0]]
        if any([g.numel() for g in gs] != sizes for gs in self._groups):
            raise UserError(f"{self.dir}: ranks disagree on the partition sizes; the checkpoint is damaged")
        if sum(sizes) != offset:
            raise UserError(f"{self.dir}: the fp32 partitions hold {sum(sizes)} elements per rank but the "
                            f"parameter shapes need {offset}; the checkpoint is damaged")
        self._group_starts = [0]
        for s in sizes:
            self._group_starts.append(self._group_starts[-1] + s)
        # frozen parameters: fragments per rank in the model-state files
        self._frozen: dict[str, list[torch.Tensor]] = {}
        frozen_shapes = ms0.get("frozen_param_shapes") or {}
        if frozen_shapes:
            states = [ms0] + [_torch_load(f) for f in model_files[1:]]
            for name, shape in frozen_shapes.items():
                self.sources[name] = TensorSource(name, tuple(int(s) for s in shape), "frozen")
                self._frozen[name] = [s["frozen_param_fragments"][name] for s in states]
        # buffers (whole on every rank)
        module = ms0.get("module") or {}
        # the module's state-dict names in their order (ZeRO-3 saves empty placeholders under them):
        # the order ``save_pretrained`` writes, where ``sources`` follow DeepSpeed's parameter groups
        self.state_dict_names: list[str] = list(module)
        self._buffers = {k: module[k] for k in (ms0.get("buffer_names") or []) if k in module}
        for k, v in self._buffers.items():
            self.sources[k] = TensorSource(k, tuple(v.shape), "buffer")
        self._buffer_dtypes = {k: v.dtype for k, v in self._buffers.items()}
        # page dropping: only for groups inside a read-only mapping of their own file
        self._dropper = _PageDropper()
        self._droppable: list[list[bool]] = []
        for f, groups in zip(optim_files, self._groups):
            maps = self._dropper.file_mappings(f)
            self._droppable.append([self._dropper.covered(g, maps) for g in groups])
        self._lock = threading.Lock()

    def _rank_files(self, kind: str) -> list[pathlib.Path]:
        found = {}
        for p in self.dir.iterdir():
            m = _RANK_RE.search(p.name)
            if m and m.group(3) == kind and m.group(2) == "00":
                found[int(m.group(1))] = p
        if found and sorted(found) != list(range(len(found))):
            raise UserError(f"{self.dir}: {kind}-state files for ranks {sorted(found)} - some ranks are missing; "
                            "the checkpoint is incomplete")
        return [found[r] for r in sorted(found)]

    @property
    def pages_dropped(self) -> bool:
        """Whether consumed pages are released (all fp32 groups are file-backed mappings)."""
        return all(all(d) for d in self._droppable)

    def dtype_of(self, name: str) -> torch.dtype:
        src = self.sources[name]
        return self._buffer_dtypes[name] if src.kind == "buffer" else torch.float32

    def read_into(self, name: str, out: torch.Tensor) -> None:
        """Copy (and cast) the consolidated tensor ``name`` into the 1-D contiguous tensor ``out``."""
        src = self.sources[name]
        n = src.numel
        if out.dim() != 1 or out.numel() != n:
            raise ValueError(f"{name}: output buffer of {out.numel()} elements for a tensor of {n}")
        if src.kind == "buffer":
            out.copy_(self._buffers[name].reshape(-1))
            return
        if src.kind == "frozen":
            pos = 0
            for frag in self._frozen[name]:
                take = min(frag.numel(), n - pos)
                if take <= 0:
                    break
                out[pos:pos + take].copy_(frag.reshape(-1)[:take])
                pos += take
            if pos != n:
                raise UserError(f"{self.dir}: frozen parameter {name} is incomplete")
            return
        per_rank = math.ceil(n / self.world_size)
        for r in range(self.world_size):
            start = r * per_rank
            if start >= n:
                break
            count = min(per_rank, n - start)
            self._copy_rank_slice(r, src.offset, count, out[start:start + count])

    def iter_chunks(self, name: str, dtype: torch.dtype, chunk: int = 1 << 21, buf: torch.Tensor | None = None):
        """The consolidated tensor ``name``, flattened and cast to ``dtype``, as consecutive pieces of at
        most ``chunk`` elements. Each piece is a view of one reused buffer (``buf`` when given, a 1-D
        ``dtype`` tensor of at least ``chunk`` elements), or for fp32 a view of the mapped checkpoint
        itself: use it before the next."""
        src = self.sources[name]
        n = src.numel
        if src.kind != "partitioned":
            out = torch.empty(n, dtype=dtype)
            self.read_into(name, out)
            yield out
            return
        if buf is None or buf.dtype != dtype or buf.numel() < min(chunk, n):
            buf = torch.empty(max(1, min(chunk, n)), dtype=dtype)
        per_rank = math.ceil(n / self.world_size)
        for r in range(self.world_size):
            start = r * per_rank
            if start >= n:
                break
            count = min(per_rank, n - start)
            pos = 0
            while pos < count:
                take = min(chunk, count - pos)
                if dtype == torch.float32:
                    # the fp32 partitions are the export's bytes already: hand out views of the mapped
                    # file (no copy), its pages dropped once the caller is done with each
                    for piece, droppable in self._rank_pieces(r, src.offset + pos, take):
                        yield piece
                        if droppable:
                            self._dropper.drop(piece.data_ptr(), piece.numel() * 4)
                else:
                    self._copy_rank_slice(r, src.offset + pos, take, buf[:take])
                    yield buf[:take]
                pos += take

    def _rank_pieces(self, rank: int, offset: int, count: int):
        """(view, droppable) of rank ``rank``'s flat fp32 groups covering ``count`` elements from
        ``offset`` (one view per group crossed)."""
        starts = self._group_starts
        pos = 0
        while pos < count:
            g = _bisect_right(starts, offset + pos) - 1
            local = offset + pos - starts[g]
            take = min(count - pos, starts[g + 1] - starts[g] - local)
            yield self._groups[rank][g].narrow(0, local, take), self._droppable[rank][g]
            pos += take

    def _copy_rank_slice(self, rank: int, offset: int, count: int, out: torch.Tensor) -> None:
        pos = 0
        for piece, droppable in self._rank_pieces(rank, offset, count):
            out[pos:pos + piece.numel()].copy_(piece)
            if droppable:
                self._dropper.drop(piece.data_ptr(), piece.numel() * 4)
            pos += piece.numel()

    def read(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The whole tensor ``name`` (for tests and small tensors)."""
        src = self.sources[name]
        out = torch.empty(src.numel, dtype=dtype or self.dtype_of(name))
        self.read_into(name, out)
        return out.view(src.shape)


def _bisect_right(a, x):
    lo, hi = 0, len(a)
    while lo < hi:
        mid = (lo + hi) // 2
        if x < a[mid]:
            hi = mid
        else:
            lo = mid + 1
    return lo
