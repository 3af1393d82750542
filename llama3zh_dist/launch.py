"""Starting the local ranks of one node, and preparing data before any process group exists.

We start ranks ourselves instead of calling torchrun because the launcher must (a) pass a rank's
exit code 75 ("saved after preemption, requeue me") through to Slurm, which torchrun's elastic
agent turns into a generic failure, (b) forward SIGUSR1/SIGTERM to every rank, and (c) stop the
surviving ranks promptly when one dies, so a dead or hung rank ends the job instead of leaving it
waiting. Under torchrun or one-task-per-GPU srun, the process runs as the given rank instead.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from omegaconf import DictConfig

from . import EXIT_REQUEUE
from .errors import UserError
from .fileio import atomic_write_text
from .rendezvous import AGENT_STORE_ENV, await_port, hold_store, publish_port, requested_port

FAILED_RANK_GRACE_S = 15  # surviving ranks get this long to exit on their own after a failure
REQUEUE_GRACE_S = 120  # after a rank exits 75 the others are finishing the same save


def in_worker_mode() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def node_rank(cfg: DictConfig) -> int:
    if int(cfg.cluster.nodes) == 1:
        return 0
    for var in ("NODE_RANK", "SLURM_NODEID", "GROUP_RANK"):
        if var in os.environ:
            return int(os.environ[var])
    raise UserError(
        f"cluster.nodes={cfg.cluster.nodes} but this node's rank is unknown: start one launcher per "
        "node with srun (SLURM_NODEID) or set NODE_RANK"
    )


def launch_id() -> str:
    """Identifies one launch of the job on all nodes (so nodes never trust a stale prep marker)."""
    for var in ("LLAMA3ZH_LAUNCH_ID", "TORCHELASTIC_RUN_ID"):
        if os.environ.get(var):
            return os.environ[var]
    if "SLURM_JOB_ID" in os.environ:
        return f"slurm-{os.environ['SLURM_JOB_ID']}-{os.environ.get('SLURM_RESTART_COUNT', '0')}-{os.environ.get('SLURM_STEP_ID', '')}"
    return f"{os.environ.get('MASTER_ADDR', 'local')}:{os.environ.get('MASTER_PORT', '')}:{os.getppid()}"


def ensure_prepared_data(cfg: DictConfig, *, is_preparer: bool) -> Path:
    """The prepared dataset folder; prepared here by one process, awaited by the others.

    Runs before any process group exists: tokenising a large corpus inside a collective would
    outlast the collective timeout.
    """
    marker = Path(cfg.run.dir).absolute() / ".prep_done"
    token = launch_id()
    if is_preparer:
        from .data.prep import prepare_dataset

        marker.parent.mkdir(parents=True, exist_ok=True)
        try:
            out = Path(prepare_dataset(cfg)).absolute()
        except BaseException as e:
            # Tell the waiting nodes at once instead of letting them time out.
            atomic_write_text(marker, f"{token}\nFAILED: {type(e).__name__}: {str(e)[:500]}\n")
            raise
        atomic_write_text(marker, f"{token}\n{out}\n")
        return out
    deadline = time.time() + 60 * float(cfg.cluster.prep_wait_minutes)
    while time.time() < deadline:
        if marker.exists():
            lines = marker.read_text().splitlines()
            if len(lines) >= 2 and lines[0] == token:
                if lines[1].startswith("FAILED: "):
                    raise UserError(f"node 0 failed to prepare the data ({lines[1][8:]}); see its log")
                return Path(lines[1])
        time.sleep(2)
    raise UserError(
        f"waited {cfg.cluster.prep_wait_minutes} min (cluster.prep_wait_minutes) for node 0 to prepare "
        f"the data; is run.dir={cfg.run.dir} on a filesystem shared by all nodes?"
    )


def cpu_rank_environment(env: dict[str, str], nproc: int) -> dict[str, str]:
    """``env`` with the settings a CPU rank runs best with; values already set win."""
    base = dict(env)
    # Ranks share the cores: without this each rank starts as many threads as there are cores.
    base.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    # glibc's malloc serves buffers above 32 MB with a fresh mmap and unmaps them on free (and
    # trims the heap top), so the loss head's [tokens, 128256] fp32 logits (175 MB per row of
    # the quickstart, up to 1 GB a chunk) were page-faulted in, zeroed by the kernel, every step:
    # 310k page faults a step, a third of a CPU rank's time in the kernel. Kept in the heap,
    # the memory is reused from step to step (2 CPU ranks, quickstart: 1.62 -> 1.07 CPU-s a
    # step). The resident peak is the same: every step touches it again anyway.
    base.setdefault("MALLOC_MMAP_THRESHOLD_", str(4 << 30))
    base.setdefault("MALLOC_TRIM_THRESHOLD_", str(64 << 30))
    # The CPU is the intended accelerator here: DeepSpeed need not probe for GPUs and warn.
    base.setdefault("DS_ACCELERATOR", "cpu")
    return base


def launch_local_ranks(cfg: DictConfig, argv: list[str], data_dir: Path) -> int:
    """Start this node's ranks, forward signals, and return the job's exit code."""
    nodes, nproc = int(cfg.cluster.nodes), int(cfg.cluster.nproc_per_node)
    nrank = node_rank(cfg)
    master_addr = os.environ.get("MASTER_ADDR") or str(cfg.cluster.master_addr)
    # Node 0 holds the rendezvous store (bound once, kept until the ranks exit): see rendezvous.py.
    store = None
    if nrank == 0:
        store, port = hold_store(master_addr, *requested_port(cfg.cluster.master_port))
        if nodes > 1:
            publish_port(cfg.run.dir, launch_id(), port)
    else:
        port = await_port(cfg.run.dir, launch_id(), float(cfg.cluster.prep_wait_minutes))
    base = dict(os.environ)
    # Unset knobs (null) are left to the site's environment rather than exported as "None".
    base.update({k: str(v) for k, v in (cfg.cluster.env or {}).items() if v is not None})
    if cfg.cluster.device == "cpu":
        base = cpu_rank_environment(base, nproc)
    procs: list[subprocess.Popen] = []
    for local in range(nproc):
        env = dict(base)
        env.update({
            "RANK": str(nrank * nproc + local), "WORLD_SIZE": str(nodes * nproc), "LOCAL_RANK": str(local),
            "LOCAL_WORLD_SIZE": str(nproc), "NODE_RANK": str(nrank), "MASTER_ADDR": master_addr,
            "MASTER_PORT": str(port), "LLAMA3ZH_DATA_DIR": str(data_dir), **AGENT_STORE_ENV,
        })
        procs.append(subprocess.Popen([sys.executable, "-m", "llama3zh_dist", *argv], env=env,
                                      preexec_fn=_term_when_parent_dies))

    def forward(signum, frame):
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    for sig in (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    try:
        return _wait(procs)
    finally:
        del store  # released only now: the ranks are gone


def _term_when_parent_dies() -> None:
    """In the child: get SIGTERM if the launcher dies (even by SIGKILL), so no rank is orphaned.

    SIGTERM, like a preemption, makes the ranks save at the next step and exit. Linux only.
    """
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM))


def _wait(procs: list[subprocess.Popen]) -> int:
    first_exit: tuple[float, int] | None = None
    while True:
        codes = [p.poll() for p in procs]
        if all(c is not None for c in codes):
            break
        done = [(i, c) for i, c in enumerate(codes) if c is not None]
        if done and first_exit is None:
            first_exit = (time.time(), done[0][1])
            if done[0][1] not in (0, EXIT_REQUEUE):
                print(f"launcher: local rank {done[0][0]} exited with {done[0][1]}; the other ranks get "
                      f"{FAILED_RANK_GRACE_S}s to exit before they are stopped", file=sys.stderr, flush=True)
        if first_exit is not None:
            t0, code = first_exit
            grace = REQUEUE_GRACE_S if code == EXIT_REQUEUE else (None if code == 0 else FAILED_RANK_GRACE_S)
            if grace is not None and time.time() - t0 > grace:
                for i, p in enumerate(procs):
                    if p.poll() is None:
                        print(f"launcher: stopping local rank {i} (pid {p.pid}) {grace}s after another rank "
                              f"exited {code}", file=sys.stderr, flush=True)
                        p.kill()
        time.sleep(0.5)
    codes = [p.returncode for p in procs]
    if all(c == 0 for c in codes):
        return 0
    if all(c in (0, EXIT_REQUEUE) for c in codes):
        return EXIT_REQUEUE
    bad = next(c for c in codes if c not in (0, EXIT_REQUEUE))
    print(f"launcher: ranks exited with {codes}", file=sys.stderr, flush=True)
    return bad if bad > 0 else 1
