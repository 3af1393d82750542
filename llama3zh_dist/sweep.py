"""``python -m llama3zh_dist.sweep +sweep=<name> [overrides]``: a hyperparameter sweep on Ray Tune.

The sweep is a Hydra config in ``conf/sweep/`` (``# @package _global_``): it includes the experiment
the trials train, the settings every trial shares (validation split, evaluation interval, steps)
and a ``sweep:`` block with the search space, the search algorithm, the ASHA scheduler, trial
resources and the Ray address. Everything is overridable like any other key::

    python -m llama3zh_dist.sweep +sweep=quickstart sweep.num_samples=8 \
        sweep.space.trainer.lr.upper=3e-2 run.dir=runs/my_sweep

What happens:

1. The driver composes the config, checks it (preflight) and prepares every dataset the trials
   need once, before any trial starts (one prepared folder per distinct ``data.*`` setting of the
   search space, under ``run.dir/prepared/``).
2. Ray Tune runs the trials. A trial is exactly a normal run: the trainable starts
   ``python -m llama3zh_dist <the sweep's overrides> <the trial's values> run.dir=run.dir/trials/<id>``,
   which launches ``cluster.nproc_per_node`` ZeRO-3 ranks itself, writes its own run folder and its
   own W&B run (``logger.group`` = the sweep). The trainable holds the trial's Ray resources for
   the ranks, tails the run's ``metrics.jsonl`` and reports every evaluation (``val_loss`` at
   ``step``) to Tune, so ASHA can stop the trial early; a stopped trial's processes are killed at
   once so its resources are free for the next one. A run that exits non-zero is a failed trial;
   the sweep goes on.
3. Rerunning the same command resumes the sweep (``Tuner.restore``): finished, stopped and failed
   trials are kept as they are, interrupted trials continue from their latest checkpoint
   (``checkpoint.every_steps``), and the trials not started yet are run.
4. At the end: a table on the console, ``run.dir/sweep_summary.json`` and ``.csv`` (trial, its
   values, best validation loss, steps run, status) and the best trial's config as a ready-to-run
   experiment, ``conf/experiment/<sweep.best_experiment>.yaml``::

       python -m llama3zh_dist +experiment=quickstart_best
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict
from ray.tune import Trainable
from ray.tune.schedulers import ASHAScheduler

from .config import CONF_DIR, load_config
from .errors import UserError, exits_cleanly_on_user_error
from .eval.sweep_metric import eval_metric_problems, is_eval_metric, is_evaluation_record

# Keys a trial gets from the sweep itself; they never reach the best-config experiment file.
RUN_KEYS = ("run.dir", "run.name", "logger.group", "data.out_dir")
SPACE_TYPES = ("loguniform", "uniform", "quniform", "randint", "lograndint", "choice", "grid")
TUNE_DIR = "tune"  # run.dir/tune: Ray Tune's experiment state (what a rerun restores)
STATUS_FINISHED, STATUS_STOPPED, STATUS_FAILED = "finished", "stopped early", "failed"


# ------------------------------------------------------------------------------------------------
# The search space: Hydra leaves -> Tune domains
def flatten_space(space: Any, prefix: str = "") -> dict[str, dict]:
    """``{trainer: {lr: {type: loguniform, ...}}}`` -> ``{"trainer.lr": {type: loguniform, ...}}``."""
    out: dict[str, dict] = {}
    if space is None:
        return out
    if isinstance(space, DictConfig):
        space = OmegaConf.to_container(space, resolve=True)
    if not isinstance(space, dict):
        raise UserError(f"sweep.space.{prefix.rstrip('.')} must be a mapping of config keys to distributions")
    for k, v in space.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and "type" in v:
            if v["type"] not in SPACE_TYPES:
                raise UserError(f"sweep.space.{key}.type={v['type']}: use one of {', '.join(SPACE_TYPES)}")
            out[key] = v
        elif isinstance(v, dict):
            out.update(flatten_space(v, key + "."))
        else:
            raise UserError(
                f"sweep.space.{key}={v!r}: give a distribution, e.g. {{type: choice, values: [...]}} or "
                "{type: loguniform, lower: 1e-6, upper: 1e-4}; fixed settings go outside sweep.space"
            )
    return out


def _need(spec: dict, key: str, name: str):
    if spec.get(key) is None:
        raise UserError(f"sweep.space.{name}: type {spec['type']} needs '{key}'")
    return spec[key]


def tune_domain(name: str, spec: dict):
    from ray import tune

    kind = spec.get("type")
    if kind not in SPACE_TYPES:
        raise UserError(f"sweep.space.{name}.type={kind!r}: use one of {', '.join(SPACE_TYPES)}")
    if kind in ("choice", "grid"):
        values = list(_need(spec, "values", name))
        if not values:
            raise UserError(f"sweep.space.{name}.values is empty")
        return tune.grid_search(values) if kind == "grid" else tune.choice(values)
    lo, hi = float(_need(spec, "lower", name)), float(_need(spec, "upper", name))
    if not lo < hi:
        raise UserError(f"sweep.space.{name}: lower={lo} must be below upper={hi}")
    if kind in ("loguniform", "lograndint") and lo <= 0:
        raise UserError(f"sweep.space.{name}: {kind} needs lower > 0 (got {lo})")
    if kind == "loguniform":
        return tune.loguniform(lo, hi)
    if kind == "uniform":
        return tune.uniform(lo, hi)
    if kind == "quniform":
        return tune.quniform(lo, hi, float(_need(spec, "q", name)))
    if kind == "randint":
        return tune.randint(int(lo), int(hi))
    return tune.lograndint(int(lo), int(hi))


def representative(spec: dict) -> Any:
    """One value of a distribution, to check the config before the sweep starts."""
    if spec["type"] in ("choice", "grid"):
        return list(spec["values"])[0]
    lo, hi = float(spec["lower"]), float(spec["upper"])
    if spec["type"] in ("randint", "lograndint"):
        return int(lo)
    return math.sqrt(lo * hi) if spec["type"] == "loguniform" else (lo + hi) / 2


def hydra_value(v: Any) -> str:
    """A Python value as a Hydra override value."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(hydra_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ",".join(f"{k}:{hydra_value(x)}" for k, x in v.items()) + "}"
    s = str(v)
    if re.fullmatch(r"[A-Za-z_/.\-][\w/.\-]*", s) and s not in ("null", "true", "false"):
        return s
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"


