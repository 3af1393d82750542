"""Chat samples: greedy answers to a bundled set of Chinese conversations, with automatic checks.

A prompt file is JSONL, one conversation a line:
``{"id": ..., "category": ..., "turns": ["user turn 1", "user turn 2", ...], "identity": true?}``
(``{"prompt": "..."}`` is a one-turn shorthand). The model answers each user turn in order, its own
earlier answers staying in the conversation, so a multi-turn prompt tests whether it refers back.
Prompts are rendered by the training template (token for token the training format) with the
assistant header open; generation is greedy and stops at ``<|eot_id|>`` / ``<|end_of_text|>``.

Checks per answer: stopped at ``<|eot_id|>`` within ``max_new_tokens``; share of Chinese (Han)
characters among its non-space characters; distinct-2 (distinct character bigrams / bigrams: low
means it repeats itself, whitespace included); for conversations marked ``identity``, whether the answer names the
configured assistant (``data.clean.identity.name``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from ..config import resolve_path
from ..errors import UserError

HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


def load_prompts(files) -> list[dict]:
    convs: list[dict] = []
    for f in files:
        path = resolve_path(str(f))
        if not path.is_file():
            raise UserError(f"eval.chat.prompts: {path} does not exist (JSONL, one {{\"turns\": [...]}} per line)")
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{n}: not JSON ({e})") from None
            turns = rec.get("turns") or ([rec["prompt"]] if rec.get("prompt") else None)
            if not turns or not all(isinstance(t, str) and t.strip() for t in turns):
                raise UserError(f"{path}:{n}: needs \"turns\": [non-empty strings] or \"prompt\": \"...\"")
            convs.append({"id": str(rec.get("id", f"{path.stem}-{n}")), "category": rec.get("category", "custom"),
                          "turns": turns, "identity": bool(rec.get("identity", False))})
    return convs


def chinese_share(text: str) -> float:
    chars = [c for c in text if not c.isspace()]
    return sum(bool(HAN.match(c)) for c in chars) / len(chars) if chars else 0.0


def distinct_2(text: str) -> float:
    grams = list(zip(text, text[1:]))  # whitespace counts: "\n\n\n..." is repetition too
    return len(set(grams)) / len(grams) if grams else 1.0


def _generate(model, tok, ids: list[int], stop_ids: list[int], max_new_tokens: int, device, synced: bool) -> list[int]:
    inp = torch.tensor([ids], dtype=torch.long, device=device)
    out = model.generate(input_ids=inp, attention_mask=torch.ones_like(inp), max_new_tokens=max_new_tokens,
                         do_sample=False, temperature=None, top_p=None, top_k=None, eos_token_id=stop_ids,
                         pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else stop_ids[0],
                         synced_gpus=synced)
    return out[0, len(ids):].tolist()


@torch.no_grad()
def generate_conversation(model, tok, conv: dict, *, max_new_tokens: int, identity_name: str | None,
                          device, synced: bool = False) -> list[dict]:
    """One record per assistant turn of ``conv`` (``generations.jsonl`` lines)."""
    from ..llama3.chat_format import encode_dialog

    eot = tok.convert_tokens_to_ids("<|eot_id|>")
    stop_ids = [i for i in (eot, tok.convert_tokens_to_ids("<|end_of_text|>")) if i is not None]
    messages: list[dict] = []
    records = []
    for turn, user in enumerate(conv["turns"]):
        messages.append({"role": "user", "content": user})
        ids = encode_dialog(tok, messages, add_generation_prompt=True)
        new = _generate(model, tok, ids, stop_ids, max_new_tokens, device, synced)
        stopped = eot in new
        if stopped:
            new = new[: new.index(eot)]
        answer = tok.decode(new, skip_special_tokens=True)
        # An empty answer cannot be a turn of the template; keep the conversation well-formed.
        messages.append({"role": "assistant", "content": answer.strip() or "…"})
        rec = {"id": conv["id"], "category": conv["category"], "turn": turn, "prompt": user, "answer": answer,
               "new_tokens": len(new) + int(stopped), "stopped_at_eot": stopped,
               "chinese_share": chinese_share(answer), "distinct_2": distinct_2(answer)}
        if conv["identity"] and identity_name:
            rec["identity_ok"] = identity_name in answer
        records.append(rec)
    return records


def summarize_chat(records: list[dict]) -> dict:
    n = len(records)
    ident = [r["identity_ok"] for r in records if "identity_ok" in r]

    def mean(key):
        return sum(float(r[key]) for r in records) / n if n else None

    return {"n": n, "stopped_at_eot": mean("stopped_at_eot"), "chinese_share": mean("chinese_share"),
            "distinct_2": mean("distinct_2"), "identity_ok": (sum(ident) / len(ident)) if ident else None}


TABLE_COLUMNS = ["id", "category", "turn", "prompt", "answer", "stopped_at_eot", "chinese_share", "distinct_2",
                 "identity_ok"]


def wandb_table(records: list[dict]):
    import wandb

    return wandb.Table(columns=TABLE_COLUMNS, data=[[r.get(c) for c in TABLE_COLUMNS] for r in records])


def default_prompt_file() -> Path:
    return Path(__file__).resolve().parents[2] / "data" / "eval" / "chat_prompts.jsonl"
