"""``python -m llama3zh_dist.plan`` as a user reads it: a plan that does not fit says what would, and
the per-GPU rows add up to the total it prints (and the README's copy of the table does too)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOO_BIG = ["+experiment=full_sft_70b", "data=llama3_chinese_chat", "cluster.gpu=H100-SXM", "cluster.nodes=1"]
ROWS = ("model_states", "activations", "loss", "buffers", "overhead")


@pytest.fixture(scope="module")
def too_big():
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "LLAMA3ZH_NO_SLURM": "1"}
    return subprocess.run([sys.executable, "-m", "llama3zh_dist.plan", *TOO_BIG], cwd=ROOT, env=env,
                          capture_output=True, text=True)


def gib_rows(table: str) -> dict[str, float | None]:
    rows = {}
    for line in table.splitlines():
        m = re.match(r"\s*(model_states|activations|loss|buffers|overhead|total)\s+(-|[\d.]+ GiB)", line)
        if m:
            rows[m.group(1)] = None if m.group(2) == "-" else float(m.group(2).split()[0])
    return rows


def test_a_plan_that_does_not_fit_lists_the_cheapest_fixes_as_preflight_does(too_big):
    from llama3zh_dist.config import load_config
    from llama3zh_dist.plan import memory_problem

    assert too_big.returncode == 2, too_big.stderr[-3000:]
    assert "DOES NOT FIT" in too_big.stdout
    preflight = memory_problem(load_config(TOO_BIG))
    fixes = preflight[preflight.index("  changes that would fit"):].splitlines()[:-1]  # less "plan.check=false"
    assert len(fixes) >= 3 and "deepspeed.offload_optimizer=cpu" in fixes[1], preflight
    assert "\n".join(fixes) in too_big.stdout, too_big.stdout


def test_the_plan_table_shows_every_term_its_total_adds(too_big):
    rows = gib_rows(too_big.stdout)
    assert set(rows) == {*ROWS, "total"}, too_big.stdout
    assert sum(rows[k] or 0.0 for k in ROWS) == pytest.approx(rows["total"], abs=0.03), too_big.stdout


def test_when_the_backward_peak_is_the_larger_phase_the_rows_still_add_up():
    from llama3zh_dist.config import load_config
    from llama3zh_dist.plan import make_plan
    from llama3zh_dist.plan.report import table

    cfg = load_config(["+experiment=full_sft", "data=llama3_chinese_chat", "cluster.gpu=H100-SXM",
                       "model.attn_implementation=eager"])  # the T x T scores of eager attention
    plan = make_plan(cfg)
    b, d = plan["per_gpu_bytes"], plan["detail"]
    assert b["activations"] > d["activations_at_loss"] + b["loss"]  # this config is the other branch
    rows = gib_rows(table(plan))
    assert rows["loss"] is None
    assert sum(rows[k] or 0.0 for k in ROWS) == pytest.approx(rows["total"], abs=0.03)


def test_the_readme_plan_table_adds_up():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = readme[readme.index("| per GPU |"):].split("\n\n", 1)[0].splitlines()
    figures = [[float(x) for x in re.findall(r"([\d.]+) GiB", line)] for line in table]
    terms = [f for line, f in zip(table, figures) if f and "total" not in line and "host RAM" not in line]
    total = next(f for line, f in zip(table, figures) if "**total**" in line)[-3:]  # after "of 79.6 GiB"
    assert len(terms) == 4 and len(total) == 3, table
    for column in range(3):
        assert sum(t[column] for t in terms) == pytest.approx(total[column], abs=0.03), table