def param_overrides(params: dict[str, Any]) -> list[str]:
    return [f"{k}={hydra_value(v)}" for k, v in params.items()]


def _flat_points(points: Any) -> list[dict[str, Any]]:
    """``sweep.points_to_evaluate`` entries (nested or dotted keys) as flat dotted dicts."""
    if isinstance(points, (DictConfig, ListConfig)):
        points = OmegaConf.to_container(points, resolve=True)
    out = []
    for p in points or []:
        flat: dict[str, Any] = {}

        def walk(d: dict, prefix: str = "") -> None:
            for k, v in d.items():
                if isinstance(v, dict):
                    walk(v, f"{prefix}{k}.")
                else:
                    flat[f"{prefix}{k}"] = v

        if not isinstance(p, dict):
            raise UserError(f"sweep.points_to_evaluate: each entry is a mapping of settings, got {p!r}")
        walk(p)
        out.append(flat)
    return out


# ------------------------------------------------------------------------------------------------
# Data: prepared once per distinct data setting, before any trial
def _data_keys(space: dict[str, dict]) -> list[str]:
    return [k for k in space if k.startswith("data.") or k in ("trainer.seed", "model.path")]


def prepared_dir(run_dir: Path, data_params: dict[str, Any]) -> Path:
    if not data_params:
        return run_dir / "prepared" / "data"
    tag = hashlib.sha256(json.dumps(data_params, sort_keys=True).encode()).hexdigest()[:10]
    return run_dir / "prepared" / f"data-{tag}"


def data_combinations(space: dict[str, dict], points: list[dict]) -> list[dict[str, Any]]:
    """Every distinct value set of the data-shaping parameters the sweep can produce."""
    keys = _data_keys(space)
    for k in keys:
        if space[k]["type"] not in ("choice", "grid"):
            raise UserError(
                f"sweep.space.{k} is type {space[k]['type']}: settings that change the prepared data "
                "(data.*, trainer.seed, model.path) must be type choice or grid, so that the data is "
                "prepared once per value before the trials start"
            )
    combos = [dict(zip(keys, vals)) for vals in itertools.product(*(list(space[k]["values"]) for k in keys))]
    for p in points:
        combo = {k: p[k] for k in keys if k in p}
        if len(combo) == len(keys) and combo not in combos:
            combos.append(combo)
    return combos


