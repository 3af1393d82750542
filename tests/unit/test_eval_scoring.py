"""Scoring details: forward padding for ZeRO-3 ranks, one forward per item, multi-token choices."""

from __future__ import annotations

import pytest
import torch

from _eval_helpers import BUNDLED_MC, make_model_folder
from llama3zh_dist.eval.benchmarks import Benchmark
from llama3zh_dist.eval.scoring import Probe, build_probes, choice_requests, run_probes


@pytest.fixture(scope="module")
def model_and_tok(module_tmp):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = make_model_folder(module_tmp("scoring") / "model")
    return AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)


def test_a_rank_with_fewer_items_pads_to_the_same_number_of_forwards(model_and_tok):
    model, tok = model_and_tok
    b = Benchmark("cmmlu", str(BUNDLED_MC))
    items = b.items()[:3]
    probes = [p for i, it in enumerate(items) for p in build_probes(i, choice_requests(tok, b, it, 0, False), 2048)]
    assert len(probes) == 3  # the four one-token letters share one forward
    calls = []
    handle = model.register_forward_hook(lambda *a: calls.append(1))
    try:
        alone = run_probes(model, probes, "cpu")
        n_alone = len(calls)
        padded = run_probes(model, probes, "cpu", all_reduce_max=lambda n: n + 4)
    finally:
        handle.remove()
    assert n_alone == 3 and len(calls) - n_alone == 7
    assert padded == alone


def test_multi_token_choices_score_one_forward_per_choice(model_and_tok):
    model, tok = model_and_tok
    ctx = tok.encode("问题：天空是什么颜色？答案：")
    reqs = {"A": (ctx, tok.encode("蓝色的天空", add_special_tokens=False)), "B": (ctx, tok.encode("红", add_special_tokens=False)),
            "C": (ctx, tok.encode("绿色", add_special_tokens=False)), "D": (ctx, tok.encode("黄", add_special_tokens=False))}
    probes = build_probes(0, reqs, 2048)
    assert len(probes) == 4
    scores = run_probes(model, probes, "cpu")[0]
    with torch.no_grad():  # the sum of the continuation's token log-probabilities, computed directly
        full = torch.tensor([ctx + reqs["A"][1]])
        logp = torch.log_softmax(model(full).logits[0].float(), -1)
        want = sum(float(logp[len(ctx) - 1 + j, t]) for j, t in enumerate(reqs["A"][1]))
    assert scores["A"] == pytest.approx(want, abs=1e-5)


def test_long_contexts_are_left_truncated_like_the_harness():
    probes = build_probes(0, {c: (list(range(10)), [100 + i]) for i, c in enumerate("ABCD")}, 4)
    assert probes[0].input_ids == [6, 7, 8, 9] and probes[0].choices["B"] == (3, [101])
    (p,) = [x for x in build_probes(0, {"A": (list(range(10)), [50, 51])}, 4)]
    assert p.input_ids == [7, 8, 9, 50] and p.choices["A"] == (2, [50, 51]) and p.keep == 2
    assert isinstance(p, Probe)
