"""Training starts from a pretrained checkpoint: a tiny Llama written by ``save_pretrained`` (with
its chat-token rows zeroed, as base Llama 3 ships them) trains with ``model.init=pretrained`` on 2
ZeRO-3 ranks; its step-1 loss is the loss the same weights give outside training, after the same
mean-initialisation of the dead rows, and rank 0's host memory during the load is reported."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from _job import metrics, run

pytestmark = pytest.mark.slow
DEAD = list(range(128002, 128256))  # every special token but <|begin_of_text|> / <|end_of_text|>


@pytest.fixture(scope="module")
def pretrained_folder(module_tmp) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    from llama3zh_dist.llama3.hf_tokenizer import load_tokenizer

    folder = module_tmp("tiny_llama3_base")
    torch.manual_seed(7)
    cfg = LlamaConfig(vocab_size=128256, hidden_size=64, intermediate_size=192, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
                      bos_token_id=128000, eos_token_id=128001, initializer_range=0.05)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        model.model.embed_tokens.weight[DEAD] = 0
        model.lm_head.weight[DEAD] = 0
    model.save_pretrained(folder)
    load_tokenizer(None).save_pretrained(folder)
    return folder


def _loss_outside_training(folder: Path, data_dir: Path) -> float:
    from transformers import AutoModelForCausalLM

    from llama3zh_dist.data.loader import StepBatches
    from llama3zh_dist.model import init_untrained_token_rows, supervised_loss_sum

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="sdpa").eval()
    assert init_untrained_token_rows(model, rank=0) == DEAD
    step1 = StepBatches(data_dir, global_batch_rows=2, micro_batch_size=1, rank=0, world_size=1, seed=42).micro_batches(1)
    with torch.no_grad():
        total = sum(float(supervised_loss_sum(model, m, torch.device("cpu"))) for m in step1)
    return total / sum(m.supervised_tokens for m in step1)


def test_a_pretrained_checkpoint_trains_on_two_zero3_ranks_from_its_own_weights(pretrained_folder, tmp_path):
    run_dir, data_dir = tmp_path / "run", tmp_path / "prepared"
    code, out = run(run_dir, data_dir, "model.init=pretrained", f"model.path={pretrained_folder}",
                    "trainer.max_steps=2", "checkpoint.every_steps=0")
    assert code == 0, out[-4000:]
    records = metrics(run_dir)
    expected = _loss_outside_training(pretrained_folder, data_dir)
    assert records[0]["step"] == 1
    assert abs(records[0]["loss"] - expected) <= 1e-5 * expected, (records[0]["loss"], expected)
    assert records[1]["loss"] < records[0]["loss"]
    # the dead rows were found and logged
    logged = re.search(r"untrained embedding rows initialised from the mean embedding: (\d+) \(ids \[([\d, ]+)", out)
    assert logged and int(logged.group(1)) == len(DEAD) and logged.group(2).startswith("128002, 128003")
    # rank 0's host memory during the load, against the checkpoint size
    load = re.search(r"loaded .* \(([\d.]+) GB checkpoint\): rank 0 host memory peak \+([\d.]+) GB anonymous", out)
    assert load, out[-3000:]
    checkpoint_gb, peak_gb = float(load.group(1)), float(load.group(2))
    ckpt_bytes = sum(f.stat().st_size for f in pretrained_folder.glob("*.safetensors"))
    assert abs(checkpoint_gb - ckpt_bytes / 1e9) < 0.01
    print(f"\nrank 0 host memory during the load: +{peak_gb:.3f} GB anonymous for a {checkpoint_gb:.3f} GB checkpoint")