# ------------------------------------------------------------------------------------------------
# One trial: a normal run in its own folder, watched from a Ray Tune function trainable
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


# ------------------------------------------------------------------------------------------------
# The driver
def _search_alg(sw: DictConfig, space: dict[str, dict], points: list[dict]):
    from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter

    kind = str(sw.search_alg)
    if kind in ("random", "grid"):
        if kind == "grid":
            bad = [k for k, s in space.items() if s["type"] not in ("grid", "choice")]
            if bad:
                raise UserError(f"sweep.search_alg=grid needs every sweep.space entry to be choice or grid; "
                                f"not: {', '.join(bad)} (or use sweep.search_alg=random)")
        return BasicVariantGenerator(points_to_evaluate=points or None, random_state=sw.seed,
                                     max_concurrent=int(sw.max_concurrent or 0))
    if kind == "optuna":
        try:
            from ray.tune.search.optuna import OptunaSearch
        except ImportError:
            raise UserError("sweep.search_alg=optuna needs the optuna package: pip install optuna "
                            "(or use sweep.search_alg=random)") from None
        if any(s["type"] == "grid" for s in space.values()):
            raise UserError("sweep.search_alg=optuna cannot sample type grid; use type choice")
        alg = OptunaSearch(points_to_evaluate=points or None, seed=sw.seed)
        return ConcurrencyLimiter(alg, max_concurrent=int(sw.max_concurrent)) if sw.max_concurrent else alg
    raise UserError(f"sweep.search_alg={kind}: use random, grid or optuna")


class PersistentASHA(ASHAScheduler):
    """An ``ASHAScheduler`` whose rungs survive a restart of the sweep.

    ``Tuner.restore`` brings back the trials and the search algorithm, but the scheduler it restores
    is the one pickled when the sweep started: its rungs would be empty, and after an interruption
    ASHA would compare the remaining trials with nothing and stop none. This one saves its state
    (ASHA's own ``save``) after every decision and loads it (``restore``) before the first decision
    after a restart.
    """

    def __init__(self, state_file: str, **kwargs):
        super().__init__(**kwargs)
        self._state_file = state_file
        self._loaded = False

    def _load(self) -> None:
        if not self._loaded:
            path = self._state_file
            if os.path.exists(path):
                self.restore(path)
            self._state_file, self._loaded = path, True

    def _save(self) -> None:
        tmp = f"{self._state_file}.tmp"
        self.save(tmp)
        os.replace(tmp, self._state_file)

    def on_trial_add(self, tune_controller, trial):
        self._load()
        super().on_trial_add(tune_controller, trial)
        self._save()

    def on_trial_result(self, tune_controller, trial, result):
        self._load()
        if trial.trial_id not in self._trial_info:
            super().on_trial_add(tune_controller, trial)
        action = super().on_trial_result(tune_controller, trial, result)
        self._save()
        return action

    def on_trial_complete(self, tune_controller, trial, result):
        self._load()
        if trial.trial_id in self._trial_info:
            super().on_trial_complete(tune_controller, trial, result)
        self._save()

    def on_trial_remove(self, tune_controller, trial):
        self._load()
        self._trial_info.pop(trial.trial_id, None)
        self._save()


def _scheduler(sw: DictConfig, max_steps: int, state_file: Path):
    from ray.tune.schedulers import FIFOScheduler

    s = sw.scheduler
    if s is None or s.type in (None, "none", "fifo"):
        return FIFOScheduler()
    if s.type != "asha":
        raise UserError(f"sweep.scheduler.type={s.type}: use asha or none")
    max_t = int(s.max_t or max_steps)
    grace = int(s.grace_period)
    if not 1 <= grace <= max_t:
        raise UserError(f"sweep.scheduler.grace_period={grace} must be between 1 and max_t={max_t} (steps)")
    return PersistentASHA(str(state_file), time_attr="step", max_t=max_t, grace_period=grace,
                          reduction_factor=float(s.reduction_factor), brackets=int(s.brackets or 1))


