"""The quickstart, end to end, exactly as a user runs it: prep -> 2-rank ZeRO-3 training -> export -> chat.

One real run (the session's ``quickstart_run``, conftest.py) backs every promise below; nothing is mocked.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import run_python

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


_run = run_python


@pytest.fixture
def quickstart(quickstart_run):
    return quickstart_run


def test_quickstart_trains_on_two_ranks_each_holding_half_the_parameters(quickstart):
    run_dir, _, log = quickstart
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert records and all(r["world_size"] == 2 for r in records)
    assert [r["step"] for r in records] == list(range(1, len(records) + 1))
    total, local = re.search(r"model: ([\d.]+)M parameters.*this rank holds ([\d.]+)M", log).groups()
    assert abs(float(local) / float(total) - 0.5) < 0.02, log
    assert "; attention: sdpa (model.attn_implementation=sdpa)" in log  # which attention ran, said once
    assert (run_dir / "FINISHED").exists()
    assert records[-1]["loss"] < 0.2 * records[0]["loss"]


def test_exported_model_answers_its_training_questions_in_one_shot_chat(quickstart):
    """Acceptance: greedy one-shot chat answers >= 8 of 10 training questions with the trained start."""
    run_dir, overrides, _ = quickstart
    from llama3zh_dist.quickstart_check import quickstart_pairs

    pairs = quickstart_pairs()[:10]
    hits = 0
    for question, answer in pairs:
        out = _run(["-m", "llama3zh_dist.chat", f"run.dir={run_dir}", "chat.prompt=-"], input=question)
        assert out.returncode == 0, out.stderr[-3000:]
        hits += out.stdout.strip().startswith(answer[:10])
    assert hits >= 8, f"recalled only {hits}/10"


def test_export_loads_offline_and_its_chat_template_equals_training_tokens(quickstart, monkeypatch):
    run_dir, _, _ = quickstart
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llama3zh_dist.llama3.chat_format import encode_dialog, encode_for_training
    from llama3zh_dist.llama3.hf_tokenizer import load_tokenizer

    export = run_dir / "export"
    tok = AutoTokenizer.from_pretrained(export, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(export, local_files_only=True).eval()
    train_tok = load_tokenizer(None)
    conv = [
        {"role": "system", "content": "你是一个乐于助人的中文助手。"},
        {"role": "user", "content": "为什么天空是蓝色的？Explain in 中文, please."},
        {"role": "assistant", "content": "阳光穿过大气时会被空气分子散射。"},
        {"role": "user", "content": "那日落为什么是红的？🌇"},
    ]
    # The whole conversation, as trained, and the generation prompt, as served.
    full = tok.apply_chat_template(conv[:3], tokenize=True, return_dict=True)["input_ids"]
    trained_ids, _labels = encode_for_training(conv[:3], encoder=train_tok)
    assert list(full) == list(trained_ids)
    prompt = tok.apply_chat_template(conv, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    assert list(prompt) == encode_dialog(train_tok, conv, add_generation_prompt=True)

    # Generation stops on <|eot_id|>: the answer ends with it, well before max_new_tokens.
    from llama3zh_dist.quickstart_check import quickstart_pairs

    question = quickstart_pairs()[0][0]
    ids = tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=400, do_sample=False)
    new = out[0, ids["input_ids"].shape[1]:].tolist()
    eot = tok.convert_tokens_to_ids("<|eot_id|>")
    assert new[-1] == eot and eot not in new[:-1] and len(new) < 400


def test_plan_calibrated_from_the_run_predicts_its_time_per_step(quickstart):
    """Acceptance: ``plan.calibrate_from`` of a finished run predicts that run's time per step within 20%."""
    import statistics

    run_dir, overrides, _ = quickstart
    out = _run(["-m", "llama3zh_dist.plan", *overrides, f"plan.calibrate_from={run_dir}", "plan.format=json"])
    assert out.returncode == 0, out.stderr[-3000:]
    plan = json.loads(out.stdout)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all(r["flops"] > 0 for r in records)
    # Wall time from one step's record to the next (what a user waits per step), median over the run.
    measured = statistics.median(b["time"] - a["time"] for a, b in zip(records, records[1:]))
    assert plan["step_seconds"] == pytest.approx(measured, rel=0.2)
    assert plan["tokens_per_step"] == pytest.approx(statistics.mean(r["tokens"] for r in records), rel=0.2)
    assert plan["hours_to_max_steps"] == pytest.approx(plan["step_seconds"] * 120 / 3600)


