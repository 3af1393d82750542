"""Compare-mode votes: one JSON line per vote in ``serve.out_dir/votes.jsonl`` (SPEC "Serving")."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

VOTES_FILE = "votes.jsonl"
PAIRS_FILE = "preference_pairs.jsonl"
VOTES = ("a", "b", "tie", "both_bad")


class VoteBook:
    """Appends votes; each line is written whole and fsynced, so a crash never leaves half a vote."""

    def __init__(self, out_dir: Path):
        self.path = Path(out_dir) / VOTES_FILE
        self._lock = threading.Lock()

    def append(self, messages: list[dict], a: dict, b: dict, sampling: dict, vote: str) -> dict:
        if vote not in VOTES:
            raise ValueError(f"vote {vote!r}: use one of {', '.join(VOTES)}")
        line = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "messages": messages,
                "a": {"model": a["model"], "answer": a["answer"]}, "b": {"model": b["model"], "answer": b["answer"]},
                "sampling": sampling, "vote": vote}
        data = (json.dumps(line, ensure_ascii=False) + "\n").encode("utf-8")
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
        return line


def read_votes(path: Path) -> list[dict]:
    out = []
    with open(path, encoding="utf-8") as f:
        for n, raw in enumerate(f, 1):
            if raw.strip():
                try:
                    out.append(json.loads(raw))
                except json.JSONDecodeError:
                    raise ValueError(f"{path}:{n} is not a JSON line") from None
    return out


def to_pairs(votes: list[dict]) -> list[dict]:
    """Votes ``a`` / ``b`` as preference pairs in TRL's conversational layout (``prompt`` /
    ``chosen`` / ``rejected`` message lists), which LLaMA-Factory reads as a sharegpt-style
    ranking dataset; ties and both-bad carry no preference and are left out."""
    pairs = []
    for v in votes:
        if v.get("vote") not in ("a", "b"):
            continue
        win, lose = (v["a"], v["b"]) if v["vote"] == "a" else (v["b"], v["a"])
        pairs.append({"prompt": v["messages"],
                      "chosen": [{"role": "assistant", "content": win["answer"]}],
                      "rejected": [{"role": "assistant", "content": lose["answer"]}],
                      "chosen_model": win["model"], "rejected_model": lose["model"]})
    return pairs
