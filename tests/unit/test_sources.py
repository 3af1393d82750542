"""Every source format maps to canonical messages; malformed rows get a reason, never an exception."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from llama3zh_dist.data.sources import (
    Reject,
    SourceSpec,
    iter_file_rows,
    resolve_paths,
    source_specs,
    to_messages,
    validate_messages,
)
from llama3zh_dist.errors import UserError


def _spec(fmt, **kw):
    return SourceSpec(name="s", format=fmt, files=[], **kw)


def test_each_format_maps_to_canonical_messages():
    u, a = {"role": "user"}, {"role": "assistant"}
    msgs, rid = to_messages(
        {"id": 7, "system": "系统", "conversations": [{"from": "human", "value": "问"}, {"from": "gpt", "value": "答"}]},
        _spec("sharegpt"),
    )
    assert msgs == [{"role": "system", "content": "系统"}, {**u, "content": "问"}, {**a, "content": "答"}] and rid == "7"
    msgs, _ = to_messages(
        {"instruction": "翻译", "input": "你好", "output": "Hello", "history": [["早", "早上好"]]}, _spec("alpaca")
    )
    assert [m["content"] for m in msgs] == ["早", "早上好", "翻译\n\n你好", "Hello"]
    msgs, _ = to_messages({"instruction": "只有指令", "input": "", "output": "好"}, _spec("alpaca"))
    assert msgs[0]["content"] == "只有指令"
    msgs, _ = to_messages({"INSTRUCTION": "知乎问题", "RESPONSE": "回答", "SOURCE": "zhihu"}, _spec("zhihu"))
    assert msgs == [{**u, "content": "知乎问题"}, {**a, "content": "回答"}]
    msgs, rid = to_messages(
        {"conversation_id": 3, "conversation": [{"human": "1", "assistant": "2"}, {"human": "3", "assistant": "4"}]},
        _spec("firefly"),
    )
    assert [m["content"] for m in msgs] == ["1", "2", "3", "4"] and rid == "3"
    msgs, _ = to_messages({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}, _spec("messages"))
    assert msgs == [{**u, "content": "q"}, {**a, "content": "a"}]


def test_column_mapping_with_prompt_template_builds_the_user_turn():
    spec = _spec("columns", columns={"assistant": "content"}, prompt_template="写一篇小红书笔记，标题：{title}")
    msgs, _ = to_messages({"title": "周末去露营", "content": "带上帐篷⛺️"}, spec)
    assert msgs == [{"role": "user", "content": "写一篇小红书笔记，标题：周末去露营"}, {"role": "assistant", "content": "带上帐篷⛺️"}]
    with pytest.raises(Reject) as e:
        to_messages({"content": "没有标题"}, spec)
    assert e.value.reason == "missing_field"
    spec2 = _spec("columns", columns={"user": "title", "assistant": "content"})
    assert to_messages({"title": "t", "content": "c"}, spec2)[0][0]["content"] == "t"


@pytest.mark.parametrize(
    "fmt,row,reason",
    [
        ("sharegpt", [1, 2], "not_an_object"),
        ("sharegpt", {"conversations": "x"}, "wrong_type"),
        ("sharegpt", {}, "missing_field"),
        ("sharegpt", {"conversations": [{"from": "robot", "value": "x"}]}, "unknown_role"),
        ("sharegpt", {"conversations": [{"from": "human", "value": 5}]}, "wrong_type"),
        ("alpaca", {"instruction": "x"}, "missing_field"),
        ("alpaca", {"instruction": ["x"], "output": "y"}, "wrong_type"),
        ("zhihu", {"INSTRUCTION": "q", "RESPONSE": None}, "missing_field"),
        ("firefly", {"conversation": [{"human": "q", "bot": "a"}]}, "unknown_role"),
        ("messages", {"messages": [{"role": "tool", "content": "x"}]}, "tool_call_role"),
            ("messages", {"messages": [{"role": "robot", "content": "x"}]}, "unknown_role"),
            ("messages", {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}, "non_text_content"),
    ],
)
def test_malformed_rows_get_a_reason(fmt, row, reason):
    with pytest.raises(Reject) as e:
        to_messages(row, _spec(fmt))
    assert e.value.reason == reason


@pytest.mark.parametrize(
    "msgs,reason",
    [
        ([{"role": "user", "content": "q"}], "no_assistant_turn"),
        ([{"role": "assistant", "content": "a"}, {"role": "user", "content": "q"}], "wrong_role_order"),
        ([{"role": "user", "content": "q"}, {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "wrong_role_order"),
        ([{"role": "user", "content": " \n"}, {"role": "assistant", "content": "a"}], "empty_turn"),
        ([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}, {"role": "user", "content": "q"}], "wrong_role_order"),
        ([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}, {"role": "system", "content": "s"}], "wrong_role_order"),
    ],
)
def test_structure_validation_names_the_problem(msgs, reason):
    with pytest.raises(Reject) as e:
        validate_messages(msgs)
    assert e.value.reason == reason


def test_json_and_parquet_files_are_read_row_by_row(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"INSTRUCTION": f"q{i}", "RESPONSE": f"a{i}"} for i in range(3)]
    (tmp_path / "a.json").write_text(json.dumps(rows, ensure_ascii=False))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "a.parquet")
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n{bad\n")
    for name in ("a.json", "a.parquet"):
        got = list(iter_file_rows(str(tmp_path / name)))
        assert [line for line, _ in got] == [1, 2, 3]
        assert [json.loads(r) for _, r in got] == rows
    got = list(iter_file_rows(str(tmp_path / "a.jsonl")))
    assert [line for line, _ in got] == [1, 2, 3, 5] and got[-1][1] == "{bad"


def test_relative_paths_resolve_against_cwd_then_repo_root(tmp_path, monkeypatch):
    from llama3zh_dist.data import sources

    cwd, repo = tmp_path / "cwd", tmp_path / "repo"
    (cwd / "d").mkdir(parents=True)
    (repo / "d").mkdir(parents=True)
    (cwd / "d" / "x.jsonl").write_text("{}\n")
    (repo / "d" / "x.jsonl").write_text("{}\n")
    (repo / "d" / "y1.jsonl").write_text("{}\n")
    (repo / "d" / "y2.jsonl").write_text("{}\n")
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sources, "repo_root", lambda: repo)
    assert resolve_paths(["d/x.jsonl"], "data.files") == [str((cwd / "d" / "x.jsonl").resolve())]
    assert resolve_paths(["d/y*.jsonl"], "data.files") == [str((repo / "d" / f"y{i}.jsonl").resolve()) for i in (1, 2)]
    (cwd / "notes.txt").write_text("x")
    with pytest.raises(UserError, match="not a .jsonl"):
        resolve_paths(["notes.txt"], "data.files")
    with pytest.raises(UserError, match="data.files: no file matches"):
        resolve_paths(["nope/*.jsonl"], "data.files")


def test_unknown_format_and_missing_files_are_user_errors(tmp_path):
    cfg = OmegaConf.create({"name": "x", "format": "csv", "files": ["a.jsonl"]})
    with pytest.raises(UserError, match="data.format='csv'"):
        source_specs(cfg)
    cfg = OmegaConf.create({"name": "x", "sources": {"a": {"format": "sharegpt", "files": [str(tmp_path / "none.jsonl")]}}})
    with pytest.raises(UserError, match="data.sources.a.files"):
        source_specs(cfg)


def test_hub_dataset_offline_is_a_clear_user_error(monkeypatch):
    import datasets

    from llama3zh_dist.data import sources

    def boom(*a, **k):
        raise ConnectionError("Couldn't reach the Hub")

    monkeypatch.setattr(datasets, "load_dataset", boom)
    spec = SourceSpec(name="hubby", format="alpaca", files=[], hub="someone/ruozhiba")
    # this machine has no Hub access: a clear error in seconds, naming the setting and the way out
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    with pytest.raises(UserError, match="data.sources.hubby.hub='someone/ruozhiba'.*unreachable.*files"):
        list(sources.iter_hub_rows(spec))
    # reachable (or offline cache mode) but the load fails: still a UserError, never a traceback
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="data.sources.hubby.hub='someone/ruozhiba'.*ConnectionError"):
        list(sources.iter_hub_rows(spec))


def test_hub_dataset_rows_flow_through_the_format_mapping(monkeypatch):
    import datasets

    from llama3zh_dist.data import sources

    rows = [{"instruction": "你好", "input": "", "output": "你好！"}]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: datasets.Dataset.from_list(rows))
    spec = SourceSpec(name="h", format="alpaca", files=[], hub="someone/x")
    got = list(sources.iter_hub_rows(spec))
    assert got == [(1, json.dumps(rows[0], ensure_ascii=False))]
    assert to_messages(json.loads(got[0][1]), spec)[0][1]["content"] == "你好！"


def test_tool_call_roles_are_kept_only_where_the_source_maps_them():
    row = {"conversations": [{"from": "human", "value": "查天气"}, {"from": "function_call", "value": "{}"},
                             {"from": "observation", "value": "晴"}, {"from": "gpt", "value": "晴天"}]}
    with pytest.raises(Reject) as e:
        to_messages(row, _spec("sharegpt"))
    assert e.value.reason == "tool_call_role" and "function_call" in e.value.detail
    spec = _spec("sharegpt", roles={"function_call": "assistant", "observation": "user"})
    msgs, _ = to_messages(row, spec)
    assert [m["role"] for m in msgs] == ["user", "assistant", "user", "assistant"]
    cfg = OmegaConf.create({"sources": {"t": {"format": "sharegpt", "files": ["x.jsonl"], "roles": {"tool": "robot"}}}})
    with pytest.raises(UserError, match=r"data.sources.t.roles"):
        source_specs(cfg)


def test_content_parts_join_as_text_in_both_layouts():
    row = {"messages": [{"role": "user", "content": [{"type": "text", "text": "你"}, {"type": "text", "text": "好"}]},
                        {"role": "assistant", "content": [{"type": "text", "value": "在"}, {"type": "text", "value": "的"}]}]}
    msgs, _ = to_messages(row, _spec("messages"))
    assert [m["content"] for m in msgs] == ["你好", "在的"]
