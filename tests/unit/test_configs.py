"""Every shipped config composes and can work.

Every experiment (``+experiment=<name>``), every option of every config group (``<group>=<option>``),
every sweep (``+sweep=<name>``) and the Slurm overlay (``+cluster@_global_=slurm``) is composed
through ``load_config`` like an entry point does, and must pass preflight's checks that do not
depend on this machine's hardware (batch arithmetic, dtypes, attention implementation names, ...):
only "no CUDA GPU", "flash-attn not installed" and "model weights not here" may be reported, and
only for configs that ask for them. Files starting with ``_`` are shared fragments, not options.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from llama3zh_dist.batch import gradient_accumulation_steps, world_size_of
from llama3zh_dist.config import CONF_DIR, load_config
from llama3zh_dist.deepspeed_config import build_deepspeed_config
from llama3zh_dist.errors import UserError
from llama3zh_dist.preflight import problems

ROOT = Path(__file__).resolve().parents[2]

# Config groups chosen as `<group>=<option>`; `experiment` and `sweep` are added with `+`, and
# cluster/slurm is an overlay (see its header), not a cluster choice.
SELECTABLE = ["model", "data", "deepspeed", "trainer", "cluster", "logger", "eval", "serve"]
OVERLAYS = {("cluster", "slurm"): "+cluster@_global_=slurm"}
# Options with required settings (`???`) that a user gives on the command line.
REQUIRED = {("data", "files"): ["data.files=[data/sample/firefly.jsonl]", "data.format=firefly"]}
# Experiments that leave the dataset to the user (they refuse to start without one).
EXPERIMENT_REQUIRED = {"full_sft": ["data=llama3_chinese_chat"], "full_sft_70b": ["data=llama3_chinese_chat"]}
# The real config.json of each pretrained model the configs name (the weights are not here).
FIXTURES = ROOT / "tests" / "fixtures"
MODEL_FIXTURES = {"meta-llama/Meta-Llama-3-8B": FIXTURES / "llama3_8b", "meta-llama/Meta-Llama-3-70B": FIXTURES / "llama3_70b"}

# The keys SPEC.md fixes: every composed config has them.
CONTRACT_KEYS = [
    "run.dir", "model.path", "data.out_dir", "data.max_seq_len", "data.packing", "data.max_reject_fraction",
    "trainer.max_steps", "trainer.seed", "trainer.lr", "checkpoint.every_steps", "cluster.nproc_per_node",
    "cluster.nodes", "export.dtype", "export.max_shard_size", "chat.prompt",
    "eval.benchmarks", "eval.cmmlu.path", "eval.ceval.path", "eval.subjects", "eval.shots", "eval.chat_template",
    "eval.every_steps", "eval.out_dir",
]


def options(group: str) -> list[str]:
    folder = CONF_DIR / group
    if not folder.is_dir():
        return []
    return sorted(p.stem for p in folder.glob("*.yaml") if not p.name.startswith("_"))


def all_groups() -> list[str]:
    return sorted(p.name for p in CONF_DIR.iterdir() if p.is_dir())


GROUP_CASES = [(g, o) for g in SELECTABLE for o in options(g) if (g, o) not in OVERLAYS]
EXPERIMENTS = options("experiment")
SWEEPS = options("sweep")


def hardware_problem(text: str, cfg) -> bool:
    """Problems that depend on this machine, not on the config: allowed only where the config asks
    for that hardware or those weights."""
    if text.startswith("cluster.device=cuda but this machine has no CUDA GPU"):
        return cfg.cluster.device == "cuda"
    if text.startswith("model.attn_implementation=flash_attention_2 but the flash-attn package is not installed"):
        return cfg.model.attn_implementation == "flash_attention_2"
    if text.startswith(f"model.path={cfg.model.path}:") or text.startswith(f"model.path={cfg.model.path} does not exist"):
        return cfg.model.init == "pretrained"
    return False


def assert_can_work(cfg) -> None:
    config_problems = [p for p in problems(cfg) if not hardware_problem(p, cfg)]
    assert config_problems == []
    # the DeepSpeed config the trainer derives: whole accumulation steps, the batch adds up
    world = world_size_of(cfg)
    model_config = None
    if cfg.model.init == "pretrained":
        from transformers import AutoConfig

        model_config = AutoConfig.from_pretrained(MODEL_FIXTURES[cfg.model.path])
    ds = build_deepspeed_config(cfg, world, model_config)
    ga = gradient_accumulation_steps(cfg, world)
    assert ga >= 1 and ds["gradient_accumulation_steps"] == ga
    assert ds["train_batch_size"] == ds["train_micro_batch_size_per_gpu"] * ga * world
    assert ds["zero_optimization"]["stage"] == 3
    # the backend fits the device
    assert (cfg.cluster.device, cfg.cluster.backend) in {("cuda", "nccl"), ("cpu", "gloo")}
    for key in CONTRACT_KEYS:
        assert OmegaConf.select(cfg, key, throw_on_missing=True, default=KeyError) is not KeyError, key


@pytest.fixture(autouse=True)
def _offline_hub(monkeypatch):
    # preflight asks the Hub about Hub ids unless offline; keep the checks local and quick
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_every_config_group_folder_is_covered():
    covered = set(SELECTABLE) | {"experiment", "sweep"}
    assert set(all_groups()) <= covered, set(all_groups()) - covered
    assert EXPERIMENTS and GROUP_CASES


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_composes_and_passes_the_preflight_config_checks(name):
    cfg = load_config([f"+experiment={name}", *EXPERIMENT_REQUIRED.get(name, [])])
    assert_can_work(cfg)


@pytest.mark.parametrize("group,option", GROUP_CASES, ids=[f"{g}={o}" for g, o in GROUP_CASES])
def test_every_config_group_option_composes_and_passes_the_preflight_config_checks(group, option):
    cfg = load_config([f"{group}={option}", *REQUIRED.get((group, option), [])])
    assert_can_work(cfg)


@pytest.mark.parametrize("name", SWEEPS)
def test_every_sweep_composes_and_its_training_config_passes_the_preflight_config_checks(name):
    cfg = load_config([f"+sweep={name}"])
    assert cfg.sweep.name == name
    assert_can_work(cfg)


@pytest.mark.parametrize("experiment", [None, *EXPERIMENTS])
def test_slurm_overlay_adds_network_env_and_keeps_the_experiments_cluster(experiment):
    base = [f"+experiment={experiment}", *EXPERIMENT_REQUIRED.get(experiment, [])] if experiment else []
    plain = load_config(base)
    cfg = load_config([*base, OVERLAYS[("cluster", "slurm")]])
    for key in ("device", "backend", "nodes", "nproc_per_node"):
        assert cfg.cluster[key] == plain.cluster[key], key
    assert "NCCL_SOCKET_IFNAME" in cfg.cluster.env
    assert all(isinstance(v, str) for v in cfg.cluster.env.values())
    assert_can_work(cfg)


def test_data_files_without_its_required_settings_fails_with_a_message_naming_them():
    with pytest.raises(UserError) as e:
        load_config(["data=files"])
    assert "data.files" in str(e.value) and "data.format" in str(e.value)


def test_full_sft_without_gpu_flash_attn_or_weights_exits_2_with_one_message_naming_what_is_missing(tmp_path):
    import importlib.util

    import torch

    expected = []
    if not torch.cuda.is_available():
        expected.append("no CUDA GPU")
    cfg = load_config(["+experiment=full_sft", "data=sample"])
    if importlib.util.find_spec("flash_attn") is None and cfg.model.attn_implementation == "flash_attention_2":
        expected.append("flash-attn")  # the default (auto) takes torch's varlen kernel instead
    if not Path(os.path.expanduser(cfg.model.path)).exists():
        expected.append(f"model.path={cfg.model.path}")
    if not expected:
        pytest.skip("this machine has a GPU, flash-attn and the weights: full_sft would really train")
    # HF_HUB_OFFLINE=1: "weights not on this machine" without asking the Hub, wherever the test runs
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "llama3zh_dist", "+experiment=full_sft", "data=sample"], cwd=tmp_path, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    err = proc.stderr
    assert err.startswith("error: ") and err.count("error: ") == 1, err
    assert "Traceback" not in err
    for what in expected:
        assert what in err, (what, err)
    # each problem says how to fix it
    if "flash-attn" in expected:
        assert "model.attn_implementation=sdpa" in err
    if "no CUDA GPU" in expected:
        assert "+experiment=quickstart" in err
    # it stopped before any rank or data prep: nothing written where it ran
    assert list(tmp_path.iterdir()) == []
