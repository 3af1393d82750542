"""Typos and bad values, typed as a new user would: each command answers with the fix, in one line.

Every test runs the real command (``python -m llama3zh_dist.<cmd> ...``) on the real ``conf/`` tree;
composing a config takes seconds and nothing trains.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "LLAMA3ZH_NO_SLURM": "1"}
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True, text=True)


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-4000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-4000:]
    return lines[0]


@pytest.mark.parametrize("command, typo, meant, options", [
    ("llama3zh_dist", "+experiment=full_sft70b", "experiment=full_sft_70b", ["full_sft", "full_sft_70b", "quickstart"]),
    ("llama3zh_dist.prep", "data=file", "data=files", ["files", "llama3_chinese_chat", "quickstart", "sample"]),
])
def test_a_mistyped_group_option_lists_every_option_and_the_closest(command, typo, meant, options):
    line = one_error_line(run(command, typo))
    assert f"did you mean {meant}?" in line, line
    listed = line.rsplit("the options are: ", 1)[1]
    assert listed.split(", ") == options, line  # the whole list, not cut off; no "schema" or "_common"


@pytest.mark.parametrize("command, typo, meant", [
    ("llama3zh_dist.chat", "chat.promt=你好 世界", "chat.prompt"),   # free text: Hydra's lexer fails first
    ("llama3zh_dist.prep", "data.fomat=sharegpt", "data.format"),
    ("llama3zh_dist.prep", "+data.fomat=sharegpt", "data.format"),  # Hydra's own advice, which it accepts
])
def test_a_mistyped_key_is_answered_with_the_key_meant(command, typo, meant):
    line = one_error_line(run(command, typo))
    assert f"did you mean `{meant}`?" in line, line
    assert f"-> {meant}=" in line and "use +" not in line and "Lexer" not in line, line


def test_a_value_of_the_wrong_type_names_the_key_and_the_expected_type():
    line = one_error_line(run("llama3zh_dist.preflight", "trainer.lr=abc"))
    assert "trainer.lr" in line and "float" in line and "'abc'" in line, line


@pytest.mark.parametrize("command, usage", [
    ("llama3zh_dist", "python -m llama3zh_dist [overrides]"),
    ("llama3zh_dist.eval", "python -m llama3zh_dist.eval model.path=<export folder>"),
    ("llama3zh_dist.export", "python -m llama3zh_dist.export run.dir="),
])
def test_help_prints_the_commands_usage_and_the_config_groups(command, usage):
    proc = run(command, "--help")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert usage in proc.stdout, proc.stdout
    for group, option in (("experiment", "full_sft_70b"), ("data", "llama3_chinese_chat"), ("model", "tiny"),
                          ("cluster", "slurm"), ("deepspeed", "zero3_offload")):
        line = next((x for x in proc.stdout.splitlines() if x.split()[:1] == [group]), "")
        assert option in line, proc.stdout


def test_a_mistyped_run_dir_says_the_run_folder_does_not_exist(tmp_path):
    typo = tmp_path / "runs" / "quickstrat"
    for command in ("llama3zh_dist.eval", "llama3zh_dist.chat"):
        line = one_error_line(run(command, f"run.dir={typo}"))
        assert f"run.dir={typo}: no such run folder" in line, line
        assert "Meta-Llama-3-8B" not in line


def test_an_unwritable_run_dir_is_one_line_naming_the_folder(tmp_path):
    in_the_way = tmp_path / "a_file"
    in_the_way.write_text("")
    for run_dir in ("/proc/llama3zh_run", in_the_way / "run"):  # unwritable even for root
        line = one_error_line(run("llama3zh_dist", "+experiment=quickstart", f"run.dir={run_dir}"))
        assert f"run.dir={run_dir}: cannot write the run folder" in line, line
