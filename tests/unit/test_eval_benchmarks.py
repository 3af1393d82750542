"""Benchmark readers, prompts, subject tables and accuracy aggregation of llama3zh_dist.eval."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from _eval_helpers import BUNDLED_MC, write_ceval_layout
from llama3zh_dist.errors import UserError
from llama3zh_dist.eval.benchmarks import Benchmark, prompt_text
from llama3zh_dist.eval.results import summarize, wandb_metrics
from llama3zh_dist.eval.runner import load_benchmarks
from llama3zh_dist.eval.subjects import CEVAL_SUBJECTS, CMMLU_SUBJECTS, ceval_description, cmmlu_description


def test_subject_descriptions_equal_the_installed_harness_task_configs():
    import lm_eval  # pinned in the dev extra: an error when missing
    import yaml

    tasks = Path(lm_eval.__file__).parent / "tasks"
    for s in CMMLU_SUBJECTS:
        assert yaml.safe_load(open(tasks / "cmmlu" / f"cmmlu_{s}.yaml"))["description"] == cmmlu_description(s)
    for s in CEVAL_SUBJECTS:
        assert yaml.safe_load(open(tasks / "ceval" / f"ceval-valid_{s}.yaml"))["description"] == ceval_description(s)
    group = yaml.safe_load(open(tasks / "cmmlu" / "_cmmlu.yaml"))["task"]
    assert [t.removeprefix("cmmlu_") for t in group] == list(CMMLU_SUBJECTS)
    assert len(CEVAL_SUBJECTS) == 52


def test_categories_follow_the_benchmarks():
    assert CMMLU_SUBJECTS["chinese_history"][1] == ("Humanities", "China specific")
    assert CMMLU_SUBJECTS["ancient_chinese"][1] == ("Social Science", "China specific")
    assert CMMLU_SUBJECTS["computer_science"][1] == ("STEM",)
    assert sum("China specific" in c for _, c in CMMLU_SUBJECTS.values()) == 15
    counts = {c: sum(v == c for _, v in CEVAL_SUBJECTS.values()) for c in ("STEM", "Social Science", "Humanities", "Other")}
    assert counts == {"STEM": 20, "Social Science": 10, "Humanities": 11, "Other": 11}


def test_bundled_set_reads_in_the_cmmlu_layout_with_balanced_answers():
    b = Benchmark("cmmlu", str(BUNDLED_MC))
    assert b.subjects == ["chinese_food_culture", "chinese_history", "computer_science", "high_school_geography", "nutrition"]
    items = b.items()
    assert len(items) == 73 and len(items) % 2 == 1
    assert all(it.answer == "ABCD"[(it.index // 2) % 4] for it in items)
    assert [it.index for it in items if it.subject == "nutrition"] == list(range(16))


def test_prompt_is_the_harness_text_with_k_dev_shots():
    b = Benchmark("cmmlu", str(BUNDLED_MC))
    item = next(it for it in b.items() if it.subject == "nutrition")
    text = prompt_text(b, item, 1)
    assert text == (
        "以下是关于营养学的单项选择题，请直接给出正确答案的选项。\n\n"
        "人体最主要的供能营养素是？\nA. 维生素\nB. 碳水化合物\nC. 矿物质\nD. 水\n答案： B\n\n"
        "缺乏维生素A容易引起？\nA. 夜盲症\nB. 坏血病\nC. 佝偻病\nD. 口角炎\n答案："
    )


def test_ceval_layout_scores_val_and_keeps_test_without_answers(tmp_path):
    root = write_ceval_layout(tmp_path / "ceval", {"nutrition": "basic_medicine", "computer_science": "computer_network"})
    b = Benchmark("ceval", str(root))
    assert b.subjects == ["computer_network", "basic_medicine"]  # C-Eval's own order
    assert len(b.items()) == 32 and all(it.answer for it in b.items())
    assert all(it.answer is None for it in b.split_items("basic_medicine", "test"))
    assert prompt_text(b, b.items()[0], 0).startswith("以下是中国关于计算机网络的单项选择题，请选出其中的正确答案。\n\n")


def test_subjects_filter_and_unknown_subject(tmp_path):
    ev = OmegaConf.create({"benchmarks": ["cmmlu", "chat"], "cmmlu": {"path": str(BUNDLED_MC)}, "subjects": ["nutrition"]})
    (b,) = load_benchmarks(ev)
    assert b.subjects == ["nutrition"]
    ev.subjects = ["nutrition", "astrology"]
    with pytest.raises(UserError, match="astrology"):
        load_benchmarks(ev)


def test_missing_data_offline_says_where_to_put_it(tmp_path, monkeypatch):
    with pytest.raises(UserError, match=r"eval\.cmmlu\.path=.*no such folder.*official"):
        Benchmark("cmmlu", str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"eval\.ceval\.path=.*val/"):
        Benchmark("ceval", str(tmp_path / "empty"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    b = Benchmark("cmmlu", "haonan-li/cmmlu")
    with pytest.raises(UserError, match=r"set eval\.cmmlu\.path=<folder>"):
        b.items()


def test_bad_csv_names_the_file(tmp_path):
    (tmp_path / "test").mkdir()
    (tmp_path / "test" / "nutrition.csv").write_text(",Question,A,B,C,D,Answer\n0,q,a,b,c,d,E\n")
    with pytest.raises(UserError, match=r"nutrition\.csv: row 0: answer 'E'"):
        Benchmark("cmmlu", str(tmp_path)).items()


def test_accuracy_per_subject_category_and_overall():
    def rec(subject, ok, answer="A"):
        return {"benchmark": "cmmlu", "subject": subject, "index": 0, "answer": answer, "predicted": "A" if ok else "B",
                "loglik": {}}

    items = [rec("chinese_history", True), rec("chinese_history", False), rec("computer_science", True),
             rec("nutrition", False), rec("nutrition", False), rec("nutrition", True)]
    r = summarize(items)["cmmlu"]
    assert r["accuracy"] == pytest.approx(3 / 6) and r["n"] == 6
    assert r["subjects"]["chinese_history"] == {"accuracy": 0.5, "n": 2}
    assert r["categories"]["STEM"] == {"accuracy": 1.0, "n": 1}
    assert r["categories"]["Humanities"] == {"accuracy": 0.5, "n": 2}
    assert r["categories"]["China specific"] == {"accuracy": 0.5, "n": 2}
    assert r["categories"]["Other"] == {"accuracy": pytest.approx(1 / 3), "n": 3}
    assert "Social Science" not in r["categories"]
    flat = wandb_metrics({"cmmlu": r})
    assert flat["eval/cmmlu"] == 0.5 and flat["eval/cmmlu/STEM"] == 1.0


def test_chat_template_scoring_puts_the_prompt_in_a_user_turn_and_scores_the_bare_letter():
    from llama3zh_dist.llama3.chat_format import encode_dialog, get_encoder
    from llama3zh_dist.eval.scoring import build_probes, choice_requests
    from llama3zh_dist.llama3.hf_tokenizer import load_tokenizer

    tok = load_tokenizer(None)
    b = Benchmark("cmmlu", str(BUNDLED_MC))
    item = b.items()[0]
    reqs = choice_requests(tok, b, item, 0, chat_template=True)
    ctx = encode_dialog(tok, [{"role": "user", "content": prompt_text(b, item, 0)}], add_generation_prompt=True)
    assert {c: r for c, r in reqs.items()} == {c: (ctx, get_encoder(tok).encode_text(c)) for c in "ABCD"}
    assert tok.decode(ctx[-4:]) == "<|start_header_id|>assistant<|end_header_id|>\n\n"
    (probe,) = build_probes(0, reqs, 8192)  # one forward for the four one-token letters
    assert probe.input_ids == ctx and probe.keep == 1
    plain = choice_requests(tok, b, item, 0, chat_template=False)
    assert all(tok.decode(cont) == f" {c}" for c, (_, cont) in plain.items())


def test_evaluation_during_training_checks_its_data_when_the_run_starts(tmp_path):
    from llama3zh_dist.config import load_config
    from llama3zh_dist.eval.in_training import TrainingEvaluator

    cfg = load_config(["+experiment=quickstart", "eval.every_steps=5", f"eval.cmmlu.path={tmp_path / 'nowhere'}"])
    with pytest.raises(UserError, match=r"eval\.cmmlu\.path=.*no such folder"):
        TrainingEvaluator(cfg, tmp_path, rank=0, world_size=1, device="cpu")
    off = TrainingEvaluator(load_config(["+experiment=quickstart", f"eval.cmmlu.path={tmp_path / 'nowhere'}"]),
                            tmp_path, rank=0, world_size=1, device="cpu")
    assert not off.due(5)  # eval.every_steps=0: nothing is read, nothing runs
    on = TrainingEvaluator(load_config(["+experiment=quickstart", "eval.every_steps=5"]), tmp_path, rank=0,
                           world_size=1, device="cpu")
    assert on.due(10) and not on.due(7) and len(on.convs) == 30 and on.benches[0].name == "cmmlu"
