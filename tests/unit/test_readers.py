"""Streaming reads: JSON arrays record by record (any chunking gives the same records), a truncated or
invalid array keeps its complete records and the rest is one reject naming the byte offset, and
prep reports the truncation in one line."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from llama3zh_dist.data import readers
from llama3zh_dist.data.readers import iter_records


def _rows(n: int) -> list[dict]:
    # records of varied size (some far larger than the test chunk size), multi-byte text, numbers
    return [
        {"id": f"r{i}", "conversations": [{"from": "human", "value": f"问题{i}" + "长" * (i * 37 % 300)},
                                          {"from": "gpt", "value": f"回答{i} \"引号\" \\ 😀"}], "n": i * 1.5}
        for i in range(n)
    ]


@pytest.mark.parametrize("chunk", [7, 64, 1 << 20])
@pytest.mark.parametrize("indent", [None, 2])
def test_json_array_records_stream_out_whatever_the_chunk_size(tmp_path, monkeypatch, chunk, indent):
    monkeypatch.setattr(readers, "CHUNK_BYTES", chunk)
    rows = _rows(40)
    p = tmp_path / "a.json"
    p.write_text("\ufeff" + json.dumps(rows, ensure_ascii=False, indent=indent) + "\n")
    got = list(iter_records(str(p)))
    assert [line for line, _, _ in got] == list(range(1, 41))
    assert all(err is None for _, _, err in got)
    assert [json.loads(raw) for _, raw, _ in got] == rows


@pytest.mark.parametrize("chunk", [16, 1 << 20])
def test_truncated_array_keeps_complete_records_and_the_rest_is_one_error_at_its_byte_offset(tmp_path, monkeypatch, chunk):
    monkeypatch.setattr(readers, "CHUNK_BYTES", chunk)
    rows = _rows(50)
    text = json.dumps(rows, ensure_ascii=False, indent=2)
    # cut in the middle of record 48 (0-based 47)
    start47 = text.index('"id": "r47"')
    start47 = text.rindex("{", 0, start47)
    cut = text[: start47 + 60]
    p = tmp_path / "cut.json"
    p.write_bytes(cut.encode("utf-8"))
    got = list(iter_records(str(p)))
    assert [json.loads(raw) for _, raw, err in got if err is None] == rows[:47]
    errors = [(line, raw, err) for line, raw, err in got if err is not None]
    assert len(errors) == 1
    line, raw, err = errors[0]
    offset = len(cut[:start47].encode("utf-8"))
    assert line == 48 and raw == cut[start47:]
    assert "truncated JSON array" in err and "47 complete records" in err and f"byte {offset:,}" in err


def test_invalid_record_in_the_middle_and_trailing_garbage_are_reported_not_silently_dropped(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text('[{"a": 1}, {"a": 2} {"a": 3}]')
    got = list(iter_records(str(p)))
    assert [raw for _, raw, err in got if err is None] == ['{"a": 1}', '{"a": 2}']
    assert "invalid JSON array" in got[-1][2] and "byte 20" in got[-1][2]
    p.write_text('[{"a": 1}] trailing')
    got = list(iter_records(str(p)))
    assert got[0] == (1, '{"a": 1}', None) and "extra data" in got[1][2]
    p.write_text('[{"a": 1}, {"a": tru')
    assert "truncated" in list(iter_records(str(p)))[-1][2]
    p.write_text("[]")
    assert list(iter_records(str(p))) == []


def test_json_files_of_one_object_or_json_lines_still_read(tmp_path):
    rows = _rows(3)
    (tmp_path / "w.json").write_text(json.dumps({"version": 1, "data": rows}, ensure_ascii=False))
    assert [json.loads(r) for _, r, _ in iter_records(str(tmp_path / "w.json"))] == rows
    (tmp_path / "l.json").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows))
    assert [json.loads(r) for _, r, _ in iter_records(str(tmp_path / "l.json"))] == rows
    (tmp_path / "o.json").write_text('{"a": 1,')
    (line, raw, err), = list(iter_records(str(tmp_path / "o.json")))
    assert "not valid JSON at byte" in err


def test_prep_keeps_the_complete_records_of_a_cut_array_and_says_so_in_one_line(tmp_path, capsys):
    from llama3zh_dist.config import load_config
    from llama3zh_dist.data.prep import prepare_dataset

    rows = [{"id": f"c{i}", "conversations": [{"from": "human", "value": f"第{i}个问题：{'天气' * i}怎么样？"},
                                              {"from": "gpt", "value": f"第{i}个回答：{'晴朗' * i}。"}]} for i in range(1, 13)]
    text = json.dumps(rows, ensure_ascii=False)
    p = tmp_path / "sharegpt_cut.json"
    p.write_text(text[: len(text) - 40])  # the last record is cut
    cfg = load_config(["model=tiny", "data=sample"])
    OmegaConf.set_struct(cfg, False)
    cfg.data.sources = {"sg": {"format": "sharegpt", "files": [str(p)]}}
    cfg.data.out_dir = str(tmp_path / "out")
    cfg.data.max_seq_len = 512
    cfg.data.max_reject_fraction = 0.1
    cfg.data.ray.workers = 0
    cfg.data.clean.near_dedup.enabled = False
    out = prepare_dataset(cfg)
    report = json.loads((out / "data_report.json").read_text())
    s = report["sources"]["sg"]
    assert (s["read"], s["kept"], s["rejected"], s["by_reason"]) == (12, 11, 1, {"bad_json": 1})
    assert len(s["read_errors"]) == 1 and "11 complete records read" in s["read_errors"][0]
    (rej,) = [json.loads(x) for x in (out / "rejects.jsonl").read_text().splitlines()]
    assert rej["line"] == 12 and "truncated JSON array" in rej["detail"] and "from byte" in rej["detail"]
    lines = [x for x in capsys.readouterr().out.splitlines() if "truncated JSON array" in x]
    assert len(lines) == 1 and "sharegpt_cut.json" in lines[0]
