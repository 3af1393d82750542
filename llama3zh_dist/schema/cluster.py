"""``cluster``: where the ranks run and how they talk."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from .base import one_of, require


@dataclass
class ClusterConfig:
    nodes: int = 1
    """Nodes of the job (Slurm sets it from the allocation)."""
    nproc_per_node: int = 8
    """Ranks per node: one per GPU (or 2 CPU ranks for tests)."""
    device: str = "cuda"
    """cuda | cpu."""
    backend: str = "nccl"
    """nccl on GPU, gloo on CPU."""
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    """0 = any free port: node 0's launcher binds and holds it, and tells the other nodes (rendezvous.py)."""
    timeout_minutes: float = 30
    """Collective timeout: a rank that stops answering ends the job instead of hanging it."""
    prep_wait_minutes: float = 120
    """How long non-zero nodes wait for node 0's data preparation."""
    env: Dict[str, Any] = field(default_factory=dict)
    """Extra environment for every rank (NCCL_* knobs, ...)."""
    gpu: Optional[str] = None
    """The GPU model to plan for where none is attached: a name of the table in ``gpus.py``, e.g. H100-SXM
    (a wrong one is answered with the list); null = the attached one."""

    def __post_init__(self):
        require(self.nodes >= 1, "nodes", self.nodes, "a job runs on at least one node")
        require(self.nproc_per_node >= 1, "nproc_per_node", self.nproc_per_node, "each node runs at least one rank")
        one_of("device", self.device, ("cuda", "cpu"))
        one_of("backend", self.backend, ("nccl", "gloo"),
               "NCCL takes CUDA tensors only, gloo CPU ones: nccl on GPU, gloo on CPU")
        require(self.backend == ("nccl" if self.device == "cuda" else "gloo"), "backend", self.backend,
                f"cluster.device={self.device} needs cluster.backend={'nccl' if self.device == 'cuda' else 'gloo'}")
        require(0 <= self.master_port < 65536, "master_port", self.master_port, "a TCP port is in [0, 65535]")
        if self.gpu is not None:
            from ..gpus import by_name, known_names

            require(by_name(self.gpu) is not None, "gpu", self.gpu,
                    f"not in the GPU table (llama3zh_dist/gpus.py): use one of {known_names()}")
        require(self.timeout_minutes > 0, "timeout_minutes", self.timeout_minutes, "a collective needs time to finish")
