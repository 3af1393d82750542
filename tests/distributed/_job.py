"""Helpers for the resilience tests: real training jobs (launcher + 2 CPU ranks on gloo, tiny model).

``start(run_dir, data_dir, ...)`` runs ``python -m llama3zh_dist +experiment=quickstart ...`` exactly as a
user would, in its own process group (so a test can kill the whole job like a node failure), with its
output in ``<run_dir>.log``. ``checkpoint_states(ckpt)`` reads a ZeRO-3 checkpoint back into whole
tensors per parameter (fp32 weights and both Adam moments) independently of DeepSpeed's loaders, so two
checkpoints written with different world sizes can be compared.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[2]

# The quickstart pipeline shrunk to what these tests need: fp32 tiny model, 2 rows per step (one per
# rank), weight decay on (so per-group optimizer hyperparameters matter), no W&B, no export.
BASE = [
    "+experiment=quickstart",
    "export.enabled=false",
    "logger.mode=disabled",
    "trainer.progress_bar=false",
    "trainer.global_batch_size=2",
    "trainer.weight_decay=0.01",
]

SAFETY_WAIT_S = 1800  # only so that a broken build cannot hang CI forever; no test relies on it


def job_args(run_dir: Path, data_dir: Path, *overrides: str) -> list[str]:
    """BASE plus the test's overrides; a later override of the same key replaces an earlier one."""
    merged: dict[str, str] = {}
    for o in [*BASE, f"run.dir={run_dir}", f"data.out_dir={data_dir}", *overrides]:
        merged[o.split("=", 1)[0]] = o
    return list(merged.values())


@dataclass
class Job:
    proc: subprocess.Popen
    run_dir: Path
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait(self) -> int:
        return self.proc.wait(timeout=SAFETY_WAIT_S)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def running(self) -> bool:
        return self.proc.poll() is None

    def rank_pids(self) -> dict[int, int]:
        """{global rank: pid} of the rank processes the launcher started."""
        out = {}
        for child in psutil.Process(self.pid).children():
            try:
                env = child.environ()
            except psutil.Error:
                continue
            if "RANK" in env:
                out[int(env["RANK"])] = child.pid
        return out

    def kill_all(self) -> None:
        """SIGKILL the launcher and every rank at once (a node losing power)."""
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def start(run_dir: Path, data_dir: Path, *overrides: str, env: dict | None = None, log_suffix: str = "") -> Job:
    run_dir = Path(run_dir)
    log = run_dir.with_name(run_dir.name + (log_suffix or "") + ".log")
    full_env = dict(os.environ)
    full_env.update({"PYTHONWARNINGS": "ignore::FutureWarning", "PYTHONUNBUFFERED": "1"})
    full_env.update(env or {})
    with open(log, "w") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "llama3zh_dist", *job_args(run_dir, data_dir, *overrides)],
            cwd=ROOT, env=full_env, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    return Job(proc, run_dir, log)


def run(run_dir: Path, data_dir: Path, *overrides: str, env: dict | None = None, log_suffix: str = "") -> tuple[int, str]:
    job = start(run_dir, data_dir, *overrides, env=env, log_suffix=log_suffix)
    rc = job.wait()
    return rc, job.output()


def wait_until(job: Job, predicate, poll: float = 0.05):
    """Poll ``predicate()`` until it returns something truthy; fail if the job ends first."""
    while True:
        got = predicate()
        if got:
            return got
        if not job.running():
            got = predicate()
            if got:
                return got
            raise AssertionError(f"job ended (exit {job.proc.returncode}) before the awaited event:\n{job.output()[-4000:]}")
        time.sleep(poll)


def metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass  # a line being written right now
    return out


def last_step(run_dir: Path) -> int:
    m = metrics(run_dir)
    return m[-1]["step"] if m else 0


def complete_steps(run_dir: Path) -> list[int]:
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(int(d.name[5:]) for d in root.iterdir()
                  if re.fullmatch(r"step_\d+", d.name) and (d / "complete.json").is_file())


def save_seconds(log_text: str) -> list[float]:
    return [float(x) for x in re.findall(r"checkpoint step_\d+ complete \(([\d.]+)s\)", log_text)]


