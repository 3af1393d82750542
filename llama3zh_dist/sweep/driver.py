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

import os
import signal
import sys
import time
from pathlib import Path

from omegaconf import DictConfig

from ..config import load_config
from ..errors import UserError, exits_cleanly_on_user_error
from ..eval.sweep_metric import eval_metric_problems, is_eval_metric
from .best_experiment import RUN_KEYS
from .scheduling import _ray_init, _resources, _scheduler, _search_alg
from .space import (_data_keys, _flat_points, data_combinations, flatten_space, param_overrides, prepared_dir,
                    representative, tune_domain)
from .summary import TUNE_DIR, summarize
from .trial import TrialRun, _trial_dirname


def _strip_sweep_args(argv: list[str]) -> list[str]:
    """The command line a trial inherits: everything the user typed but the run folder keys."""
    keep = []
    for a in argv:
        key = a.lstrip("+~").split("=", 1)[0]
        if key in RUN_KEYS:
            continue
        keep.append(a)
    return keep


def _check_trial_config(cfg: DictConfig, *, remote: bool) -> None:
    from ..preflight import problems as preflight_problems

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


def _sweep_settings(argv: list[str]) -> tuple[DictConfig, dict[str, dict], list[dict]]:
    """The composed config, its flat search space and its starting points, checked."""
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
    return cfg, space, points


def _prepare_all_data(run_dir: Path, trial_argv: list[str], space: dict[str, dict], points: list[dict],
                      rep: dict) -> None:
    """Every dataset the trials use, prepared once, before Ray starts."""
    from ..data.prep import prepare_dataset

    for combo in data_combinations(space, points):
        out = prepared_dir(run_dir, combo)
        dcfg = load_config([*trial_argv, *param_overrides({**rep, **combo}), f"data.out_dir={out}"])
        print(f"sweep: preparing data {combo or ''} -> {out}", flush=True)
        prepare_dataset(dcfg)


def _tuner(sw: DictConfig, run_dir: Path, trainable, space: dict[str, dict], points: list[dict],
           max_steps: int, resuming: bool):
    """A new Tuner, or the interrupted one restored from ``run.dir/tune``."""
    from ray import tune

    experiment_path = run_dir / TUNE_DIR
    if resuming:
        print(f"sweep: resuming the sweep in {experiment_path} (finished and failed trials are kept)", flush=True)
        return tune.Tuner.restore(str(experiment_path), trainable=trainable, resume_unfinished=True,
                                  resume_errored=False, restart_errored=False)
    asha_state = run_dir / "scheduler_state.pkl"
    if asha_state.exists():
        asha_state.unlink()
    if str(sw.search_alg) == "grid":  # a grid search runs every value of every entry
        space = {k: ({**v, "type": "grid"} if v["type"] == "choice" else v) for k, v in space.items()}
    return tune.Tuner(
        trainable,
        param_space={k: tune_domain(k, s) for k, s in space.items()},
        tune_config=tune.TuneConfig(
            metric=str(sw.metric), mode=str(sw.mode), search_alg=_search_alg(sw, space, points),
            scheduler=_scheduler(sw, max_steps, asha_state),
            num_samples=int(sw.num_samples), max_concurrent_trials=int(sw.max_concurrent or 0) or None,
            trial_dirname_creator=_trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=TUNE_DIR, storage_path=str(run_dir), verbose=int(sw.verbose),
            failure_config=tune.FailureConfig(max_failures=int(sw.max_failures)),
            checkpoint_config=tune.CheckpointConfig(checkpoint_frequency=0, checkpoint_at_end=False),
        ),
    )


def _report(summary: dict, sw: DictConfig, run_dir: Path) -> int:
    print(f"sweep: {summary['counts']} in {summary['seconds']:.0f} s; summary: {run_dir / 'sweep_summary.json'}", flush=True)
    if not summary["complete"]:
        print("sweep: interrupted; rerun the same command to resume it", flush=True)
        return 130
    if summary["best"] is None:
        print(f"sweep: no trial reported {sw.metric}", file=sys.stderr, flush=True)
        return 1
    b = summary["best"]
    print(f"sweep: best trial {b['trial']}: {sw.metric}={b['best_' + str(sw.metric)]:.4f} at step {b['step']} "
          f"with {b['params']}\nsweep: run it with: {b['command']}  ({b['experiment_file']})", flush=True)
    return 0


def run_sweep(argv: list[str]) -> int:
    t0 = time.time()
    cfg, space, points = _sweep_settings(argv)
    sw = cfg.sweep
    run_dir = Path(cfg.run.dir).absolute()
    trial_argv = _strip_sweep_args(argv)

    # Check what every trial shares before anything starts (one representative trial config).
    rep = {k: representative(s) for k, s in space.items()}
    rep_cfg = load_config([*trial_argv, *param_overrides(rep), *list(sw.trial_overrides or [])])
    _check_trial_config(rep_cfg, remote=bool(sw.ray.address or os.environ.get("RAY_ADDRESS")))
    need = _resources(sw, rep_cfg)
    max_steps = max([int(rep_cfg.trainer.max_steps)]
                    + [int(v) for v in (space.get("trainer.max_steps", {}).get("values") or [])])
    from ray import tune

    resuming = tune.Tuner.can_restore(str(run_dir / TUNE_DIR))
    if resuming and not sw.resume:
        raise UserError(f"{run_dir} already holds a sweep and sweep.resume=false: choose another run.dir")
    run_dir.mkdir(parents=True, exist_ok=True)
    _prepare_all_data(run_dir, trial_argv, space, points, rep)

    spec = {
        "argv": trial_argv, "trial_overrides": list(sw.trial_overrides or []), "name": str(sw.name),
        "group": str(sw.wandb_group), "run_dir": str(run_dir), "trials_dir": str(run_dir / "trials"),
        "data_keys": _data_keys(space), "cwd": os.getcwd(), "poll_s": float(sw.poll_s),
        "max_steps": int(rep_cfg.trainer.max_steps), "heartbeat_s": float(sw.heartbeat_s),
        "env": {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")},
    }
    # Heartbeat results (see TrialRun.step) carry no val_loss; ASHA ignores them, Tune must not refuse them.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    _ray_init(sw, need)
    # Slurm preemption and `kill` send SIGTERM: treat it as Ctrl-C (Tune saves its state and stops).
    signal.signal(signal.SIGTERM, lambda s, f: os.kill(os.getpid(), signal.SIGINT))
    trainable = tune.with_resources(tune.with_parameters(TrialRun, spec=spec), need)
    _tuner(sw, run_dir, trainable, space, points, max_steps, resuming).fit()
    import ray

    ray.shutdown()
    return _report(summarize(cfg, run_dir, argv, space, time.time() - t0), sw, run_dir)


@exits_cleanly_on_user_error
def main(argv: list[str] | None = None) -> int:
    return run_sweep(sys.argv[1:] if argv is None else list(argv))
