"""The sweep's config handling, without running a sweep: composition, search space, bad settings."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from llama3zh_dist import config as config_mod
from llama3zh_dist import sweep as sweep_mod
from llama3zh_dist.sweep import best_experiment as best_experiment_mod
from llama3zh_dist.config import load_config
from llama3zh_dist.errors import UserError

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name,experiment", [("quickstart", "quickstart"), ("lr_wd", "full_sft")])
def test_each_sweep_composes_its_experiment_with_validation_and_a_searchable_space(name, experiment):
    cfg = load_config([f"+sweep={name}"])
    exp = load_config([f"+experiment={experiment}", f"data={cfg.data.name}"])
    assert cfg.model == exp.model and cfg.cluster == exp.cluster
    assert cfg.trainer.eval_every > 0 and cfg.data.val_fraction > 0
    assert cfg.run.dir == f"runs/sweep_{name}" and cfg.sweep.best_experiment == f"{name}_best"
    space = sweep_mod.flatten_space(cfg.sweep.space)
    assert "trainer.lr" in space and space["trainer.lr"]["type"] == "loguniform"
    domains = {k: sweep_mod.tune_domain(k, s) for k, s in space.items()}
    assert set(domains) == set(space)
    sweep_mod.data_combinations(space, [])  # data-shaping keys are all categorical


def test_lr_wd_prepares_one_dataset_per_row_length_and_mixture_value():
    space = sweep_mod.flatten_space(load_config(["+sweep=lr_wd"]).sweep.space)
    combos = sweep_mod.data_combinations(space, [])
    assert len(combos) == 4
    assert {tuple(sorted(c)) for c in combos} == {("data.max_seq_len", "data.sources.zhihu.weight")}
    dirs = {sweep_mod.prepared_dir(Path("/r"), c) for c in combos}
    assert len(dirs) == 4


def test_search_space_is_overridable_from_the_command_line():
    cfg = load_config(["+sweep=quickstart", "sweep.space.trainer.lr.upper=0.05", "sweep.num_samples=9",
                       "sweep.search_alg=grid", "+sweep.space.trainer.max_steps={type:grid,values:[8,16]}"])
    space = sweep_mod.flatten_space(cfg.sweep.space)
    assert space["trainer.lr"]["upper"] == 0.05 and cfg.sweep.num_samples == 9
    assert space["trainer.max_steps"] == {"type": "grid", "values": [8, 16]}


@pytest.mark.parametrize("value", [1e-05, 0.003, 7, True, None, "sdpa", "a b", [0.5, 1.0], "x=y"])
def test_a_sampled_value_round_trips_through_a_hydra_override(value):
    cfg = load_config(["+experiment=quickstart", f"+probe={sweep_mod.hydra_value(value)}"])
    got = cfg.probe
    assert (OmegaConf.to_container(got) if OmegaConf.is_config(got) else got) == value


def test_continuous_data_settings_are_refused_because_data_is_prepared_up_front():
    space = {"data.max_seq_len": {"type": "uniform", "lower": 256, "upper": 1024}}
    with pytest.raises(UserError, match="must be type choice or grid"):
        sweep_mod.data_combinations(space, [])


def test_best_experiment_file_composes_to_the_best_trials_config(tmp_path, monkeypatch):
    conf = tmp_path / "conf"
    shutil.copytree(ROOT / "conf", conf)
    monkeypatch.setattr(config_mod, "CONF_DIR", conf)
    monkeypatch.setattr(best_experiment_mod, "CONF_DIR", conf)
    argv = ["+sweep=quickstart", "run.dir=/somewhere", "deepspeed=zero3_offload", "trainer.max_steps=30",
            "sweep.num_samples=2"]
    params = {"trainer.lr": 0.003, "trainer.warmup_ratio": 0.05, "trainer.weight_decay": 0.1}
    path = sweep_mod.write_best_experiment("qs_best", argv, params, ["python -m llama3zh_dist +experiment=qs_best"])
    assert path == conf / "experiment" / "qs_best.yaml"
    assert path.read_text().startswith("# @package _global_\n# python -m llama3zh_dist +experiment=qs_best\n")
    best = OmegaConf.to_container(load_config(["+experiment=qs_best"]))
    trial = OmegaConf.to_container(load_config([*argv, *sweep_mod.param_overrides(params)]))
    for cfg in (best, trial):
        cfg.pop("sweep", None)
        cfg["run"].pop("dir"), cfg["run"].pop("name")
        cfg["data"].pop("out_dir")
    assert best == trial


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llama3zh_dist.sweep", *args], cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_sweep_without_a_sweep_config_fails_with_one_clear_message():
    res = _cli("+experiment=quickstart")
    assert res.returncode == 2 and "+sweep=" in res.stderr and "Traceback" not in res.stderr


def test_sweep_whose_trials_could_never_report_fails_before_ray_starts():
    res = _cli("+sweep=quickstart", "sweep.space.trainer.lr.type=bogus")
    assert res.returncode == 2 and "sweep.space.trainer.lr.type=bogus" in res.stderr and "Traceback" not in res.stderr
    res = _cli("+sweep=quickstart", "trainer.eval_every=0")
    assert res.returncode == 2 and "trainer.eval_every" in res.stderr and "Traceback" not in res.stderr
    res = _cli("+sweep=quickstart", "data.val_fraction=0.0")
    assert res.returncode == 2 and "data.val_fraction" in res.stderr and "Traceback" not in res.stderr
