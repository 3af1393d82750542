"""Model set-up promises that need no process group: untrained special-token rows and the LR schedule."""

from __future__ import annotations

from pathlib import Path

import torch

from llama3zh_dist.config import load_config
from llama3zh_dist.deepspeed_config import build_deepspeed_config, start_lr_schedule
from llama3zh_dist.model import init_untrained_token_rows


def _tiny_llama(vocab: int = 512, tie: bool = False):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tie)
    return LlamaForCausalLM(cfg)


def test_untrained_special_token_rows_get_the_mean_of_the_trained_rows():
    model = _tiny_llama()
    emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    dead = [500, 505, 509]  # like <|start_header_id|>, <|end_header_id|>, <|eot_id|> in a base model
    with torch.no_grad():
        emb[dead] = 0.0
        head[dead] = 1e-9
    before_emb, before_head = emb.detach().clone(), head.detach().clone()
    changed = init_untrained_token_rows(model, rank=0)
    assert changed == dead
    live = [i for i in range(emb.shape[0]) if i not in dead]
    for w, before in ((emb, before_emb), (head, before_head)):
        mean = before[live].mean(dim=0)
        for i in dead:
            assert torch.allclose(w[i], mean)
        assert torch.equal(w[live], before[live])  # trained rows untouched


def test_a_model_without_untrained_rows_is_left_alone():
    model = _tiny_llama(tie=True)
    before = model.get_input_embeddings().weight.detach().clone()
    assert init_untrained_token_rows(model, rank=0) == []
    assert torch.equal(model.get_input_embeddings().weight, before)


def _scheduler_lrs(cfg, steps: int) -> list[float]:
    from deepspeed.runtime.lr_schedules import WarmupCosineLR

    ds = build_deepspeed_config(cfg, world_size=2)
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=float(cfg.trainer.lr))
    sched = WarmupCosineLR(opt, **ds["scheduler"]["params"])
    start_lr_schedule(sched)  # what the trainer does right after deepspeed.initialize
    lrs = []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def test_every_update_has_a_positive_lr_and_the_schedule_spans_max_steps():
    cfg = load_config(["+experiment=quickstart"])
    lrs = _scheduler_lrs(cfg, int(cfg.trainer.max_steps))
    peak, floor = float(cfg.trainer.lr), float(cfg.trainer.lr) * float(cfg.trainer.min_lr_ratio)
    assert all(lr > 0 for lr in lrs)  # no update wasted at lr 0 during warmup
    assert max(lrs) <= peak * (1 + 1e-9) and max(lrs) > 0.95 * peak
    assert abs(lrs[-1] - floor) / floor < 0.05  # cosine reaches the floor at the last step


def test_global_batch_is_micro_batch_times_ranks_times_accumulation():
    from transformers import AutoConfig

    cfg = load_config(["+experiment=full_sft", "data=sample"])
    fixture = Path(__file__).resolve().parents[1] / "fixtures" / "llama3_8b"
    ds = build_deepspeed_config(cfg, world_size=16, model_config=AutoConfig.from_pretrained(fixture))
    assert ds["train_batch_size"] == ds["train_micro_batch_size_per_gpu"] * 16 * ds["gradient_accumulation_steps"]
    assert ds["zero_optimization"]["stage"] == 3
    assert ds["bf16"]["enabled"] and not ds["fp16"]["enabled"]
