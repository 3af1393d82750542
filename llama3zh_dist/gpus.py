"""The GPU models we plan for and compute MFU against: memory, dense bf16 peak, interconnect.

One table for the planner (``python -m llama3zh_dist.plan``) and for the MFU logged by training.
Names are matched exactly against ``torch.cuda.get_device_name()`` (after dropping the "NVIDIA "
prefix), never by substring: "H100" alone would also match the PCIe and NVL parts, whose peaks
are 756 and 835 TFLOP/s, not the SXM part's 989.

Figures: NVIDIA datasheets (dense tensor-core bf16, no sparsity); memory as the driver reports it
(nvidia-smi MiB); NVLink per GPU, one direction; inter-node per GPU, one direction, for the usual
build of each part (one 400 Gb/s NIC per GPU on H100/H200/H800 systems, 200 Gb/s on A100/A800; the
PCIe cards share one or two NICs per node). A site with other NICs sets ``plan.inter_node_gbytes_s``.
"""

from __future__ import annotations

from dataclasses import dataclass

MIB = 2**20


@dataclass(frozen=True)
class GPU:
    name: str  # the cluster.gpu spelling
    memory_bytes: int
    bf16_flops: float  # dense peak, FLOP/s
    intra_node_bytes_s: float  # NVLink (or PCIe where no NVLink), per GPU, one direction
    inter_node_bytes_s: float  # network per GPU, one direction
    device_names: tuple[str, ...]  # torch.cuda.get_device_name() values, without "NVIDIA "


GB = 1e9
GPUS: tuple[GPU, ...] = (
    GPU("H100-SXM", 81559 * MIB, 989e12, 450 * GB, 50 * GB, ("H100 80GB HBM3",)),
    GPU("H100-PCIe", 81559 * MIB, 756e12, 64 * GB, 25 * GB, ("H100 PCIe",)),
    GPU("H100-NVL", 95830 * MIB, 835e12, 300 * GB, 25 * GB, ("H100 NVL",)),
    GPU("H200", 143771 * MIB, 989e12, 450 * GB, 50 * GB, ("H200",)),
    # the PCIe card: 835 dense TFLOP/s like the H100 NVL (not the SXM part's 989), a 2- or 4-way
    # NVLink bridge (900 GB/s both directions), the node's NICs shared as on the other PCIe cards
    GPU("H200-NVL", 143771 * MIB, 835e12, 450 * GB, 25 * GB, ("H200 NVL",)),
    GPU("H800", 81559 * MIB, 989e12, 200 * GB, 50 * GB, ("H800", "H800 80GB HBM3")),
    GPU("A100-80GB", 81920 * MIB, 312e12, 300 * GB, 25 * GB, ("A100-SXM4-80GB", "A100 80GB PCIe")),
    GPU("A100-40GB", 40960 * MIB, 312e12, 300 * GB, 25 * GB, ("A100-SXM4-40GB", "A100-PCIE-40GB")),
    GPU("A800", 81920 * MIB, 312e12, 200 * GB, 25 * GB, ("A800-SXM4-80GB", "A800 80GB PCIe")),
    GPU("L40S", 46068 * MIB, 362e12, 32 * GB, 12.5 * GB, ("L40S",)),
    GPU("RTX-4090", 24564 * MIB, 165e12, 32 * GB, 12.5 * GB, ("GeForce RTX 4090",)),
)


def by_name(name: str) -> GPU | None:
    """The table entry for a ``cluster.gpu`` value (case-insensitive) or a torch device name."""
    key = str(name).strip()
    if key.upper().startswith("NVIDIA "):
        key = key[7:]
    for gpu in GPUS:
        if key.lower() == gpu.name.lower() or key in gpu.device_names:
            return gpu
    return None


def known_names() -> str:
    return ", ".join(g.name for g in GPUS)


def attached_gpu() -> tuple[str, int] | None:
    """(device name, total memory) of this process's CUDA device, or None without one."""
    import torch

    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    return props.name, int(props.total_memory)


def peak_bf16_flops(device: str) -> float | None:
    """Dense bf16 peak of the attached GPU; None on CPU or for a GPU not in the table (mfu = null)."""
    if device != "cuda":
        return None
    found = attached_gpu()
    gpu = by_name(found[0]) if found else None
    return gpu.bf16_flops if gpu else None
