"""Score multiple-choice items by the log-likelihood of each answer choice after the prompt.

Tokenisation follows lm-evaluation-harness's causal-LM path exactly, so the figures are theirs:
the continuation is " A" (target delimiter + choice); trailing whitespace of the context moves to
the continuation; ``whole = encode(context + continuation)``, ``context = encode(context)`` and
the continuation's tokens are ``whole[len(context):]``; inputs longer than the model's context
are left-truncated to ``(context + continuation)[-(max_len + 1):][:-1]``. The accuracy is the
harness's ``acc``: the choice with the highest summed log-probability (the first on a tie).

With ``chat_template=true`` the same prompt text is the user turn of a Llama 3 chat, rendered by
the training template with the assistant header open, and the choices are the bare letters the
assistant would write ("A").

One forward per item when every choice is one token after a shared context (the usual case: the
four letters), else one per choice; batch size 1 and ``logits_to_keep`` so that no padding changes
the numbers and the 128,256-wide logits exist only for the scored positions. ``run_probes`` can run
on a ZeRO-3 engine: every rank makes the same number of forward calls (see ``forward_count``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from .benchmarks import LETTERS, Benchmark, MCItem, prompt_text


@dataclass
class Probe:
    """One forward pass: ``input_ids`` and, per choice, where its tokens start and what they are."""

    item: int                                  # position of the item in the caller's list
    input_ids: list[int]
    choices: dict[str, tuple[int, list[int]]]  # letter -> (first scored position, target tokens)

    @property
    def keep(self) -> int:
        """How many trailing positions' logits the choices need."""
        return max(len(self.input_ids) - start for start, _ in self.choices.values())


def encode_pair(tok, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-evaluation-harness's ``_encode_pair`` for causal models (same tokenizer call)."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = tok.encode(context + continuation)
    ctx = tok.encode(context)
    return ctx, whole[len(ctx):]


def choice_requests(tok, bench: Benchmark, item: MCItem, shots: int, chat_template: bool) -> dict[str, tuple[list[int], list[int]]]:
    """letter -> (context ids, continuation ids)."""
    text = prompt_text(bench, item, shots)
    if not chat_template:
        return {c: encode_pair(tok, text, " " + c) for c in LETTERS}
    from ..llama3.chat_format import encode_dialog, get_encoder

    ctx = encode_dialog(tok, [{"role": "user", "content": text}], add_generation_prompt=True)
    enc = get_encoder(tok)
    return {c: (ctx, enc.encode_text(c)) for c in LETTERS}


def build_probes(item_pos: int, requests: dict[str, tuple[list[int], list[int]]], max_len: int) -> list[Probe]:
    contexts = {tuple(ctx) for ctx, _ in requests.values()}
    if len(contexts) == 1 and all(len(cont) == 1 for _, cont in requests.values()):
        ctx = next(iter(requests.values()))[0][-max_len:]
        return [Probe(item_pos, list(ctx), {c: (len(ctx) - 1, cont) for c, (_, cont) in requests.items()})]
    probes = []
    for c, (ctx, cont) in requests.items():
        full = (ctx + cont)[-(max_len + 1):]
        inp = full[:-1]
        probes.append(Probe(item_pos, inp, {c: (len(inp) - len(cont), cont)}))
    return probes


def _forward_logprobs(model, input_ids: list[int], keep: int, device) -> torch.Tensor:
    """Log-probabilities [keep, vocab] (fp32) of the last ``keep`` positions."""
    ids = torch.tensor([input_ids], dtype=torch.long, device=device)
    out = model(input_ids=ids, logits_to_keep=keep, use_cache=False)
    return torch.log_softmax(out.logits[0, -keep:].float(), dim=-1)


def forward_count(n_local: int, all_reduce_max: Callable[[int], int] | None) -> int:
    """The number of forward calls this rank makes: the most any rank needs. Under ZeRO-3 each
    forward gathers every layer's parameters collectively; a rank that stopped early would leave the
    others waiting in the gather for ever."""
    return all_reduce_max(n_local) if all_reduce_max else n_local


@torch.no_grad()
def run_probes(model, probes: Sequence[Probe], device, *, all_reduce_max=None, dummy_id: int = 0,
               progress: Callable[[int, int], None] | None = None) -> dict[int, dict[str, float]]:
    """item position -> {letter: summed log-likelihood}; padding forwards after the local probes."""
    total = forward_count(len(probes), all_reduce_max)
    out: dict[int, dict[str, float]] = {}
    for i in range(total):
        if i >= len(probes):
            _forward_logprobs(model, [dummy_id], 1, device)  # keeps the ranks' collectives in step
            continue
        p = probes[i]
        logp = _forward_logprobs(model, p.input_ids, p.keep, device)
        base = len(p.input_ids) - p.keep
        scores = out.setdefault(p.item, {})
        for c, (start, toks) in p.choices.items():
            rows = torch.arange(start - base, start - base + len(toks), device=logp.device)
            scores[c] = float(logp[rows, torch.tensor(toks, device=logp.device)].double().sum())
        if progress:
            progress(i + 1, total)
    return out


def predicted(loglik: dict[str, float]) -> str:
    """The harness's argmax: the first letter with the highest log-likelihood."""
    best = LETTERS[0]
    for c in LETTERS[1:]:
        if loglik[c] > loglik[best]:
            best = c
    return best
