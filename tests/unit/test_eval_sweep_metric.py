"""A sweep can optimise a benchmark figure: sweep.metric=eval/<benchmark>[/<category>]."""

from __future__ import annotations

import pytest

from llama3zh_dist.eval.sweep_metric import is_evaluation_record
from llama3zh_dist.sweep.driver import _check_trial_config
from llama3zh_dist.sweep.trial import _result
from llama3zh_dist.config import load_config
from llama3zh_dist.errors import UserError

EVAL = ["eval.benchmarks=[cmmlu]", "eval.cmmlu.path=data/eval/mc_zh"]


def test_eval_metric_needs_periodic_evaluation_the_benchmark_and_mode_max():
    cfg = load_config(["+sweep=quickstart", "sweep.metric=eval/ceval", *EVAL])
    with pytest.raises(UserError) as e:
        _check_trial_config(cfg, remote=False)
    msg = str(e.value)
    assert "ceval is not in eval.benchmarks" in msg and "eval.every_steps > 0" in msg and "sweep.mode=max" in msg


def test_eval_metric_sweep_does_not_need_a_validation_split():
    cfg = load_config(["+sweep=quickstart", "sweep.metric=eval/cmmlu", "sweep.mode=max", "eval.every_steps=4",
                       "data.val_fraction=0", "trainer.eval_every=0", *EVAL])
    _check_trial_config(cfg, remote=False)


def test_trials_report_benchmark_figures_from_metrics_jsonl():
    rec = {"step": 8, "loss": 1.0, "lr": 1e-3, "eval/cmmlu": 0.5, "eval/cmmlu/STEM": 0.25, "tokens": 10}
    assert is_evaluation_record(rec) and not is_evaluation_record({"step": 7, "loss": 1.0})
    assert _result(rec) == {"step": 8, "loss": 1.0, "eval/cmmlu": 0.5, "eval/cmmlu/STEM": 0.25}