def _strip_sweep_args(argv: list[str]) -> list[str]:
    """The command line a trial inherits: everything the user typed but the run folder keys."""
    keep = []
    for a in argv:
        key = a.lstrip("+~").split("=", 1)[0]
        if key in RUN_KEYS:
            continue
        keep.append(a)
    return keep


def _resources(sw: DictConfig, cfg: DictConfig) -> dict[str, float]:
    nproc = int(cfg.cluster.nproc_per_node)
    if int(cfg.cluster.nodes) != 1:
        raise UserError(f"cluster.nodes={cfg.cluster.nodes}: a sweep trial runs on one node (cluster.nodes=1); "
                        "run more trials at once on a Ray cluster instead (sweep.max_concurrent)")
    cpu = sw.resources.cpu if sw.resources.cpu is not None else nproc
    gpu = sw.resources.gpu if sw.resources.gpu is not None else (nproc if cfg.cluster.device == "cuda" else 0)
    return {"cpu": float(cpu), "gpu": float(gpu)}


def _check_trial_config(cfg: DictConfig, *, remote: bool) -> None:
    from .preflight import problems as preflight_problems

    problems = preflight_problems(cfg)
    if remote:  # the trials run on the cluster's GPU nodes, not on this (driver) machine
        problems = [p for p in problems if not p.startswith("cluster.device=cuda but this machine has no CUDA GPU")]
    if is_eval_metric(cfg.sweep.metric):  # benchmark figures: eval.every_steps matters, not the val split
        problems += eval_metric_problems(cfg)
    elif not int(cfg.trainer.eval_every) > 0:
        problems.append("trainer.eval_every must be > 0: trials report their validation loss at each evaluation")
    elif int(cfg.trainer.eval_every) > int(cfg.trainer.max_steps):
        problems.append(f"trainer.eval_every={cfg.trainer.eval_every} is above trainer.max_steps={cfg.trainer.max_steps}: "
                        "no trial would ever report a validation loss")
    if not is_eval_metric(cfg.sweep.metric) and not float(cfg.data.val_fraction) > 0:
        problems.append("data.val_fraction must be > 0: the sweep compares trials on the held-out validation split")
    if problems:
        raise UserError("this sweep cannot run:\n  - " + "\n  - ".join(problems))


def _ray_init(sw: DictConfig, need: dict[str, float]) -> None:
    import ray

    addr = sw.ray.address or os.environ.get("RAY_ADDRESS")
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": bool(sw.ray.log_to_driver),
                              "logging_level": "warning"}
    if addr:
        ray.init(address=str(addr), **kwargs)
        return
    cpus = int(sw.ray.num_cpus or os.cpu_count() or 1)
    gpus = sw.ray.num_gpus
    if need["cpu"] > cpus:
        raise UserError(f"a trial needs {need['cpu']:g} CPUs (sweep.resources.cpu) but this machine has {cpus} "
                        "(sweep.ray.num_cpus); lower sweep.resources.cpu or give sweep.ray.address of a Ray cluster")
    ray.init(address="local", num_cpus=cpus, num_gpus=gpus,
             object_store_memory=int(sw.ray.object_store_mb) * 1024**2, **kwargs)
    if need["gpu"] > float(ray.cluster_resources().get("GPU", 0)):
        raise UserError(f"a trial needs {need['gpu']:g} GPUs (sweep.resources.gpu) but this machine has "
                        f"{ray.cluster_resources().get('GPU', 0):g}")


def _status(trial, run_dir: Path) -> str:
    s = trial.status
    if s == "ERROR":
        return STATUS_FAILED
    if s == "TERMINATED":
        return STATUS_FINISHED if (run_dir / "FINISHED").exists() else STATUS_STOPPED
    started = (run_dir / "launches.log").exists()
    return "interrupted" if s in ("RUNNING", "PAUSED") or started else s.lower()


def _steps_run(run_dir: Path) -> int:
    p = run_dir / "metrics.jsonl"
    steps = [r.get("step", 0) for r in _Tail(p).records()] if p.exists() else []
    return int(max(steps, default=0))


