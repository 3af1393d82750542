"""The recipes name no dataset, and pre-flight refuses a run that would repeat its data too often."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from llama3zh_dist.config import load_config
from llama3zh_dist.data.sources import source_specs
from llama3zh_dist.preflight import data_repetition_problem

ROOT = Path(__file__).resolve().parents[2]


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "PYTHONWARNINGS": "ignore::FutureWarning"}
    return subprocess.run([sys.executable, "-m", "llama3zh_dist", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900)


def test_full_sft_without_a_dataset_exits_2_with_one_message_naming_the_choices():
    for experiment in ("full_sft", "full_sft_70b"):
        proc = _cli(f"+experiment={experiment}")
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert "no dataset chosen" in lines[0] and "data=llama3_chinese_chat" in lines[0] and "data=files" in lines[0]


def test_the_chinese_chat_mixture_names_its_four_sources_on_the_hub_with_local_alternatives():
    cfg = load_config(["+experiment=full_sft", "data=llama3_chinese_chat"])
    specs = {s.name: s for s in source_specs(cfg.data)}
    assert set(specs) == {"sharegpt_zh", "ruozhiba", "zhihu", "xiaohongshu"}
    assert all(s.hub for s in specs.values())
    local = load_config(["+experiment=full_sft", "data=llama3_chinese_chat", "data.sources.zhihu.hub=null",
                         "data.sources.zhihu.files=[data/sample/zhihu_kol.jsonl]"])
    zhihu = next(s for s in source_specs(local.data) if s.name == "zhihu")
    assert zhihu.hub is None and zhihu.files[0].endswith("data/sample/zhihu_kol.jsonl")


def test_repetition_is_measured_against_the_prepared_row_count(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"counts": {"rows": 1000}}))
    cfg = load_config(["+experiment=full_sft", "data=sample", "trainer.max_steps=600",
                       "trainer.global_batch_size=64", "trainer.max_epochs=5"])
    problem = data_repetition_problem(cfg, tmp_path)  # 600 x 64 / 1000 = 38.4 epochs
    assert problem and "38.4 times" in problem and "trainer.max_steps=78" in problem
    ok = load_config(["+experiment=full_sft", "data=sample", "trainer.max_steps=78", "trainer.max_epochs=5"])
    assert data_repetition_problem(ok, tmp_path) is None  # 4.99 epochs
    unlimited = load_config(["+experiment=full_sft", "data=sample", "trainer.max_epochs=null"])
    assert data_repetition_problem(unlimited, tmp_path) is None


def test_a_run_that_would_repeat_its_data_too_often_exits_2_before_any_rank_starts(tmp_path):
    # the quickstart's 12 conversations are 2 rows: 120 steps x 2 rows = 120 epochs
    proc = _cli("+experiment=quickstart", f"run.dir={tmp_path / 'run'}", f"data.out_dir={tmp_path / 'prepared'}",
                "trainer.max_epochs=3", "logger.mode=disabled", "data.progress=false")
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "repeat its data 120.0 times" in err[0] and "trainer.max_epochs=3" in err[0], proc.stderr
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_slurm_jobs_require_a_local_model_folder(monkeypatch, tmp_path):
    from llama3zh_dist.preflight import problems

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("SLURM_JOB_ID", "123")
    cfg = load_config(["+experiment=full_sft", "data=sample", "model.path=meta-llama/Meta-Llama-3-8B"])
    found = [p for p in problems(cfg) if p.startswith("model.path=")]
    assert len(found) == 1 and "Slurm jobs need a local model folder" in found[0] and "--local-dir" in found[0]
    (tmp_path / "config.json").write_text("{}")
    local = load_config(["+experiment=full_sft", "data=sample", f"model.path={tmp_path}"])
    assert not [p for p in problems(local) if p.startswith("model.path=")]
