"""The planner's model-state bytes per rank equal what a 2-rank ZeRO-3 run really holds (gloo, CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from _job import run_ranks
from llama3zh_dist.config import load_config
from llama3zh_dist.plan.memory import ZeroSettings, model_states
from llama3zh_dist.plan.shapes import model_shape

pytestmark = pytest.mark.slow
PROBE = Path(__file__).resolve().parent / "_model_states_probe.py"
BASE = ["+experiment=quickstart", "logger.mode=disabled"]
# The quickstart's tiny model and one with twice the width, half the depth and untied embeddings.
VARIANTS = [[], ["model.arch.hidden_size=256", "model.arch.intermediate_size=768", "model.arch.num_hidden_layers=2",
                 "model.arch.num_attention_heads=8", "model.arch.tie_word_embeddings=false"]]


def test_predicted_model_state_bytes_equal_the_bytes_two_zero3_ranks_hold(tmp_path):
    from llama3zh_dist.deepspeed_config import build_deepspeed_config

    env = {"PROBE_OUT": str(tmp_path), "PROBE_VARIANTS": json.dumps(VARIANTS)}
    rc, out = run_ranks(PROBE, 2, BASE, env=env, log=tmp_path / "probe.log")
    assert rc == 0, out[-4000:]
    for k, extra in enumerate(VARIANTS):
        cfg = load_config([*BASE, *extra])
        shape, _ = model_shape(cfg)
        z = ZeroSettings.from_ds_config(build_deepspeed_config(cfg, 2), cfg.model.dtype)
        predicted = model_states(shape, z, 2)["partitioned_per_rank"]
        for rank in (0, 1):
            held = json.loads((tmp_path / f"rank{rank}-{k}.json").read_text())
            assert held["numel"] == shape.total_params
            assert held["moments"] > 0, "optimizer state not created"
            assert held["model_states"] == predicted, (k, rank, held, predicted)
