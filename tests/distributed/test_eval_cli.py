"""``python -m llama3zh_dist.eval`` on the session's quickstart run, typed as the README says.

The run's saved config is the base (as for export), so a checkpoint of the quickstart evaluates with
its own model and tokenizer, and the quickstart evaluates offline on the bundled set; an export
given alone has its results written beside it. Progress bars stay off a pipe.
"""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import ROOT, run_python

pytestmark = pytest.mark.slow
QUICK = ["eval.chat.max_new_tokens=8"]  # chat samples as configured, shorter answers


def _no_progress_bars(stderr: str) -> None:
    assert "Loading weights" not in stderr and "\r" not in stderr, stderr[-2000:]


def test_eval_of_a_checkpoint_reads_the_runs_saved_config(quickstart_run):
    run_dir, _, _ = quickstart_run
    proc = run_python(["-m", "llama3zh_dist.eval", f"run.dir={run_dir}", "eval.step=80", *QUICK])
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads((run_dir / "eval" / "step_80" / "results.json").read_text())
    assert results["cmmlu"]["n"] > 0 and results["chat"]["n"] > 0
    _no_progress_bars(proc.stderr)


def test_the_quickstart_run_evaluates_offline_on_the_bundled_set(quickstart_run):
    run_dir, _, _ = quickstart_run
    proc = run_python(["-m", "llama3zh_dist.eval", f"run.dir={run_dir}", *QUICK])
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "Hub" not in proc.stderr and "huggingface.co" not in proc.stderr, proc.stderr[-3000:]
    results = json.loads((run_dir / "eval" / "export" / "results.json").read_text())
    from llama3zh_dist.eval.benchmarks import Benchmark

    bundled = Benchmark("cmmlu", str(ROOT / "data" / "eval" / "mc_zh"))
    assert results["cmmlu"]["n"] == len(list(bundled.items())) and set(results) == {"cmmlu", "chat"}, results
    _no_progress_bars(proc.stderr)


def test_eval_of_an_export_writes_its_results_beside_it(quickstart_run, tmp_path):
    run_dir, _, _ = quickstart_run
    model = tmp_path / "models" / "qs-chat"
    shutil.copytree(run_dir / "export", model)
    args = ["-m", "llama3zh_dist.eval", f"model.path={model}", "eval.benchmarks=[cmmlu]",
            "eval.cmmlu.path=data/eval/mc_zh"]
    proc = run_python(args)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert json.loads((tmp_path / "models" / "eval" / "qs-chat" / "results.json").read_text())["cmmlu"]["n"] > 0
    out = tmp_path / "elsewhere"
    proc = run_python([*args, f"eval.out_dir={out}"])
    assert proc.returncode == 0 and (out / "results.json").is_file(), proc.stderr[-4000:]
