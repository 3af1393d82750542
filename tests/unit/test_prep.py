"""prepare_dataset end to end on generated inputs: nothing lost, SPEC columns, correct labels,
cache behaviour, clear user errors, mixture, validation split, Ray Data parity."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from omegaconf import OmegaConf

from llama3zh_dist.data.prep import prepare_dataset
from llama3zh_dist.llama3.chat_format import encode_for_training
from llama3zh_dist.llama3.tokens import IGNORE_INDEX
from llama3zh_dist.errors import UserError


# ---------------------------------------------------------------- generated corpus
def _zh(i: int, n: int = 1) -> str:
    topics = ["天气", "做饭", "编程", "旅行", "历史", "数学", "音乐", "健身", "读书", "电影", "宠物", "摄影"]
    return "".join(f"关于{topics[(i + k) % len(topics)]}的第{i}个问题，编号{i * 7919 % 10007}。" for k in range(n))


def _write_jsonl(path: Path, rows: list) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(r if isinstance(r, str) else json.dumps(r, ensure_ascii=False))
            f.write("\n")


def make_corpus(root: Path, n_good: int = 12) -> dict:
    """Files in every format, with malformed rows of every kind; returns sources config + expected reasons."""
    root.mkdir(parents=True, exist_ok=True)
    long_text = "很长的内容。" * 400  # ~1.6k tokens, over max_seq_len=256 below
    sg = [
        {"id": f"sg{i}", "conversations": [{"from": "human", "value": _zh(i)}, {"from": "gpt", "value": _zh(i + 100, 2)}]}
        for i in range(n_good)
    ]
    sg[1]["conversations"] = [
        {"from": "system", "value": "你是一个乐于助人的助手。"},
        {"from": "human", "value": _zh(1)},
        {"from": "gpt", "value": _zh(101)},
        {"from": "human", "value": "繼續說說網路的事"},
        {"from": "gpt", "value": "我是ChatGPT，由OpenAI开发。"},
    ]
    sg += [
        "{this is not json",  # bad_json
        "[1, 2, 3]",  # not_an_object
        {"conversations": "not a list"},  # wrong_type
        {"conversations": [{"from": "human", "value": 42}, {"from": "gpt", "value": "a"}]},  # wrong_type
        {"conversations": [{"from": "robot", "value": "q"}, {"from": "gpt", "value": "a"}]},  # unknown_role
        {"conversations": [{"from": "human", "value": "q"}, {"from": "system", "value": "s"}, {"from": "gpt", "value": "a"}]},  # wrong_role_order
        {"conversations": [{"from": "human", "value": "   "}, {"from": "gpt", "value": "a"}]},  # empty pair removed: nothing left
        {"conversations": [{"from": "human", "value": "只有问题"}]},  # no_assistant_turn
        {"conversations": [{"from": "human", "value": long_text}, {"from": "gpt", "value": "好"}]},  # too_long
        {"conversations": [{"from": "human", "value": "问"}, {"from": "gpt", "value": "As an AI language model, no."}]},  # refusal
        {"id": "sg0dup", "conversations": [{"from": "human", "value": _zh(0)}, {"from": "gpt", "value": _zh(100, 2)}]},  # duplicate
    ]
    _write_jsonl(root / "sharegpt.jsonl", sg)
    al = [{"instruction": _zh(200 + i), "input": "", "output": _zh(300 + i, 2)} for i in range(n_good)]
    al += [{"instruction": "缺少输出"}, {"instruction": ["列表"], "output": "x"}, {"instruction": "q", "output": ""}]
    (root / "alpaca.json").write_text(json.dumps(al, ensure_ascii=False))
    zh = [{"INSTRUCTION": _zh(400 + i), "RESPONSE": _zh(500 + i, 2), "SOURCE": "zhihu"} for i in range(n_good)]
    zh += [{"INSTRUCTION": "没有回答", "RESPONSE": None, "SOURCE": "zhihu"}]
    pq.write_table(pa.Table.from_pylist(zh), root / "zhihu.parquet")
    ff = [
        {"conversation_id": i, "conversation": [{"human": _zh(600 + i), "assistant": _zh(700 + i, 2)}, {"human": _zh(800 + i), "assistant": _zh(900 + i)}]}
        for i in range(n_good)
    ]
    ff += [{"conversation_id": 999, "conversation": [{"human": "q", "bot": "a"}]}]
    _write_jsonl(root / "firefly.jsonl", ff)
    ms = [{"messages": [{"role": "user", "content": _zh(1000 + i)}, {"role": "assistant", "content": _zh(1100 + i, 2)}]} for i in range(n_good)]
    ms += [{"messages": [{"role": "tool", "content": "x"}, {"role": "assistant", "content": "y"}]}]
    _write_jsonl(root / "messages.jsonl", ms)
    xhs = [{"id": f"x{i}", "title": _zh(1200 + i), "content": _zh(1300 + i, 3)} for i in range(n_good)]
    xhs += [{"id": "x-no-title", "content": "没有标题的笔记"}]
    _write_jsonl(root / "xhs.jsonl", xhs)
    sources = {
        "sharegpt": {"format": "sharegpt", "files": [str(root / "sharegpt.jsonl")]},
        "alpaca": {"format": "alpaca", "files": [str(root / "alpaca.json")]},
        "zhihu": {"format": "zhihu", "files": [str(root / "zhihu.parquet")]},
        "firefly": {"format": "firefly", "files": [str(root / "firefly.jsonl")]},
        "messages": {"format": "messages", "files": [str(root / "messages.jsonl")]},
        "xhs": {
            "format": "columns",
            "files": [str(root / "xhs.jsonl")],
            "columns": {"assistant": "content"},
            "prompt_template": "请写一篇小红书笔记，标题：{title}",
        },
    }
    expected_read = {"sharegpt": n_good + 11, "alpaca": n_good + 3, "zhihu": n_good + 1, "firefly": n_good + 1,
                     "messages": n_good + 1, "xhs": n_good + 1}
    return {"sources": sources, "read": expected_read}


def make_cfg(tmp_path: Path, sources: dict, out: str = "out", **data):
    from llama3zh_dist.config import load_config

    cfg = load_config(["model=tiny", "data=sample"])
    OmegaConf.set_struct(cfg, False)
    cfg.data.sources = sources
    cfg.data.out_dir = str(tmp_path / out)
    cfg.data.max_seq_len = 256
    cfg.data.max_reject_fraction = 1.0
    cfg.data.ray.workers = 0
    for k, v in data.items():
        # merge: the typed data schema takes a mapping into a section (data.clean) only by merging
        OmegaConf.update(cfg, "data." + k, v, merge=isinstance(v, dict))
    return cfg


@pytest.fixture(scope="module")
def corpus(module_tmp):
    return make_corpus(module_tmp("corpus"))


@pytest.fixture(scope="module")
def prepared(corpus, module_tmp):
    tmp = module_tmp("prep")
    out = prepare_dataset(make_cfg(tmp, corpus["sources"]))
    return out


def _rows(folder: Path, pattern="part-*.parquet") -> pa.Table:
    return pa.concat_tables([pq.read_table(p) for p in sorted(folder.glob(pattern))])


def _rejects(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "rejects.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------- tests
def test_every_input_row_is_accounted_for_per_source(prepared, corpus):
    report = json.loads((prepared / "data_report.json").read_text())
    rejects = _rejects(prepared)
    rows = _rows(prepared)
    kept_ids = Counter(i for ids in rows.column("sample_ids").to_pylist() for i in ids)
    assert all(c == 1 for c in kept_ids.values())  # weight 1: every kept sample exactly once
    rej_by_src = Counter(r["source"] for r in rejects)
    kept_by_src = Counter(i.split(":")[0] for i in kept_ids)
    for name, n in corpus["read"].items():
        s = report["sources"][name]
        assert s["read"] == n
        assert s["kept"] + s["rejected"] == s["read"]
        assert rej_by_src[name] == s["rejected"] and kept_by_src[name] == s["kept"]
    assert report["read"] == sum(corpus["read"].values()) == report["kept"] + report["rejected"]
    reasons = {(r["source"], r["reason"]) for r in rejects}
    for reason in ["bad_json", "not_an_object", "wrong_type", "unknown_role", "wrong_role_order",
                   "no_assistant_turn", "too_long", "refusal", "duplicate"]:
        assert ("sharegpt", reason) in reasons, reason
    # empty turns are repaired away (data.repair.empty_pairs); a row left with nothing says so
    assert {("alpaca", "missing_field"), ("alpaca", "wrong_type"), ("alpaca", "no_assistant_turn"), ("zhihu", "missing_field"),
            ("firefly", "unknown_role"), ("messages", "tool_call_role"), ("xhs", "missing_field")} <= reasons
    emptied = next(r for r in rejects if r["source"] == "alpaca" and r["reason"] == "no_assistant_turn")
    assert "empty_pairs" in emptied["detail"]
    for r in rejects:
        assert set(r) >= {"source", "line", "id", "reason", "raw"} and r["raw"]
    bad = next(r for r in rejects if r["reason"] == "bad_json")
    assert bad["raw"] == "{this is not json" and bad["line"] == corpus["read"]["sharegpt"] - 10
    # validation vs filter reasons: refusal/duplicate are not validation failures
    assert report["rejected_validation"] == report["rejected"] - 2


def test_prepared_rows_have_spec_columns_labels_and_restarting_positions(prepared):
    rows = _rows(prepared)
    for col in ("input_ids", "labels", "position_ids"):
        assert rows.schema.field(col).type == pa.list_(pa.int32())
    assert rows.schema.field("sample_ids").type == pa.list_(pa.string())
    manifest = json.loads((prepared / "manifest.json").read_text())
    for r in rows.to_pylist():
        ids, labels, pos = r["input_ids"], r["labels"], r["position_ids"]
        assert len(ids) == len(labels) == len(pos) <= 256 == manifest["max_seq_len"]
        starts = [i for i, p in enumerate(pos) if p == 0]
        assert len(starts) == len(r["sample_ids"]) and starts[0] == 0
        for a, b in zip(starts, starts[1:] + [len(pos)]):
            assert pos[a:b] == list(range(b - a))
            assert ids[a] == 128000 and labels[a] == IGNORE_INDEX  # no loss across a sample boundary
            assert any(l != IGNORE_INDEX for l in labels[a:b])
            assert labels[b - 1] == 128009
        assert all(l == IGNORE_INDEX or l == i for l, i in zip(labels, ids))


def test_sample_tokens_equal_the_template_of_the_cleaned_conversation(prepared):
    rows = _rows(prepared).to_pylist()
    found = {}
    for r in rows:
        starts = [i for i, p in enumerate(r["position_ids"]) if p == 0] + [len(r["position_ids"])]
        for sid, a, b in zip(r["sample_ids"], starts, starts[1:]):
            found[sid] = (r["input_ids"][a:b], r["labels"][a:b])
    msgs = [
        {"role": "system", "content": "你是一个乐于助人的助手。"},
        {"role": "user", "content": _zh(1)},
        {"role": "assistant", "content": _zh(101)},
        {"role": "user", "content": "继续说说网路的事"},  # Traditional -> Simplified
        {"role": "assistant", "content": "我是Llama3-中文助手，由llama3zh_dist开发。"},  # identity rewrite
    ]
    assert found["sharegpt:sg1"] == encode_for_training(msgs)
    x = [{"role": "user", "content": "请写一篇小红书笔记，标题：" + _zh(1200)}, {"role": "assistant", "content": _zh(1300, 3)}]
    assert found["xhs:x0"] == encode_for_training(x)
    report = json.loads((prepared / "data_report.json").read_text())
    assert report["cleaning"]["traditional_to_simplified_changed"] >= 1
    assert report["cleaning"]["identity_rewritten"] == 1
    assert report["chinese_char_share"] > 0.5
    assert 0 < report["supervised_share"] < 1 and report["packing"]["efficiency"] > 0.5
    assert sum(report["length_histogram"]["counts"]) == report["train_samples"]


def test_cache_hit_on_rerun_and_invalidated_by_one_byte_or_one_setting(tmp_path, capsys):
    c = make_corpus(tmp_path / "c", n_good=4)
    cfg = make_cfg(tmp_path, c["sources"])
    out = prepare_dataset(cfg)
    m1 = json.loads((out / "manifest.json").read_text())
    capsys.readouterr()
    assert prepare_dataset(cfg) == out
    assert "cache hit" in capsys.readouterr().out
    assert json.loads((out / "manifest.json").read_text())["created_unix"] == m1["created_unix"]
    # one input byte
    p = tmp_path / "c" / "messages.jsonl"
    data = bytearray(p.read_bytes())
    data[data.index("编号".encode())] ^= 0  # no-op write keeps the hash ...
    p.write_bytes(bytes(data).replace("编号".encode(), "编码".encode(), 1))  # ... this changes bytes
    prepare_dataset(cfg)
    m2 = json.loads((out / "manifest.json").read_text())
    assert "cache hit" not in capsys.readouterr().out and m2["fingerprint"] != m1["fingerprint"]
    # one setting
    cfg.data.clean.near_dedup.threshold = 0.9
    prepare_dataset(cfg)
    m3 = json.loads((out / "manifest.json").read_text())
    assert "cache hit" not in capsys.readouterr().out and m3["fingerprint"] != m2["fingerprint"]
    # the Ray worker count does not change the output: still a hit
    cfg.data.ray.workers = 3
    prepare_dataset(cfg)
    assert "cache hit" in capsys.readouterr().out
    # a shard deleted by hand: not a hit, rebuilt
    (out / m3["shards"][0]).unlink()
    prepare_dataset(cfg)
    assert "cache hit" not in capsys.readouterr().out and (out / m3["shards"][0]).exists()
    assert not list(tmp_path.glob(".out.tmp-*"))  # no temp folders left behind


def test_reject_fraction_over_the_limit_fails_with_a_clear_message(tmp_path):
    c = make_corpus(tmp_path / "c", n_good=4)
    cfg = make_cfg(tmp_path, c["sources"], max_reject_fraction=0.05)
    with pytest.raises(UserError) as e:
        prepare_dataset(cfg)
    msg = str(e.value)
    assert "data.max_reject_fraction=0.05" in msg and "rows" in msg and "top reasons" in msg
    failed = tmp_path / "out.failed" / "rejects.jsonl"
    assert str(failed) in msg and failed.exists()
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_unknown_format_and_missing_files_fail_before_any_work(tmp_path):
    with pytest.raises(UserError, match="data.sources.a.format='csv'"):
        prepare_dataset(make_cfg(tmp_path, {"a": {"format": "csv", "files": ["x.jsonl"]}}))
    with pytest.raises(UserError, match="data.sources.a.files: no file matches"):
        prepare_dataset(make_cfg(tmp_path, {"a": {"format": "sharegpt", "files": [str(tmp_path / "missing.jsonl")]}}))


def test_mixture_weights_up_and_down_sample_deterministically_from_the_seed(tmp_path):
    c = make_corpus(tmp_path / "c", n_good=20)
    src = {"messages": dict(c["sources"]["messages"], weight=2.5), "zhihu": dict(c["sources"]["zhihu"], weight=0.5)}
    out = prepare_dataset(make_cfg(tmp_path, src, out="a"))
    report = json.loads((out / "data_report.json").read_text())
    ids = [i for r in _rows(out).column("sample_ids").to_pylist() for i in r]
    assert report["sources"]["messages"]["train_samples"] == 50 and sum(i.startswith("messages") for i in ids) == 50
    assert report["sources"]["zhihu"]["train_samples"] == 10 and sum(i.startswith("zhihu") for i in ids) == 10
    assert report["sources"]["zhihu"]["by_reason"]["downsampled"] == 10
    assert report["sources"]["zhihu"]["kept"] + report["sources"]["zhihu"]["rejected"] == report["sources"]["zhihu"]["read"]
    again = prepare_dataset(make_cfg(tmp_path, src, out="b"))
    assert sorted(ids) == sorted(i for r in _rows(again).column("sample_ids").to_pylist() for i in r)
    cfg = make_cfg(tmp_path, src, out="c")
    cfg.trainer.seed = 7
    other = prepare_dataset(cfg)
    zh_other = sorted(i for r in _rows(other).column("sample_ids").to_pylist() for i in r if i.startswith("zhihu"))
    assert zh_other != sorted(i for i in ids if i.startswith("zhihu"))


def test_validation_split_is_held_out_per_source_and_unpacked(tmp_path):
    c = make_corpus(tmp_path / "c", n_good=20)
    src = {k: c["sources"][k] for k in ("messages", "zhihu")}
    out = prepare_dataset(make_cfg(tmp_path, src, val_fraction=0.1))
    val = _rows(out / "val")
    assert set(val.column_names) >= {"input_ids", "labels", "position_ids", "sample_ids", "source"}
    assert Counter(val.column("source").to_pylist()) == {"messages": 2, "zhihu": 2}
    assert all(len(s) == 1 for s in val.column("sample_ids").to_pylist())
    val_ids = {s[0] for s in val.column("sample_ids").to_pylist()}
    train_ids = {i for r in _rows(out).column("sample_ids").to_pylist() for i in r}
    assert not val_ids & train_ids and len(train_ids) == 36
    assert json.loads((out / "manifest.json").read_text())["val_shards"] == ["val/part-00000.parquet"]


def test_overlong_samples_truncate_at_turn_boundaries_or_drop(tmp_path):
    big = "这是一段很长的回答。" * 60  # ~300+ tokens
    rows = [{"messages": [{"role": "user", "content": "短问题"}, {"role": "assistant", "content": "短回答"},
                          {"role": "user", "content": "再问"}, {"role": "assistant", "content": big}]},
            {"messages": [{"role": "user", "content": "另一个问题"}, {"role": "assistant", "content": "另一个回答"}]}]
    p = tmp_path / "long.jsonl"
    _write_jsonl(p, rows)
    src = {"m": {"format": "messages", "files": [str(p)]}}
    out = prepare_dataset(make_cfg(tmp_path, src, out="t", overlong="truncate"))
    samples = {}
    for r in _rows(out).to_pylist():
        starts = [i for i, p in enumerate(r["position_ids"]) if p == 0] + [len(r["position_ids"])]
        for sid, a, b in zip(r["sample_ids"], starts, starts[1:]):
            samples[sid] = r["input_ids"][a:b]
    assert samples["m:1"] == encode_for_training(rows[0]["messages"][:2])[0]
    assert json.loads((out / "data_report.json").read_text())["cleaning"]["truncated_at_turn_boundary"] == 1
    out = prepare_dataset(make_cfg(tmp_path, src, out="d", overlong="drop"))
    assert [x["reason"] for x in _rejects(out)] == ["too_long"]


def test_cleaning_steps_are_switchable(tmp_path):
    rows = [
        {"messages": [{"role": "user", "content": "網路"}, {"role": "assistant", "content": "我是ChatGPT。"}]},
        {"messages": [{"role": "user", "content": "網路"}, {"role": "assistant", "content": "我是ChatGPT。"}]},
    ]
    p = tmp_path / "x.jsonl"
    _write_jsonl(p, rows)
    src = {"m": {"format": "messages", "files": [str(p)]}}
    off = {"clean": {"whitespace": False, "traditional_to_simplified": False, "exact_dedup": False,
                     "near_dedup": {"enabled": False, "threshold": 0.85, "num_perm": 128, "ngram": 5},
                     "identity": {"enabled": False, "name": "n", "owner": "o", "rules": None},
                     "refusal": {"enabled": False, "phrases": []}}}
    out = prepare_dataset(make_cfg(tmp_path, src, out="off", **off))
    rows_off = _rows(out).to_pylist()
    assert sum(len(r["sample_ids"]) for r in rows_off) == 2
    assert rows_off[0]["input_ids"][: len(encode_for_training(rows[0]["messages"])[0])] == encode_for_training(rows[0]["messages"])[0]
    out = prepare_dataset(make_cfg(tmp_path, src, out="on"))
    rep = json.loads((out / "data_report.json").read_text())
    assert rep["kept"] == 1 and rep["cleaning"]["exact_duplicates_removed"] == 1
    assert rep["cleaning"]["identity_rewritten"] == 1 and rep["cleaning"]["traditional_to_simplified_changed"] == 1


def test_ray_data_prep_gives_the_same_dataset_as_in_process(corpus, prepared, tmp_path):
    import ray

    cfg = make_cfg(tmp_path, corpus["sources"])
    cfg.data.ray.workers = 2
    cfg.data.ray.min_rows = 0
    cfg.data.ray.block_rows = 16
    try:
        out = prepare_dataset(cfg)
    finally:
        ray.shutdown()
    assert _rows(out).equals(_rows(prepared))
    assert (out / "rejects.jsonl").read_text() == (prepared / "rejects.jsonl").read_text()


def test_prep_cli_prints_the_report_and_user_errors_exit_2(tmp_path, capsys):
    from llama3zh_dist.prep import main

    p = tmp_path / "z.jsonl"
    _write_jsonl(p, [{"INSTRUCTION": "你好", "RESPONSE": "你好！有什么可以帮你？"}])
    assert main(["model=tiny", "data=files", f"data.files=[{p}]", "data.format=zhihu", f"data.out_dir={tmp_path / 'o'}"]) == 0
    out = capsys.readouterr().out
    assert "data report" in out and "packing on" in out and "Chinese chars" in out
    with pytest.raises(SystemExit) as e:
        main(["model=tiny", "data=files", f"data.files=[{p}]", "data.format=bogus", f"data.out_dir={tmp_path / 'o'}"])
    assert e.value.code == 2
    assert "data.format='bogus'" in capsys.readouterr().err


def test_output_does_not_depend_on_the_order_rows_come_back_from_workers(corpus, prepared, tmp_path, monkeypatch):
    from llama3zh_dist.data import prep as prep_mod

    real = prep_mod.map_rows

    def shuffled(*a, **k):
        t, timings = real(*a, **k)
        return t.take(pa.array(list(range(t.num_rows))[::-1])), timings

    monkeypatch.setattr(prep_mod, "map_rows", shuffled)
    out = prepare_dataset(make_cfg(tmp_path, corpus["sources"]))
    assert _rows(out).equals(_rows(prepared))
    assert (out / "rejects.jsonl").read_text() == (prepared / "rejects.jsonl").read_text()


def test_many_shards_and_row_groups_hold_exactly_the_rows_of_one(corpus, prepared, tmp_path, monkeypatch):
    # the write step builds each shard from the tokens spilled to disk, a few rows at a time
    from llama3zh_dist.data.spill import Spill

    monkeypatch.setitem(Spill.shards.__kwdefaults__, "piece_rows", 2)
    out = prepare_dataset(make_cfg(tmp_path, corpus["sources"], shard_rows=3))
    parts = sorted(out.glob("part-*.parquet"))
    assert len(parts) > 2 and pq.ParquetFile(parts[0]).num_row_groups == 2
    assert json.loads((out / "manifest.json").read_text())["shards"] == [p.name for p in parts]
    assert _rows(out).equals(_rows(prepared))
    assert (out / "rejects.jsonl").read_text() == (prepared / "rejects.jsonl").read_text()
    assert not list(tmp_path.glob(".out.spill-*"))


def test_a_crash_mid_prep_leaves_no_folder_that_looks_complete(corpus, tmp_path, monkeypatch):
    from llama3zh_dist.data import write as write_mod

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(write_mod, "write_val", boom)
    with pytest.raises(RuntimeError):
        prepare_dataset(make_cfg(tmp_path, corpus["sources"]))
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out.tmp-*"))
    assert not list(tmp_path.glob(".out.spill-*"))  # the processed rows spilled to disk are gone too


def test_empty_input_is_a_clear_user_error(tmp_path):
    p = tmp_path / "empty.jsonl"
    p.write_text("\n")
    with pytest.raises(UserError, match="no training sample left"):
        prepare_dataset(make_cfg(tmp_path, {"e": {"format": "messages", "files": [str(p)]}}))
    assert not (tmp_path / "out").exists()


def test_train_on_last_assistant_masks_earlier_turns(tmp_path):
    msgs = [{"role": "system", "content": "你是助手。"}, {"role": "user", "content": "第一问"}, {"role": "assistant", "content": "第一答"},
            {"role": "user", "content": "第二问"}, {"role": "assistant", "content": "第二答"}]
    p = tmp_path / "m.jsonl"
    _write_jsonl(p, [{"messages": msgs}])
    for train_on in ("all_assistant", "last_assistant"):
        out = prepare_dataset(make_cfg(tmp_path, {"m": {"format": "messages", "files": [str(p)]}}, out=train_on, train_on=train_on))
        r = _rows(out).to_pylist()[0]
        assert (r["input_ids"], r["labels"]) == encode_for_training(msgs, train_on)