# -- reading checkpoints ---------------------------------------------------------------------------

def _load(path: Path):
    import torch

    return torch.load(str(path), map_location="cpu", weights_only=False)


def _rank_files(ckpt: Path, kind: str) -> list[Path]:
    files = sorted(ckpt.glob(f"*zero_pp_rank_*_mp_rank_00_{kind}_states.pt"),
                   key=lambda p: int(re.search(r"zero_pp_rank_(\d+)_", p.name).group(1)))
    assert files, f"no {kind} states in {ckpt}"
    return files


def raw_states(ckpt: Path) -> list[dict]:
    """Per rank: the flat fp32 partitions and Adam moments and step, exactly as saved."""
    import torch

    out = []
    for f in _rank_files(Path(ckpt), "optim"):
        osd = _load(f)["optimizer_state_dict"]
        inner = osd["optimizer_state_dict"]
        keys = sorted(inner["state"])
        out.append({
            "fp32": torch.cat([g.reshape(-1) for g in osd["fp32_flat_groups"]]),
            "exp_avg": torch.cat([inner["state"][k]["exp_avg"].reshape(-1) for k in keys]),
            "exp_avg_sq": torch.cat([inner["state"][k]["exp_avg_sq"].reshape(-1) for k in keys]),
            "step": [float(inner["state"][k]["step"]) for k in keys],
            "param_groups": [{k: v for k, v in g.items() if k != "params"} for g in inner["param_groups"]],
        })
    return out


def checkpoint_states(ckpt: Path) -> dict:
    """Whole tensors per parameter, whatever the world size that saved ``ckpt``.

    ZeRO-3 layout: the parameters, in the order of ``param_shapes``, are each split into
    ``ceil(numel / world)`` elements per rank (the last rank zero-padded) and rank r stores its
    pieces one after another in its flat groups (fp32 weights, and the same layout for exp_avg and
    exp_avg_sq).
    """
    import torch

    ckpt = Path(ckpt)
    ms = _load(_rank_files(ckpt, "model")[0])
    shapes = ms["param_shapes"]
    if isinstance(shapes, dict):
        shapes = [shapes]
    ranks = raw_states(ckpt)
    world = len(ranks)
    params: dict[str, dict[str, torch.Tensor]] = {}
    offset = 0
    for group in shapes:
        for name, shape in group.items():
            n = math.prod(int(s) for s in shape)
            per = math.ceil(n / world)
            whole = {}
            for key in ("fp32", "exp_avg", "exp_avg_sq"):
                pieces = torch.cat([r[key][offset:offset + per] for r in ranks])[:n]
                whole[key] = pieces.reshape(tuple(int(s) for s in shape)).clone()
            params[name] = whole
            offset += per
    for r in ranks:
        assert r["fp32"].numel() == offset, f"{ckpt}: partition sizes do not match the parameter shapes"
    return {
        "params": params,
        "adam_step": ranks[0]["step"],
        "param_groups": ranks[0]["param_groups"],
        "lr_scheduler": ms.get("lr_scheduler"),
        "trainer_state": json.loads((ckpt / "trainer_state.json").read_text()),
    }


# -- running a rank of the real recipe outside the launcher (world-size tests) ----------------------

def run_ranks(script: Path, world_size: int, args: list[str], *, env: dict | None = None, log: Path) -> tuple[int, str]:
    """Start ``world_size`` processes of ``script`` as ranks of one gloo job (as torchrun would)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    with open(log, "w") as f:
        for r in range(world_size):
            e = dict(os.environ)
            e.update({"RANK": str(r), "WORLD_SIZE": str(world_size), "LOCAL_RANK": str(r),
                      "LOCAL_WORLD_SIZE": str(world_size), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                      "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore::FutureWarning"})
            e.update(env or {})
            procs.append(subprocess.Popen([sys.executable, str(script), *args], cwd=ROOT, env=e, stdout=f,
                                          stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
        codes = [p.wait(timeout=SAFETY_WAIT_S) for p in procs]
    return max(codes, key=abs), log.read_text(errors="replace")
