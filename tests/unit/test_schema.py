"""The typed config schema rejects an unworkable value while composing, naming the key and the reason."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from llama3zh_dist.config import load_config
from llama3zh_dist.errors import UserError
from llama3zh_dist.schema import SCHEMAS

ROOT = Path(__file__).resolve().parents[2]

BAD_VALUES = [
    ("data.max_seq_len=0", "data.max_seq_len=0", "chat header"),
    ("export.dtype=int8", "export.dtype='int8'", "floating point"),
    ("trainer.lr=-1", "trainer.lr=-1.0", "positive"),
    ("trainer.warmup_ratio=1.5", "trainer.warmup_ratio=1.5", "[0, 1)"),
    ("model.attn_implementation=flash", "model.attn_implementation='flash'", "sdpa"),
    ("cluster.nproc_per_node=0", "cluster.nproc_per_node=0", "at least one rank"),
    ("cluster.backend=nccl", "cluster.backend='nccl'", "gloo"),
    ("deepspeed.offload_optimizer=nvme", "deepspeed.offload_optimizer='nvme'", "cpu"),
    ("logger.mode=cloud", "logger.mode='cloud'", "offline"),
    ("checkpoint.keep=1", "checkpoint.keep=1", "fallback"),
    ("chat.top_p=0", "chat.top_p=0", "(0, 1]"),
    ("data.clean.near_dedup.threshold=2", "data.clean.near_dedup.threshold=2.0", "Jaccard"),
    ("data.val_fraction=1", "data.val_fraction=1.0", "left to train"),
]


@pytest.mark.parametrize("override,key,reason", BAD_VALUES, ids=[b[0] for b in BAD_VALUES])
def test_an_invalid_value_fails_at_composition_naming_key_and_reason(override, key, reason):
    with pytest.raises(UserError) as e:
        load_config(["+experiment=quickstart", override])
    msg = str(e.value)
    assert msg.startswith(key) and reason in msg and "\n" not in msg


def test_a_wrongly_typed_value_fails_at_composition_naming_the_key():
    with pytest.raises(UserError, match="trainer.lr"):
        load_config(["+experiment=quickstart", "trainer.lr=fast"])


def test_every_section_of_the_composed_tree_has_a_schema():
    cfg = load_config(["+experiment=quickstart"])
    assert set(cfg) <= set(SCHEMAS), f"groups without a schema: {set(cfg) - set(SCHEMAS)}"


def test_the_cli_refuses_an_invalid_value_with_exit_2_before_any_rank_starts(tmp_path):
    r = subprocess.run([sys.executable, "-m", "llama3zh_dist", "+experiment=quickstart", "trainer.lr=-1",
                        f"run.dir={tmp_path}/run"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "trainer.lr=-1.0 is rejected" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "run").exists()
