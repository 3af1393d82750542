"""Hyperparameter sweeps on Ray Tune: each trial a normal run of the same code.

- ``space``: ``sweep.space`` as Tune domains and Hydra overrides; the data each trial needs
- ``trial``: one trial, a ``python -m llama3zh_dist`` run watched by a Tune trainable
- ``scheduling``: search algorithm, restart-proof ASHA, resources, Ray
- ``summary`` / ``best_experiment``: the end of a sweep
- ``driver``: ``python -m llama3zh_dist.sweep``, the steps in order
"""
from .best_experiment import write_best_experiment
from .driver import main, run_sweep
from .space import data_combinations, flatten_space, hydra_value, param_overrides, prepared_dir, tune_domain
from .summary import format_table, summarize

__all__ = ["data_combinations", "flatten_space", "format_table", "hydra_value", "main", "param_overrides",
           "prepared_dir", "run_sweep", "summarize", "tune_domain", "write_best_experiment"]
