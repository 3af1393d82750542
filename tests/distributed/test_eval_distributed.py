"""Evaluation during training on 2 ZeRO-3 ranks (gloo), against ``python -m llama3zh_dist.eval`` on the export.

One real run (module fixture): the quickstart-size model trained on the even rows of the bundled
multiple-choice set rendered as chat (``messages`` format), ``eval.chat_template=true``, evaluated
on all 73 rows (an odd number: one rank scores one item more) and on 3 chat conversations of
different lengths every 30 steps. Nothing is mocked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
pytestmark = pytest.mark.slow

STEPS, EVERY = 60, 30
PROMPTS = [
    {"id": "p1", "turns": ["你好，请介绍一下你自己。"], "identity": True},
    {"id": "p2", "turns": ["中秋节吃什么？", "那端午节呢？", "这两个节日哪个更早？"]},
    {"id": "p3", "turns": ["写一句关于春天的话。"]},
]


def _env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "PYTHONPATH": str(ROOT),
            "PYTHONWARNINGS": "ignore"}


@pytest.fixture(scope="module")
def trained(module_tmp):
    from llama3zh_dist.eval.benchmarks import Benchmark, as_chat_conversations

    base = module_tmp("eval_dist")
    bench = Benchmark("cmmlu", str(ROOT / "data" / "eval" / "mc_zh"))
    train = [it for it in bench.items() if it.index % 2 == 0]
    data = base / "mc_train.jsonl"
    data.write_text("".join(json.dumps(c, ensure_ascii=False) + "\n" for c in as_chat_conversations(bench, train)),
                    encoding="utf-8")
    prompts = base / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in PROMPTS), encoding="utf-8")
    eval_args = ["eval.benchmarks=[cmmlu,chat]", "eval.cmmlu.path=data/eval/mc_zh", "eval.chat_template=true",
                 f"eval.chat.prompts=[{prompts}]", "eval.chat.max_new_tokens=8"]
    run = base / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "llama3zh_dist", "+experiment=quickstart", "data=files", f"data.files=[{data}]",
         "data.format=messages", "data.max_seq_len=512", "data.clean.near_dedup.enabled=false",
         f"data.out_dir={base / 'prepared'}", f"run.dir={run}", f"trainer.max_steps={STEPS}",
         f"checkpoint.every_steps={EVERY}", "trainer.progress_bar=false", f"eval.every_steps={EVERY}", *eval_args],
        cwd=ROOT, env=_env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return run, eval_args, proc.stdout + proc.stderr


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


def test_eval_during_training_equals_eval_of_the_export_item_by_item(trained):
    run, eval_args, _ = trained
    proc = subprocess.run([sys.executable, "-m", "llama3zh_dist.eval", f"run.dir={run}", "+experiment=quickstart",
                           *eval_args], cwd=ROOT, env=_env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-4000:]
    during = _jsonl(run / "eval" / f"step_{STEPS}" / "items.jsonl")
    after = _jsonl(run / "eval" / "export" / "items.jsonl")
    assert len(during) == len(after) == 73
    for a, b in zip(during, after):
        assert (a["benchmark"], a["subject"], a["index"], a["answer"], a["predicted"]) == \
               (b["benchmark"], b["subject"], b["index"], b["answer"], b["predicted"])
        assert max(abs(a["loglik"][c] - b["loglik"][c]) for c in "ABCD") < 1e-4
    gen_during = _jsonl(run / "eval" / f"step_{STEPS}" / "generations.jsonl")
    gen_after = _jsonl(run / "eval" / "export" / "generations.jsonl")
    assert [(g["id"], g["turn"], g["answer"]) for g in gen_during] == [(g["id"], g["turn"], g["answer"]) for g in gen_after]
    assert len(gen_during) == 5  # 1 + 3 + 1 turns: the ranks had 2 and 3 turns, padded to the same count


def test_training_logs_the_benchmark_figures_and_the_chat_table(trained):
    run, _, log = trained
    records = _jsonl(run / "metrics.jsonl")
    evals = [r for r in records if "eval/cmmlu" in r]
    assert [r["step"] for r in evals] == [EVERY, 2 * EVERY]
    assert {"eval/cmmlu/STEM", "eval/cmmlu/China specific", "eval/chat/stopped_at_eot"} <= set(evals[-1])
    results = json.loads((run / "eval" / f"step_{STEPS}" / "results.json").read_text())
    assert results["cmmlu"]["accuracy"] == pytest.approx(evals[-1]["eval/cmmlu"])
    tables = list((run / "wandb").glob("offline-run-*/files/media/table/eval/chat_samples*.table.json"))
    assert len(tables) == 2
    import re

    counts = re.findall(r"eval at step (\d+) -> .* \(forward passes per rank: \[(\d+), (\d+)\]\)", log)
    assert [c[0] for c in counts] == [str(EVERY), str(STEPS)], log[-3000:]
    # 73 items on 2 ranks (37 + 36) and 5 chat turns (2 + 3): every rank made the same forward calls
    assert all(a == b and int(a) >= 37 for _, a, b in counts), counts


def test_model_trained_on_the_items_scores_them_and_is_near_chance_on_held_out_ones(trained):
    """The evaluation reads what training taught: >= 90% on the trained rows, 25% +- 20 points
    (about 2.8 standard deviations of a 36-item binomial at p = 0.25) on the held-out rows."""
    run, _, _ = trained
    items = _jsonl(run / "eval" / f"step_{STEPS}" / "items.jsonl")
    seen = [r for r in items if r["index"] % 2 == 0]
    held = [r for r in items if r["index"] % 2 == 1]
    acc = lambda rows: sum(r["predicted"] == r["answer"] for r in rows) / len(rows)  # noqa: E731
    assert len(seen) == 37 and len(held) == 36
    print(f"accuracy on trained rows {acc(seen):.3f} (n=37), on held-out rows {acc(held):.3f} (n=36)")
    assert acc(seen) >= 0.9, acc(seen)
    assert abs(acc(held) - 0.25) <= 0.20, acc(held)


def test_eval_of_a_checkpoint_equals_the_evaluation_training_ran_at_that_step(trained):
    """``eval.step=N`` exports checkpoints/step_N to eval/step_N/model and scores it: the same items as
    the ZeRO-3 evaluation at step N, whose figures it replaces."""
    run, eval_args, _ = trained
    during = _jsonl(run / "eval" / f"step_{EVERY}" / "items.jsonl")
    proc = subprocess.run([sys.executable, "-m", "llama3zh_dist.eval", f"run.dir={run}", "+experiment=quickstart",
                           f"eval.step={EVERY}", *eval_args], cwd=ROOT, env=_env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (run / "eval" / f"step_{EVERY}" / "model" / "config.json").exists()
    after = _jsonl(run / "eval" / f"step_{EVERY}" / "items.jsonl")
    assert [r["predicted"] for r in during] == [r["predicted"] for r in after]
    assert max(abs(a["loglik"][c] - b["loglik"][c]) for a, b in zip(during, after) for c in "ABCD") < 1e-4
