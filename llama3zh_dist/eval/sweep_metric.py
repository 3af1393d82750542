"""What a sweep needs when it optimises an evaluation figure (``sweep.metric=eval/<benchmark>[/<category>]``)."""

from __future__ import annotations

from omegaconf import DictConfig

from .benchmarks import BENCHMARKS


def is_eval_metric(metric: str) -> bool:
    return str(metric).startswith("eval/")


def is_evaluation_record(rec: dict) -> bool:
    """A metrics.jsonl line that carries a validation loss or benchmark figures."""
    return "val_loss" in rec or any(k.startswith("eval/") for k in rec)


def eval_metric_problems(cfg: DictConfig) -> list[str]:
    """Why trials could not report ``sweep.metric`` when it is an ``eval/...`` figure."""
    metric = str(cfg.sweep.metric)
    parts = metric.split("/")
    problems = []
    benchmarks = list(cfg.eval.benchmarks or [])
    if len(parts) < 2 or parts[1] not in (*BENCHMARKS, "chat"):
        problems.append(f"sweep.metric={metric}: expected eval/cmmlu, eval/ceval, eval/<benchmark>/<category> "
                        "or eval/chat/<check>")
    elif parts[1] not in benchmarks:
        problems.append(f"sweep.metric={metric}: {parts[1]} is not in eval.benchmarks={benchmarks}; add it")
    every = int(cfg.eval.every_steps or 0)
    if every <= 0:
        problems.append(f"sweep.metric={metric} needs eval.every_steps > 0: trials report it at each evaluation")
    elif every > int(cfg.trainer.max_steps):
        problems.append(f"eval.every_steps={every} is above trainer.max_steps={cfg.trainer.max_steps}: "
                        f"no trial would ever report {metric}")
    if parts[1:2] != ["chat"] and str(cfg.sweep.mode) != "max":
        problems.append(f"sweep.metric={metric} is an accuracy: set sweep.mode=max")
    return problems
