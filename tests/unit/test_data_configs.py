"""conf/data/*.yaml compose, carry the contract keys, and prepare data of the bundled shapes
(files generated here in a stand-in repo root, so the test does not depend on data/sample)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from llama3zh_dist.config import load_config
from llama3zh_dist.data.prep import prepare_dataset
from llama3zh_dist.data.settings import data_config
from llama3zh_dist.data.sources import source_specs

CONTRACT_KEYS = ("name", "out_dir", "max_seq_len", "packing", "max_reject_fraction", "val_fraction")


@pytest.mark.parametrize("name", ["sample", "quickstart", "files"])
def test_dataset_configs_compose_with_the_contract_keys(name):
    extra = ["data.files=[x.jsonl]", "data.format=sharegpt"] if name == "files" else []
    cfg = load_config(["model=tiny", f"data={name}"] + extra)
    for k in CONTRACT_KEYS:
        assert k in cfg.data, k
    s = data_config(cfg.data)
    assert s.clean.near_dedup.enabled is True and s.ray.min_rows > 0
    if name == "quickstart":
        assert cfg.data.max_seq_len == 512 and cfg.data.packing is True
        assert sorted(cfg.data.sources) == ["firefly", "ruozhiba", "sharegpt_zh", "zhihu"]
    if name == "sample":
        assert cfg.data.sources.xiaohongshu.format == "columns"
        assert len(cfg.data.sources) == 5


def _bundled_shapes(root: Path) -> None:
    d = root / "data" / "sample"
    (d / "quickstart").mkdir(parents=True)
    rows = {
        "sharegpt_zh.jsonl": {"id": "s1", "conversations": [{"from": "human", "value": "你好"}, {"from": "gpt", "value": "你好！"}]},
        "ruozhiba_alpaca.jsonl": {"instruction": "为什么鱼不会淹死？", "input": "", "output": "因为鱼用鳃呼吸。"},
        "zhihu_kol.jsonl": {"INSTRUCTION": "如何学习编程？", "RESPONSE": "多写代码，多读代码。"},
        "firefly.jsonl": {"conversation_id": 1, "conversation": [{"human": "写一句诗", "assistant": "床前明月光。"}]},
        "xiaohongshu.jsonl": {"id": "x1", "title": "周末露营攻略", "content": "带好帐篷和防蚊液⛺️"},
    }
    for name, row in rows.items():
        for folder in (d, d / "quickstart"):
            (folder / name).write_text(json.dumps(row, ensure_ascii=False) + "\n")


@pytest.mark.parametrize("name", ["sample", "quickstart"])
def test_bundled_dataset_configs_prepare_from_any_directory(name, tmp_path, monkeypatch):
    from llama3zh_dist.data import sources

    repo = tmp_path / "repo"
    _bundled_shapes(repo)
    monkeypatch.setattr(sources, "repo_root", lambda: repo)
    monkeypatch.chdir(tmp_path)  # relative data paths resolve against the repo root
    cfg = load_config(["model=tiny", f"data={name}", f"data.out_dir={tmp_path / 'out'}"])
    specs = source_specs(cfg.data)
    assert all(Path(f).is_relative_to(repo) for s in specs for f in s.files)
    out = prepare_dataset(cfg)
    report = json.loads((out / "data_report.json").read_text())
    assert report["rejected"] == 0 and report["kept"] == len(specs)
    if name == "sample":
        assert report["sources"]["xiaohongshu"]["kept"] == 1


def test_files_config_needs_format_and_files():
    from llama3zh_dist.errors import UserError

    with pytest.raises(UserError, match="data.files|data.format"):
        load_config(["model=tiny", "data=files"])
    with pytest.raises(UserError, match="data.format='yaml'"):  # rejected while composing
        load_config(["model=tiny", "data=files", "data.files=[x.jsonl]", "data.format=yaml"])
    cfg = load_config(["model=tiny", "data=files", "data.files=[x.jsonl]", "data.format=sharegpt"])
    cfg.data.format = "yaml"  # and by the source reader, for configs built in code
    with pytest.raises(UserError, match="data.format='yaml'"):
        source_specs(cfg.data)
    assert OmegaConf.select(cfg, "data.columns") is None


@pytest.mark.parametrize("key,value", [("max_seq_len", 8), ("train_on", "first_assistant"), ("overlong", "wrap"),
                                       ("max_reject_fraction", 1.5), ("val_fraction", 1.0)])
def test_prep_refuses_what_the_schema_refuses_even_when_set_after_composition(key, value, tmp_path):
    from llama3zh_dist.errors import UserError

    cfg = load_config(["model=tiny", "data=files", "data.files=[x.jsonl]", "data.format=sharegpt",
                       f"data.out_dir={tmp_path / 'out'}"])
    OmegaConf.update(cfg, "data." + key, value)
    with pytest.raises(UserError, match=rf"data\.{key}={value!r}"):
        prepare_dataset(cfg)
    assert not (tmp_path / "out").exists()