def _collect(experiment_path: Path, trials_dir: Path, sw: DictConfig, params: list[str]) -> list[dict]:
    from ray.tune import ExperimentAnalysis

    analysis = ExperimentAnalysis(str(experiment_path), default_metric=str(sw.metric), default_mode=str(sw.mode))
    dfs = analysis.trial_dataframes
    rows = []
    for t in sorted(analysis.trials, key=lambda t: t.trial_id):
        run_dir = trials_dir / t.trial_id
        df = dfs.get(t.trial_id)
        vals: list[tuple[float, int]] = []
        if df is not None and str(sw.metric) in df:
            for v, step in zip(df[str(sw.metric)], df["step"] if "step" in df else itertools.repeat(None)):
                if v is not None and not (isinstance(v, float) and math.isnan(v)):
                    vals.append((float(v), int(step) if step is not None and step == step else -1))
        pick = (min if sw.mode == "min" else max)(vals, default=None, key=lambda x: x[0])
        error = None
        if t.status == "ERROR":
            error = _trial_error(t)
        rows.append({
            "trial": t.trial_id,
            "status": _status(t, run_dir),
            **{k: t.config.get(k) for k in params},
            f"best_{sw.metric}": pick[0] if pick else None,
            "best_step": pick[1] if pick else None,
            "steps_run": _steps_run(run_dir),
            "run_dir": str(run_dir),
            "error": error,
        })
    return rows


def _trial_error(trial) -> str:
    """The first line of a failed trial's error (the rank's exception, from ``TrialRun``)."""
    try:
        text = trial.get_error()
    except Exception:
        text = None
    if not text:
        return "failed (see the trial's train.log)"
    m = re.search(r"training exited with code .*", text)
    return m.group(0).strip() if m else text.strip().splitlines()[-1][:300]


def format_table(rows: list[dict], columns: list[str]) -> str:
    def cell(v):
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.5g}"
        return str(v)

    cells = [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(x[i]) for x in cells)) if cells else len(c) for i, c in enumerate(columns)]
    line = "  ".join(c.ljust(w) for c, w in zip(columns, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(x.ljust(w) for x, w in zip(row, widths)) for row in cells]
    return "\n".join(out)


# ------------------------------------------------------------------------------------------------
# The best trial as an experiment file
def _compose_choices(overrides: list[str]) -> tuple[DictConfig, dict[str, str]]:
    """The composed config and the chosen option of every config group."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()
    choices = {k: v for k, v in OmegaConf.to_container(cfg.hydra.runtime.choices).items()
               if not k.startswith("hydra/") and v is not None}
    with open_dict(cfg):
        del cfg["hydra"]
    OmegaConf.resolve(cfg)
    return cfg, choices


def _diff(new: Any, base: Any, prefix: str = "") -> dict:
    out: dict = {}
    for k, v in new.items():
        key = f"{prefix}{k}"
        if key in RUN_KEYS or key == "sweep":
            continue
        b = base.get(k) if isinstance(base, dict) else None
        if isinstance(v, dict) and isinstance(b, dict):
            sub = _diff(v, b, key + ".")
            if sub:
                out[k] = sub
        elif not isinstance(base, dict) or k not in base or v != b:
            out[k] = v
    return out


def write_best_experiment(name: str, argv: list[str], params: dict[str, Any], header: list[str]) -> Path:
    """``conf/experiment/<name>.yaml``: the best trial's settings on top of the experiment it swept."""
    trial_cfg, choices = _compose_choices([*argv, *param_overrides(params)])
    base_exp = choices.get("experiment")
    groups = {g: c for g, c in choices.items() if g not in ("experiment", "sweep") and "/" not in g}
    if base_exp:
        _, base_choices = _compose_choices([f"+experiment={base_exp}"])
    else:
        base_choices = {}
    group_overrides = {g: c for g, c in groups.items() if base_choices.get(g) != c}
    base_cfg, _ = _compose_choices(([f"+experiment={base_exp}"] if base_exp else [])
                                   + [f"{g}={c}" for g, c in group_overrides.items()])
    values = _diff(OmegaConf.to_container(trial_cfg), OmegaConf.to_container(base_cfg))
    for key, v in params.items():  # the swept values, always spelled out (even where equal to the base)
        *parents, leaf = key.split(".")
        node = values
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = v
    values.setdefault("run", {})["name"] = name
    defaults: list[Any] = ([base_exp] if base_exp else []) + [{f"override /{g}": c} for g, c in group_overrides.items()] + ["_self_"]
    body = OmegaConf.to_yaml(OmegaConf.create({"defaults": defaults, **values}))
    path = CONF_DIR / "experiment" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".yaml.tmp")
    tmp.write_text("# @package _global_\n" + "".join(f"# {h}\n" if h else "#\n" for h in header) + body)
    os.replace(tmp, path)
    # It must compose to the best trial's settings, or it is no use.
    check = load_config([f"+experiment={name}"])
    for k, v in params.items():
        got = OmegaConf.select(check, k)
        if got != v and not (isinstance(v, float) and isinstance(got, float) and math.isclose(got, v)):
            raise RuntimeError(f"{path}: {k} composes to {got!r}, expected {v!r}")
    return path


