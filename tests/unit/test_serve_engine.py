"""The batched engine answers every request exactly as plain ``generate`` would, whatever joins or
leaves the batch meanwhile: left padding, cache merging of late arrivals, rows ending at their stop
token or their length, cancelled rows dropping out at once."""

from __future__ import annotations

import threading

import torch

from llama3zh_dist.serve.engine import FINISH_CANCELLED, FINISH_LENGTH, FINISH_STOP, BatchedEngine, GenRequest

STOP = 7


def _model():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      initializer_range=0.5)  # sharp attention: positions and masks matter to the argmax
    return LlamaForCausalLM(cfg).eval()


def _reference(model, prompt, n):
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False, eos_token_id=STOP,
                             pad_token_id=0, temperature=None, top_p=None, top_k=None)
    return out[0, len(prompt):].tolist()


class _Collect:
    def __init__(self, prompt, n, gate=None, cancel_after=None):
        self.tokens, self.done = [], threading.Event()
        self.reason = None
        self.gate, self.cancel_after = gate, cancel_after
        self.req = GenRequest(prompt, n, on_token=self.token, on_finish=self.finish)

    def token(self, t):
        self.tokens.append(t)
        if self.gate is not None and len(self.tokens) == 2:
            self.gate.set()  # let the next request arrive while this one runs
        if self.cancel_after is not None and len(self.tokens) == self.cancel_after:
            self.req.cancel()

    def finish(self, reason):
        self.reason = reason
        self.done.set()


def test_batched_engine_equals_generate_with_late_arrivals_and_rows_leaving():
    model = _model()
    engine = BatchedEngine(model, [STOP], pad_id=0, max_concurrent=4, max_queue=8)
    rng = torch.Generator().manual_seed(1)
    prompts = [torch.randint(8, 96, (int(n),), generator=rng).tolist() for n in (5, 17, 3, 11, 9, 23)]
    lengths = [12, 6, 20, 9, 15, 4]
    collects = []
    gate = None
    for p, n in zip(prompts, lengths):  # each arrives while the previous ones are mid-answer
        if gate is not None:
            gate.wait()
        gate = threading.Event()
        c = _Collect(p, n, gate)
        collects.append(c)
        engine.submit(c.req)
    for c in collects:
        c.done.wait()
    for c, p, n in zip(collects, prompts, lengths):
        ref = _reference(model, p, n)
        assert c.tokens == ref
        assert c.reason == (FINISH_STOP if ref[-1] == STOP else FINISH_LENGTH)
    assert engine.in_flight == 0


def test_a_cancelled_row_leaves_the_batch_and_the_others_are_unchanged():
    model = _model()
    engine = BatchedEngine(model, [STOP], pad_id=0, max_concurrent=4, max_queue=8)
    a, b = _Collect([10, 11, 12, 13], 30, cancel_after=3), _Collect([20, 21, 22], 12)
    engine.submit(a.req)
    engine.submit(b.req)
    a.done.wait()
    b.done.wait()
    assert a.reason == FINISH_CANCELLED and len(a.tokens) == 3
    assert b.tokens == _reference(model, [20, 21, 22], 12)


def test_sampling_with_a_seed_repeats_and_each_row_samples_on_its_own_generator():
    model = _model()
    engine = BatchedEngine(model, [STOP], pad_id=0, max_concurrent=4, max_queue=8)

    def sampled(seed):
        c = _Collect([30, 31, 32], 16)
        c.req.temperature, c.req.top_p, c.req.seed = 1.0, 0.95, seed
        return c

    runs = [sampled(5), sampled(5), sampled(6)]  # in one batch: rows must not share a random stream
    for c in runs:
        engine.submit(c.req)
    for c in runs:
        c.done.wait()
    assert runs[0].tokens == runs[1].tokens != runs[2].tokens
    assert runs[0].tokens != _reference(model, [30, 31, 32], 16)  # really sampled, not greedy
