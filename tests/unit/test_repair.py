"""Repair before reject: a ShareGPT-V3-style dump with every known defect keeps every repairable
conversation (content unchanged apart from the repair), rejects only the rest with a reason, and
counts each repair per source; every repair is a switch."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from omegaconf import OmegaConf

from llama3zh_dist.data.prep import prepare_dataset
from llama3zh_dist.data.repair import REPAIRS
from llama3zh_dist.llama3.chat_format import encode_for_training


def _t(i: int, what: str) -> str:
    """Distinct Simplified Chinese text (no refusal/identity phrases, no near-duplicates)."""
    topics = ["天气", "做饭", "编程", "旅行", "历史", "数学", "音乐", "健身", "读书", "电影", "宠物", "摄影", "园艺"]
    return f"{what}{i}：关于{topics[i % len(topics)]}和{topics[(i * 5 + 3) % len(topics)]}的内容，编号{i * 7919 % 10007}，第{i * 31}段。"


def _turn(frm: str, value) -> dict:
    return {"from": frm, "value": value}


def _sharegpt_case(i: int):
    """(row, expected messages or None, expected reason or None, repairs made) for defect kind i % 14."""
    q, a, q2, a2 = _t(i, "问"), _t(i, "答"), _t(i + 1000, "问"), _t(i + 1000, "答")
    kind = i % 14
    U, A = "user", "assistant"
    if kind == 0:  # clean
        return [_turn("human", q), _turn("gpt", a)], [(U, q), (A, a)], None, {}
    if kind == 1:  # continuation chunk: starts with gpt
        return [_turn("gpt", a2), _turn("human", q), _turn("gpt", a)], [(U, q), (A, a)], None, {"leading_assistant": 1}
    if kind == 2:  # two human turns in a row, and two gpt turns in a row
        turns = [_turn("human", q), _turn("human", q2), _turn("gpt", a), _turn("gpt", a2)]
        return turns, [(U, q + "\n\n" + q2), (A, a + "\n\n" + a2)], None, {"merge_consecutive": 2}
    if kind == 3:  # role aliases
        alias = ["bing", "chatgpt", "bard", "chatbot"][i % 4]
        turns = [_turn("user", q), _turn(alias, a), _turn("human", q2), _turn("gpt", a2)]
        return turns, [(U, q), (A, a), (U, q2), (A, a2)], None, {"role_aliases": 2}
    if kind == 4:  # share-site banner as the only system turn
        banner = ["This conversation was shared from TypingMind.com", "Shared via ChatHub (chathub.gg)"][i % 2]
        return [_turn("system", banner), _turn("human", q), _turn("gpt", a)], [(U, q), (A, a)], None, {"banner_system": 1}
    if kind == 5:  # empty value: an unanswered exchange inside
        turns = [_turn("human", q), _turn("gpt", ""), _turn("human", q2), _turn("gpt", a2)]
        return turns, [(U, q2), (A, a2)], None, {"empty_pairs": 1}
    if kind == 6:  # trailing unanswered user turn ("繼續")
        return [_turn("human", q), _turn("gpt", a), _turn("human", "繼續")], [(U, q), (A, a)], None, {"trailing_user": 1}
    if kind == 7:  # 58 turns, 17 of them empty user turns
        turns, want = [], []
        empty = set(range(1, 29, 2)) | {0, 2, 4}  # 17 of the 29 exchanges
        for k in range(29):
            uq, ua = _t(i * 100 + k, "问"), _t(i * 100 + k, "答")
            if k in empty:
                turns += [_turn("human", ""), _turn("gpt", ua)]
            else:
                turns += [_turn("human", uq), _turn("gpt", ua)]
                want += [(U, uq), (A, ua)]
        n_empty = sum(1 for t in turns if t["from"] == "human" and not t["value"])
        return turns, want, None, {"empty_pairs": n_empty}
    if kind == 8:  # several defects at once
        turns = [_turn("system", "shared from typingmind"), _turn("bard", a2), _turn("human", q), _turn("user", q2),
                 _turn("chatgpt", a), _turn("human", "继续")]
        return turns, [(U, q + "\n\n" + q2), (A, a)], None, {
            "banner_system": 1, "leading_assistant": 1, "role_aliases": 3, "merge_consecutive": 1, "trailing_user": 1}
    if kind == 9:  # unrepairable: a continuation chunk with no question at all
        return [_turn("gpt", a), _turn("gpt", a2)], None, "no_assistant_turn", {"leading_assistant": 2}
    if kind == 10:  # unrepairable: system turn in the middle (not a banner)
        return [_turn("human", q), _turn("system", "你是助手"), _turn("gpt", a)], None, "wrong_role_order", {}
    if kind == 11:  # unrepairable: unknown role
        return [_turn("human", q), _turn("narrator", a)], None, "unknown_role", {}
    if kind == 12:  # unrepairable: tool-call turn
        return [_turn("human", q), _turn("function_call", "{}"), _turn("gpt", a)], None, "tool_call_role", {}
    # a real system prompt stays
    return [_turn("system", "你是一个乐于助人的助手。"), _turn("human", q), _turn("gpt", a)], [
        ("system", "你是一个乐于助人的助手。"), (U, q), (A, a)], None, {}


def _messages_cases():
    """OpenAI / LLaMA-Factory content parts (joined), a non-text part (rejected), a mapped tool role."""
    q, a = _t(5000, "问"), _t(5000, "答")
    return [
        ({"id": "m0", "messages": [{"role": "user", "content": [{"type": "text", "text": q[:5]}, {"type": "text", "text": q[5:]}]},
                                   {"role": "assistant", "content": [{"type": "text", "text": a}]}]}, [("user", q), ("assistant", a)], None),
        ({"id": "m1", "messages": [{"role": "user", "content": [{"type": "text", "value": _t(5001, "问")}]},
                                   {"role": "assistant", "content": _t(5001, "答")}]}, [("user", _t(5001, "问")), ("assistant", _t(5001, "答"))], None),
        ({"id": "m2", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x.png"}}]},
                                   {"role": "assistant", "content": a}]}, None, "non_text_content"),
        ({"id": "m3", "messages": [{"role": "user", "content": q}, {"role": "tool", "content": "42"},
                                   {"role": "assistant", "content": a}]}, None, "tool_call_role"),
    ]


N_SHAREGPT = 70  # 5 of every defect kind


@pytest.fixture(scope="module")
def dump(module_tmp):
    root = module_tmp("dump")
    rows, expect = [], {}
    for i in range(N_SHAREGPT):
        turns, want, reason, fixes = _sharegpt_case(i)
        rid = f"sg{i}_{i % 3}"
        rows.append({"id": rid, "conversations": turns})
        expect[f"sharegpt:{rid}"] = (want, reason, fixes)
    # ShareGPT_V3_unfiltered_cleaned_split layout: one JSON array, indented
    (root / "sharegpt_v3.json").write_text(json.dumps(rows, ensure_ascii=False, indent=2))
    with open(root / "messages.jsonl", "w", encoding="utf-8") as f:
        for row, want, reason in _messages_cases():
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            expect[f"messages:{row['id']}"] = (want, reason, {})
    sources = {
        "sharegpt": {"format": "sharegpt", "files": [str(root / "sharegpt_v3.json")]},
        "messages": {"format": "messages", "files": [str(root / "messages.jsonl")]},
    }
    return {"sources": sources, "expect": expect, "read": {"sharegpt": N_SHAREGPT, "messages": len(_messages_cases())}}


def _cfg(tmp_path: Path, sources: dict, **data):
    from llama3zh_dist.config import load_config

    cfg = load_config(["model=tiny", "data=sample"])
    OmegaConf.set_struct(cfg, False)
    cfg.data.sources = sources
    cfg.data.out_dir = str(tmp_path / "out")
    cfg.data.max_seq_len = 4096
    cfg.data.max_reject_fraction = 1.0
    cfg.data.ray.workers = 0
    cfg.data.clean.near_dedup.enabled = False  # the generated texts share a frame; dedup is not under test
    for k, v in data.items():
        OmegaConf.update(cfg, "data." + k, v, merge=False)
    return cfg


def _samples(out: Path) -> dict:
    rows = pa.concat_tables([pq.read_table(p) for p in sorted(out.glob("part-*.parquet"))]).to_pylist()
    found = {}
    for r in rows:
        starts = [i for i, p in enumerate(r["position_ids"]) if p == 0] + [len(r["position_ids"])]
        for sid, a, b in zip(r["sample_ids"], starts, starts[1:]):
            found[sid] = (r["input_ids"][a:b], r["labels"][a:b])
    return found


@pytest.fixture(scope="module")
def repaired(dump, module_tmp):
    return prepare_dataset(_cfg(module_tmp("rep"), dump["sources"]))


def test_every_repairable_conversation_is_kept_with_only_the_repair_applied(dump, repaired):
    found = _samples(repaired)
    kept = {k: v for k, v in dump["expect"].items() if v[0] is not None}
    assert set(found) == set(kept)
    for sid, (want, _, _) in kept.items():
        msgs = [{"role": r, "content": c} for r, c in want]
        assert found[sid] == encode_for_training(msgs), sid


def test_only_the_unrepairable_is_rejected_each_with_its_reason(dump, repaired):
    rejects = [json.loads(x) for x in (repaired / "rejects.jsonl").read_text().splitlines()]
    got = {r["id"]: r["reason"] for r in rejects}
    want = {k: v[1] for k, v in dump["expect"].items() if v[0] is None}
    assert got == want
    assert all(r["detail"] and r["raw"] for r in rejects)
    report = json.loads((repaired / "data_report.json").read_text())
    for name, n in dump["read"].items():
        s = report["sources"][name]
        assert s["read"] == n and s["kept"] + s["rejected"] == n


def test_repairs_are_counted_per_source_and_recorded_per_row(dump, repaired):
    report = json.loads((repaired / "data_report.json").read_text())
    rows_with = Counter()
    per_row = {}
    for sid, (_, _, fixes) in dump["expect"].items():
        rows_with.update({k: 1 for k in fixes})
        if fixes:
            per_row[sid] = fixes
    assert report["sources"]["sharegpt"]["repairs"] == dict(sorted(rows_with.items()))
    assert report["repairs"]["rows"] == dict(sorted(rows_with.items()))
    assert set(rows_with) == set(REPAIRS)  # the corpus exercises every repair
    records = [json.loads(x) for x in (repaired / "repairs.jsonl").read_text().splitlines()]
    assert {r["id"]: r["repairs"] for r in records} == per_row
    assert all(r["kept"] == (dump["expect"][r["id"]][0] is not None) for r in records)


def test_each_repair_is_a_switch(dump, tmp_path):
    off = {f"repair.{k}": False for k in REPAIRS}
    out = prepare_dataset(_cfg(tmp_path, dump["sources"], **off))
    report = json.loads((out / "data_report.json").read_text())
    assert report["repairs"]["rows"] == {} and not any(report["repairs"]["enabled"].values())
    kept = set(_samples(out))
    # with every switch off only the valid conversations survive: the clean ones (kinds 0 and 13), the
    # banner ones with the banner kept as their system prompt (kind 4), messages m0/m1
    clean = {f"sharegpt:sg{i}_{i % 3}" for i in range(N_SHAREGPT) if i % 14 in (0, 4, 13)} | {"messages:m0", "messages:m1"}
    assert kept == clean
    reasons = Counter(json.loads(x)["reason"] for x in (out / "rejects.jsonl").read_text().splitlines())
    assert {"wrong_role_order", "empty_turn", "unknown_role"} <= set(reasons)


def test_a_repair_switch_that_is_not_a_boolean_is_a_user_error(dump, tmp_path):
    from llama3zh_dist.errors import UserError

    from llama3zh_dist.config import load_config

    # the typed config schema refuses it while composing, before any data is read
    with pytest.raises(UserError, match=r"data.repair.merge_consecutive=sometimes"):
        load_config(["model=tiny", "data=sample", "data.repair.merge_consecutive=sometimes"])
