"""One trial: a normal ``python -m llama3zh_dist`` run in its own folder, watched from a Ray Tune
trainable that reports each evaluation of the run's ``metrics.jsonl``."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from ray.tune import Trainable

from ..eval.sweep_metric import is_evaluation_record
from .space import hydra_value, param_overrides, prepared_dir


class _Tail:
    """New complete lines of a growing JSONL file (restarts when the file is rewritten shorter)."""

    def __init__(self, path: Path):
        self.path, self.pos, self.buf = path, 0, b""

    def records(self) -> list[dict]:
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return []
        if size < self.pos:  # truncated (a resumed run drops the steps after its checkpoint)
            self.pos, self.buf = 0, b""
        with open(self.path, "rb") as f:
            f.seek(self.pos)
            data = f.read()
        self.pos += len(data)
        *lines, self.buf = (self.buf + data).split(b"\n")
        out = []
        for line in lines:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out


def _die_with_parent() -> None:
    """In the trial's launcher: SIGTERM (= save and exit) if the trial's Ray worker dies."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def _error_summary(log: Path, code: int) -> str:
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        lines = []
    plain = [re.sub(r"^\[rank\d+\]:\s?", "", ln).strip() for ln in lines]
    err = next((ln for ln in reversed(plain) if re.match(r"^(error: |[A-Za-z_.]*(Error|Exception)\b)", ln)), None)
    head = f"training exited with code {code}" + (f": {err}" if err else "")
    tail = "\n".join(lines[-25:])
    return f"{head}\n--- last lines of {log} ---\n{tail}"


def _result(rec: dict) -> dict:
    """What a trial reports to Tune from one evaluation line of ``metrics.jsonl``."""
    return {k: v for k, v in rec.items() if k in ("step", "loss", "epoch") or k.startswith(("val_", "eval/"))}


class TrialRun(Trainable):
    """One trial: a normal ``python -m llama3zh_dist`` run in its own folder, watched by Tune.

    ``setup`` starts the run (its launcher starts the ranks), each ``step`` returns the next
    evaluation from the run's ``metrics.jsonl`` (``val_loss`` at ``step``), and ``cleanup`` -- which
    Tune calls whenever it stops the trial: ASHA, an interrupted sweep, an error -- kills the run's
    whole process group at once, so the trial's CPUs/GPUs are free for the next one.
    """

    def setup(self, config: dict, spec: dict):
        self.spec = spec
        self.proc: subprocess.Popen | None = None
        trial_id = self.trial_id
        self.run_dir = Path(spec["trials_dir"]) / trial_id
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.tail = _Tail(self.run_dir / "metrics.jsonl")
        self.max_steps = int(config.get("trainer.max_steps", spec["max_steps"]))
        self.pending: list[dict] = []  # evaluations read but not yet returned
        self.final: dict | None = None  # the evaluation at max_steps: returned once the run exited
        self.last: dict | None = None
        self.last_step = 0
        if (self.run_dir / "FINISHED").exists():
            # Finished before the sweep was interrupted (Tune had not recorded it): report, don't rerun.
            self.t_launch = 0.0
            return
        data_params = {k: config[k] for k in spec["data_keys"] if k in config}
        overrides = [
            *spec["argv"], *param_overrides(config), *spec["trial_overrides"],
            f"run.dir={self.run_dir}", f"run.name={spec['name']}-{trial_id}",
            f"logger.group={hydra_value(spec['group'])}",
            f"data.out_dir={prepared_dir(Path(spec['run_dir']), data_params)}",
        ]
        env = dict(spec["env"])
        if os.environ.get("CUDA_VISIBLE_DEVICES") is not None:  # the GPUs Ray gave this trial
            env["CUDA_VISIBLE_DEVICES"] = os.environ["CUDA_VISIBLE_DEVICES"]
        (self.run_dir / "command.sh").write_text(
            f"# this trial as a normal run (from {spec['cwd']})\n"
            + " ".join(shlex.quote(a) for a in ["python", "-m", "llama3zh_dist", *overrides]) + "\n"
        )
        self.t_launch = time.time()
        with open(self.run_dir / "launches.log", "a") as f:
            f.write(json.dumps({"time": self.t_launch, "trial": trial_id}) + "\n")
        self.log_path = self.run_dir / "train.log"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "llama3zh_dist", *overrides], cwd=spec["cwd"], env=env,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_die_with_parent,
            )

    def _read(self) -> None:
        for rec in self.tail.records():
            if not is_evaluation_record(rec) or float(rec.get("time", self.t_launch)) < self.t_launch:
                continue  # not an evaluation, or one reported before an interruption
            if int(rec["step"]) <= self.last_step:
                continue
            self.last_step = int(rec["step"])
            if self.last_step >= self.max_steps and self.proc is not None:
                self.final = _result(rec)  # after the run saved and exited: ASHA stops trials at max_t
            else:
                self.pending.append(_result(rec))

    def step(self) -> dict:
        t0 = time.time()
        while True:
            exited = self.proc is None or self.proc.poll() is not None
            self._read()
            if self.pending:
                result = self.pending.pop(0)
                if exited and not self.pending and self.final is None and self.proc is None:
                    result["done"] = True
                self.last = result
                return result
            if not exited:
                if time.time() - t0 >= float(self.spec["heartbeat_s"]):
                    # Return now and then even without a new evaluation, so that a stop request (an
                    # interrupted sweep) reaches ``cleanup`` promptly instead of queueing behind ``step``.
                    return dict(self.last or {"step": 0})
                time.sleep(float(self.spec["poll_s"]))
                continue
            if self.proc is not None and self.proc.returncode != 0:
                raise RuntimeError(_error_summary(self.log_path, self.proc.returncode))
            result = self.final or dict(self.last or {"step": self.last_step})
            self.final = None
            result["done"] = True
            self.last = result
            return result

    # The run resumes from its own checkpoints (run.dir/checkpoints); Tune keeps only a marker.
    def save_checkpoint(self, checkpoint_dir: str) -> dict:
        return {"last_step": self.last_step}

    def load_checkpoint(self, checkpoint) -> None:
        pass

    def cleanup(self):
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()


def _trial_dirname(trial) -> str:
    return trial.trial_id

