"""The training loop's own collectives, with their tensors on the training device.

NCCL accepts only CUDA tensors on the rank's current device ("No backend type associated with
device type cpu"); gloo accepts CPU tensors. A scalar built with ``torch.tensor([...])`` lands on
the CPU, so a loop that passes every CPU test crashes at step 1 on GPUs. Every collective the
recipe issues goes through ``Collectives``, which builds its tensors on ``device`` and hands
plain Python numbers back; nothing else in the loop calls ``torch.distributed`` with a tensor.
(DeepSpeed's own collectives place their tensors themselves.)
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import torch
import torch.distributed as dist


def cuda_device_index(local_rank: int, visible_devices: int) -> int:
    """Which CUDA device this rank drives.

    With one task per GPU (``srun --ntasks-per-node=8 --gpus-per-task=1``) every rank sees exactly
    one device, index 0, whatever its local rank; with one task per node starting all local ranks
    every rank sees all of the node's GPUs and takes the one of its local rank.
    """
    if visible_devices < 1:
        raise RuntimeError("cluster.device=cuda but this rank sees no CUDA device (check CUDA_VISIBLE_DEVICES)")
    if visible_devices == 1:
        return 0
    if local_rank >= visible_devices:
        raise RuntimeError(
            f"local rank {local_rank} but only {visible_devices} CUDA devices are visible to it: "
            "start at most one rank per visible GPU (cluster.nproc_per_node)"
        )
    return local_rank


NODE_LOCAL_RANK = "LLAMA3ZH_NODE_LOCAL_RANK"  # the launcher's LOCAL_RANK, where LOCAL_RANK had to change


def pin_local_rank_to_device(local_rank: int, visible_devices: int, environ=os.environ) -> int:
    """Make ``LOCAL_RANK`` the index of the CUDA device this rank drives; returns that index.

    DeepSpeed takes the device from ``LOCAL_RANK`` itself (``zero.Init``: ``cuda:$LOCAL_RANK``; the
    engine: ``set_device(LOCAL_RANK)``). With one task per GPU a rank of local rank 3 sees one GPU,
    index 0, and DeepSpeed would fail with "invalid device ordinal". So before DeepSpeed starts,
    ``LOCAL_RANK`` becomes the visible index; the node-local rank stays in ``LLAMA3ZH_NODE_LOCAL_RANK``
    for logs. Calling it again is harmless.
    """
    local_rank = int(environ.get(NODE_LOCAL_RANK, local_rank))
    index = cuda_device_index(local_rank, visible_devices)
    if index != local_rank:
        environ[NODE_LOCAL_RANK] = str(local_rank)
    environ["LOCAL_RANK"] = str(index)
    return index


def training_device(kind: str, local_rank: int | None = None) -> torch.device:
    """The device this rank trains on; on CUDA it also becomes the current device, and LOCAL_RANK
    names it for DeepSpeed (``pin_local_rank_to_device``)."""
    if kind != "cuda":
        return torch.device("cpu")
    local_rank = int(os.environ.get("LOCAL_RANK", 0)) if local_rank is None else local_rank
    index = pin_local_rank_to_device(local_rank, torch.cuda.device_count())
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


class Collectives:
    """All-reduce / gather / broadcast of small host values over the default process group."""

    def __init__(self, device: torch.device):
        self.device = torch.device(device)

    def _tensor(self, values: Sequence[float], dtype: torch.dtype) -> torch.Tensor:
        return torch.tensor(list(values), dtype=dtype, device=self.device)

    def sum(self, values: Sequence[float], dtype: torch.dtype = torch.float64) -> list[float]:
        """Element-wise sum over ranks (float64: token counts and loss sums stay exact)."""
        t = self._tensor(values, dtype)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.tolist()

    def max(self, values: Sequence[float]) -> list[float]:
        """Element-wise maximum over ranks (flags: any rank saying 1 makes it 1 everywhere)."""
        t = self._tensor(values, torch.float32)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t.tolist()

    def any(self, flag: bool) -> bool:
        return self.max([1.0 if flag else 0.0])[0] > 0

    def gather_objects(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``; torch pickles through a tensor on the current CUDA device under NCCL."""
        out: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]

    def barrier(self) -> None:
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[self.device.index])  # NCCL would otherwise guess the device
        else:
            dist.barrier()