def _metric_ok(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def summarize(cfg: DictConfig, run_dir: Path, argv: list[str], space: dict[str, dict], wall_s: float) -> dict:
    sw = cfg.sweep
    params = list(space)
    rows = _collect(run_dir / TUNE_DIR, run_dir / "trials", sw, params)
    metric = f"best_{sw.metric}"
    scored = [r for r in rows if _metric_ok(r[metric])]
    best = (min if sw.mode == "min" else max)(scored, key=lambda r: r[metric], default=None)
    complete = all(r["status"] in (STATUS_FINISHED, STATUS_STOPPED, STATUS_FAILED) for r in rows)
    summary: dict[str, Any] = {
        "sweep": str(sw.name), "run_dir": str(run_dir), "metric": str(sw.metric), "mode": str(sw.mode),
        "complete": complete, "seconds": round(wall_s, 1), "params": params,
        "counts": {s: sum(r["status"] == s for r in rows) for s in sorted({r["status"] for r in rows})},
        "best": None, "trials": rows,
    }
    if best is not None and complete:
        best_params = {k: best[k] for k in params}
        name = str(sw.best_experiment)
        command = f"python -m llama3zh_dist +experiment={name}"
        header = [
            command,
            "",
            f"Written by `python -m llama3zh_dist.sweep {' '.join(argv)}`: the best trial",
            f"({best['trial']}, {sw.metric}={best[metric]:.4f} at step {best['best_step']}) of the sweep in {run_dir}.",
            "The trial's settings on top of the experiment the sweep ran; rewritten by every sweep of that name.",
        ]
        path = write_best_experiment(name, [a for a in argv], best_params, header)
        summary["best"] = {"trial": best["trial"], metric: best[metric], "step": best["best_step"],
                           "params": best_params, "experiment": name, "experiment_file": str(path),
                           "command": command}
    (run_dir / "sweep_summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    columns = ["trial", "status", *params, metric, "best_step", "steps_run", "error"]
    with open(run_dir / "sweep_summary.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({c: ("" if r.get(c) is None else r.get(c)) for c in columns})
    print("\n" + format_table(rows, columns), flush=True)
    return summary


def run_sweep(argv: list[str]) -> int:
    t0 = time.time()
    cfg = load_config(argv)
    if "sweep" not in cfg or not isinstance(cfg.sweep, DictConfig):
        raise UserError("no sweep config: name one with +sweep=<name> (conf/sweep/), e.g. +sweep=quickstart")
    sw = cfg.sweep
    if sw.mode not in ("min", "max"):
        raise UserError(f"sweep.mode={sw.mode}: use min or max")
    space = flatten_space(sw.space)
    if not space:
        raise UserError("sweep.space is empty: give at least one setting to search")
    points = _flat_points(sw.points_to_evaluate)
    for p in points:
        unknown = [k for k in p if k not in space]
        if unknown:
            raise UserError(f"sweep.points_to_evaluate: {', '.join(unknown)} not in sweep.space")
    run_dir = Path(cfg.run.dir).absolute()
    trial_argv = _strip_sweep_args(argv)

    # Check what every trial shares before anything starts (one representative trial config).
    rep = {k: representative(s) for k, s in space.items()}
    rep_cfg = load_config([*trial_argv, *param_overrides(rep), *list(sw.trial_overrides or [])])
    _check_trial_config(rep_cfg, remote=bool(sw.ray.address or os.environ.get("RAY_ADDRESS")))
    need = _resources(sw, rep_cfg)
    max_steps = max([int(rep_cfg.trainer.max_steps)]
                    + [int(v) for v in (space.get("trainer.max_steps", {}).get("values") or [])])
    experiment_path = run_dir / TUNE_DIR
    from ray import tune

    resuming = tune.Tuner.can_restore(str(experiment_path))
    if resuming and not sw.resume:
        raise UserError(f"{run_dir} already holds a sweep and sweep.resume=false: choose another run.dir")
    asha_state = run_dir / "scheduler_state.pkl"
    if not resuming and asha_state.exists():
        asha_state.unlink()
    run_dir.mkdir(parents=True, exist_ok=True)
    if str(sw.search_alg) == "grid":  # a grid search runs every value of every entry
        space = {k: ({**v, "type": "grid"} if v["type"] == "choice" else v) for k, v in space.items()}
    search_alg = _search_alg(sw, space, points)
    scheduler = _scheduler(sw, max_steps, asha_state)
    domains = {k: tune_domain(k, s) for k, s in space.items()}

    # Prepare every dataset the trials use, once, before Ray starts.
    data_keys = _data_keys(space)
    for combo in data_combinations(space, points):
        out = prepared_dir(run_dir, combo)
        dcfg = load_config([*trial_argv, *param_overrides({**rep, **combo}), f"data.out_dir={out}"])
        from .data.prep import prepare_dataset

        print(f"sweep: preparing data {combo or ''} -> {out}", flush=True)
        prepare_dataset(dcfg)

    spec = {
        "argv": trial_argv, "trial_overrides": list(sw.trial_overrides or []), "name": str(sw.name),
        "group": str(sw.wandb_group), "run_dir": str(run_dir), "trials_dir": str(run_dir / "trials"),
        "data_keys": data_keys, "cwd": os.getcwd(), "poll_s": float(sw.poll_s),
        "max_steps": int(rep_cfg.trainer.max_steps), "heartbeat_s": float(sw.heartbeat_s),
        "env": {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")},
    }
    # Heartbeat results (see TrialRun.step) carry no val_loss; ASHA ignores them, Tune must not refuse them.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    _ray_init(sw, need)
    # Slurm preemption and `kill` send SIGTERM: treat it as Ctrl-C (Tune saves its state and stops).
    signal.signal(signal.SIGTERM, lambda s, f: os.kill(os.getpid(), signal.SIGINT))
    trainable = tune.with_resources(tune.with_parameters(TrialRun, spec=spec), need)
    if resuming:
        print(f"sweep: resuming the sweep in {experiment_path} (finished and failed trials are kept)", flush=True)
        tuner = tune.Tuner.restore(str(experiment_path), trainable=trainable, resume_unfinished=True,
                                   resume_errored=False, restart_errored=False)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=domains,
            tune_config=tune.TuneConfig(
                metric=str(sw.metric), mode=str(sw.mode), search_alg=search_alg, scheduler=scheduler,
                num_samples=int(sw.num_samples), max_concurrent_trials=int(sw.max_concurrent or 0) or None,
                trial_dirname_creator=_trial_dirname,
            ),
            run_config=tune.RunConfig(
                name=TUNE_DIR, storage_path=str(run_dir), verbose=int(sw.verbose),
                failure_config=tune.FailureConfig(max_failures=int(sw.max_failures)),
                checkpoint_config=tune.CheckpointConfig(checkpoint_frequency=0, checkpoint_at_end=False),
            ),
        )
    tuner.fit()
    import ray

    ray.shutdown()
    summary = summarize(cfg, run_dir, argv, space, time.time() - t0)
    print(f"sweep: {summary['counts']} in {summary['seconds']:.0f} s; summary: {run_dir / 'sweep_summary.json'}", flush=True)
    if not summary["complete"]:
        print(f"sweep: interrupted; rerun the same command to resume it", flush=True)
        return 130
    if summary["best"] is None:
        print(f"sweep: no trial reported {sw.metric}", file=sys.stderr, flush=True)
        return 1
    b = summary["best"]
    print(f"sweep: best trial {b['trial']}: {sw.metric}={b['best_' + str(sw.metric)]:.4f} at step {b['step']} "
          f"with {b['params']}\nsweep: run it with: {b['command']}  ({b['experiment_file']})", flush=True)
    return 0


@exits_cleanly_on_user_error
def main(argv: list[str] | None = None) -> int:
    return run_sweep(sys.argv[1:] if argv is None else list(argv))


if __name__ == "__main__":
    sys.exit(main())
