"""The model card's header and training figures from a run's files (written here in the run's formats)."""

from __future__ import annotations

import json

import pytest


def _run(tmp_path, model_path):
    from omegaconf import OmegaConf

    run = tmp_path / "run"
    (run / "export").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create({"run": {"name": "zh8b"}, "model": {"path": model_path},
                                     "trainer": {"lr": 1e-5, "warmup_ratio": 0.03, "min_lr_ratio": 0.1,
                                                 "global_batch_size": 64, "micro_batch_size": 2},
                                     "data": {"max_seq_len": 4096},
                                     "cluster": {"nodes": 2, "nproc_per_node": 8, "device": "cuda"}}),
                   run / "config.yaml")
    lines = [{"step": 1, "loss": 2.0, "tokens": 1000, "supervised_tokens": 600, "tokens_per_s": 500.0,
              "world_size": 16, "time": 100.0},
             {"step": 2, "loss": 1.8, "tokens": 1100, "supervised_tokens": 700, "tokens_per_s": 550.0,
              "world_size": 16, "time": 102.0},
             {"step": 2, "val_loss": 1.5, "time": 103.0},
             # a resumed run writes step 2 again: counted once
             {"step": 2, "loss": 1.8, "tokens": 1100, "supervised_tokens": 700, "tokens_per_s": 550.0,
              "world_size": 16, "time": 110.0},
             {"step": 3, "loss": 1.7, "tokens": 900, "supervised_tokens": 500, "tokens_per_s": 450.0,
              "world_size": 16, "time": 112.0},
             {"step": 3, "val_loss": 1.6, "time": 113.0}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    (run / "export" / "config.json").write_text(json.dumps({"num_hidden_layers": 32, "hidden_size": 4096,
                                                             "torch_dtype": "bfloat16"}))
    return run


def test_training_figures_count_each_step_once_and_keep_final_and_best_validation_loss(tmp_path):
    from llama3zh_dist.export.card import training_summary

    t = training_summary(_run(tmp_path, "meta-llama/Meta-Llama-3-8B"))
    assert t["steps"] == 3 and t["tokens"] == 3000 and t["supervised_tokens"] == 1800
    assert t["final_val_loss"] == 1.6 and (t["best_val_loss"], t["best_val_step"]) == (1.5, 2)
    assert t["wall_seconds"] == pytest.approx(112.0 - 100.0 + 2.0)
    assert t["world_size"] == 16


def test_card_header_names_the_base_model_and_parses_with_huggingface_hub(tmp_path):
    from huggingface_hub import ModelCard

    from llama3zh_dist.export.card import write_card

    run = _run(tmp_path, "meta-llama/Meta-Llama-3-8B")
    card = ModelCard.load(write_card(run / "export", run))
    meta = card.data.to_dict()
    assert meta["base_model"] == "meta-llama/Meta-Llama-3-8B" and meta["language"] == ["zh", "en"]
    assert "model-index" not in meta  # no evaluation yet
    assert "| nodes x GPUs | 2 x 8 GPUs (16 ranks, ZeRO-3) |" in card.text
    assert "| best validation loss | 1.5000 (step 2) |" in card.text
    assert "README.md" in (run / "export" / "SHA256SUMS").read_text()