def test_an_intermediate_checkpoint_keeps_reference_logits_and_its_export_checks_them(quickstart, tmp_path):
    """Issue 20 item 3: every checkpoint (not only the final one) saves the reference logits, listed in
    its complete.json, so exporting step 80 of 120 compares the export's logits with the model's."""
    from llama3zh_dist.export import export_checkpoint
    from llama3zh_dist.llama3.hf_tokenizer import load_tokenizer

    run_dir, _, _ = quickstart
    ckpt = run_dir / "checkpoints" / "step_80"
    assert "reference_logits.safetensors" in json.loads((ckpt / "complete.json").read_text())["files"]
    s = export_checkpoint(ckpt, tmp_path / "export80", tokenizer=load_tokenizer(None), dtype="float32", workers=1)
    assert s["verification"]["logits_verified"] is True and s["verification"]["logits"]["failures"] == []
    assert json.loads((tmp_path / "export80" / "verification.json").read_text())["logits_verified"] is True


def test_plan_calibrated_on_the_quickstart_predicts_a_run_with_twice_the_micro_batch(quickstart, tmp_path):
    """Issue 20 item 2: calibrating on the run it predicts is circular (any error in the FLOP formula
    cancels). Calibrated on a run of the quickstart's shape (1 row of 512 tokens per rank and step),
    the plan predicts a run with micro_batch_size=2 (twice the tokens and supervised tokens per step,
    same data), compared with that run's measured time per step. The two runs go back to back (12
    steps each) so that both see the same load on a shared machine; the quickstart's own run was timed
    minutes earlier, under whatever ran then.

    What it must hold: the calibrated prediction scales the calibration run's whole step with the
    FLOPs, so the part of a step that does not grow with the tokens (optimizer step, ZeRO-3 gathers,
    hooks: timing.py) is scaled too, and the prediction is an upper bound. With a fixed share f of the
    calibration step it is 2/(2-f) of the measured time: measured here 1.13 (f=0.23, under load),
    1.20 and 1.31 (f=0.48, quiet machine, where the tiny model's compute is fast and the fixed part is
    not). The test asserts measured x 0.95 <= predicted <= measured x 1.5 (f up to 2/3, plus noise). A
    formula that mis-scales with the tokens per step is outside: one that ignores the rows of a step
    predicts the calibration run's own time (0.5-0.75 of the measured), one that counts them twice
    2/(2-f) x 2 >= 2."""
    import statistics

    _, overrides, _ = quickstart
    short = ["trainer.max_steps=12", "checkpoint.every_steps=0", "export.enabled=false", "logger.mode=disabled"]
    base = [o for o in overrides if not o.startswith("run.dir=")] + short
    calibration, other = tmp_path / "mb1", tmp_path / "mb2"
    args = base + [f"run.dir={other}", "trainer.micro_batch_size=2", "trainer.global_batch_size=4"]
    for run_args in (base + [f"run.dir={calibration}"], args):
        train = _run(["-m", "llama3zh_dist", *run_args])
        assert train.returncode == 0, train.stdout[-2000:] + train.stderr[-3000:]

    def seconds_per_step(run: Path) -> float:  # wall time from one step's record to the next, median
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return statistics.median(b["time"] - a["time"] for a, b in zip(records, records[1:]))

    measured, calibrated = seconds_per_step(other), seconds_per_step(calibration)

    out = _run(["-m", "llama3zh_dist.plan", *args, f"plan.calibrate_from={calibration}", "plan.format=json"])
    assert out.returncode == 0, out.stderr[-3000:]
    predicted = json.loads(out.stdout)["step_seconds"]
    print(f"calibration run {calibrated:.2f} s/step; micro-batch 2: predicted {predicted:.2f}, measured {measured:.2f}")
    assert measured * 0.95 <= predicted <= measured * 1.5, (calibrated, predicted, measured)


def test_quickstart_console_shows_no_library_deprecation_noise(quickstart):
    _, _, log = quickstart
    assert "FutureWarning" not in log and "DeprecationWarning" not in log, log[:3000]
    assert len(log.splitlines()) <= 300, len(log.splitlines())
    assert "Setting accelerator to CPU" not in log
    assert all(line in log for line in ("model: ", "checkpoint step_", "exported: "))
