"""The rendezvous port: taken only while it is free, and held from that moment until the ranks end.

torch's ``env://`` rendezvous has rank 0 start the job's TCPStore on ``MASTER_PORT``. A launcher
that picks a "free" port (bind 0, close) and lets rank 0 bind it seconds later races everything else
on the machine: a concurrent job or sweep trial, a relaunch, any outgoing connection (Ray opens
many) may take the port in between, and rank 0 dies with ``DistNetworkError: The server socket has
failed to listen on any local network address``. So node 0's launcher hosts the store itself -- one
bind that either holds the port or fails at once -- and keeps it until its ranks exit; the ranks
connect to it as clients (``TORCHELASTIC_USE_AGENT_STORE=True``, what torch's own elastic agent
does under torchrun). A port that is only a first choice (``cluster.master_port=0``, or the one
``slurm/train.sh`` derives from the job id) is replaced by a free one when it is held; a port the
user fixed fails with one message naming the setting. On several nodes, node 0 publishes the port
it holds in ``run.dir`` (already shared: the prep marker lives there) and the other nodes read it.
"""

from __future__ import annotations

import datetime
import os
import sys
import time
from pathlib import Path

from .errors import UserError
from .fileio import atomic_write_text

# Names the setting that fixed MASTER_PORT (for the error message), or "any" when the port is only a
# first choice that may be replaced by a free one. slurm/train.sh sets it; unset, MASTER_PORT from
# the environment counts as fixed by the user.
PORT_SOURCE_ENV = "LLAMA3ZH_MASTER_PORT_SOURCE"
ANY_PORT = "any"
# Set in every rank's environment: the ranks are clients of the store their launcher holds.
AGENT_STORE_ENV = {"TORCHELASTIC_USE_AGENT_STORE": "True"}


def requested_port(cluster_port: int) -> tuple[int, str]:
    """(the port to try first, the setting that fixed it or ``ANY_PORT``)."""
    if os.environ.get("MASTER_PORT"):
        return int(os.environ["MASTER_PORT"]), os.environ.get(PORT_SOURCE_ENV) or "MASTER_PORT"
    port = int(cluster_port)
    return port, ("cluster.master_port" if port else ANY_PORT)


def port_in_use_message(port: int, source: str) -> str:
    fixes = {
        "LLAMA3ZH_MASTER_PORT": "set LLAMA3ZH_MASTER_PORT to a free port, or unset it so that slurm/train.sh "
                                "derives one and the launcher replaces it when held",
        "MASTER_PORT": "set MASTER_PORT to a free port (the same on every node), or unset it to take "
                       "cluster.master_port (0 = any free port)",
        "cluster.master_port": "set cluster.master_port to a free port, or cluster.master_port=0 to take any "
                               "free port",
    }
    fix = fixes.get(source, f"set {source} to a free port")
    return (f"rendezvous port {port} ({source}={port}) is already in use on this machine (another job, or "
            f"a process of an earlier launch still holds it): {fix}")


def _is_bind_failure(e: BaseException) -> bool:
    text = str(e)
    return "failed to listen" in text or "address already in use" in text.lower() or "EADDRINUSE" in text


def hold_store(master_addr: str, port: int, source: str):
    """Bind the job's TCPStore; returns ``(store, port)``. Keep ``store`` alive until the ranks end.

    A held first-choice port is replaced by one the kernel picks (port 0 -> a bound, never-raced
    port); a held fixed port raises UserError.
    """
    from torch.distributed import TCPStore

    def bind(p: int):
        return TCPStore(master_addr, p, world_size=None, is_master=True, wait_for_workers=False,
                        timeout=datetime.timedelta(minutes=5))

    try:
        store = bind(port)
    except RuntimeError as e:  # DistNetworkError is a RuntimeError
        if not _is_bind_failure(e):
            raise
        if source != ANY_PORT:
            raise UserError(port_in_use_message(port, source)) from None
        store = bind(0)
        print(f"launcher: rendezvous port {port} is held by another process; using free port {store.port}",
              file=sys.stderr, flush=True)
    return store, int(store.port)


def _port_file(run_dir: str) -> Path:
    return Path(run_dir).absolute() / ".rendezvous_port"


def publish_port(run_dir: str, token: str, port: int) -> None:
    """Node 0: tell the other nodes which port its store holds (keyed by this launch's id)."""
    atomic_write_text(_port_file(run_dir), f"{token}\n{port}\n")


def await_port(run_dir: str, token: str, wait_minutes: float) -> int:
    """Other nodes: the port node 0 published for this launch."""
    path = _port_file(run_dir)
    deadline = time.time() + 60 * wait_minutes
    while time.time() < deadline:
        try:
            lines = path.read_text().splitlines()
        except FileNotFoundError:
            lines = []
        if len(lines) >= 2 and lines[0] == token:
            return int(lines[1])
        time.sleep(0.5)
    raise UserError(f"waited {wait_minutes} min (cluster.prep_wait_minutes) for node 0 to publish its "
                    f"rendezvous port in {path}; did node 0's launcher fail? (see its log)")


def init_distributed(backend: str, timeout: datetime.timedelta) -> None:
    """``deepspeed.init_distributed``, with a held ``MASTER_PORT`` reported as one clear message.

    Under our launcher or torchrun the store is already bound; this matters when the ranks are
    started directly (srun with one task per GPU), where rank 0 binds ``MASTER_PORT`` itself.
    """
    import deepspeed

    try:
        deepspeed.init_distributed(dist_backend=backend, timeout=timeout)
    except RuntimeError as e:
        if not _is_bind_failure(e) or not os.environ.get("MASTER_PORT"):
            raise
        source = os.environ.get(PORT_SOURCE_ENV) or "MASTER_PORT"
        port = int(os.environ["MASTER_PORT"])
        raise UserError(port_in_use_message(port, "MASTER_PORT" if source == ANY_PORT else source)) from None
