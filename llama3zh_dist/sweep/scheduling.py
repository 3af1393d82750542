"""Where and how trials run: the search algorithm, the (restart-proof) ASHA scheduler, trial
resources and the Ray connection."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from ray.tune.schedulers import ASHAScheduler

from ..errors import UserError
from ..quiet import silence_known_noise


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


def _resources(sw: DictConfig, cfg: DictConfig) -> dict[str, float]:
    nproc = int(cfg.cluster.nproc_per_node)
    if int(cfg.cluster.nodes) != 1:
        raise UserError(f"cluster.nodes={cfg.cluster.nodes}: a sweep trial runs on one node (cluster.nodes=1); "
                        "run more trials at once on a Ray cluster instead (sweep.max_concurrent)")
    cpu = sw.resources.cpu if sw.resources.cpu is not None else nproc
    gpu = sw.resources.gpu if sw.resources.gpu is not None else (nproc if cfg.cluster.device == "cuda" else 0)
    return {"cpu": float(cpu), "gpu": float(gpu)}


def _ray_init(sw: DictConfig, need: dict[str, float]) -> None:
    import ray

    silence_known_noise()
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
