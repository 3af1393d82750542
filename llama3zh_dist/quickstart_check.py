"""The (question, answer) pairs of the bundled quickstart conversations, read with the real loaders.

Used by the quickstart recall benchmark and test: the exported model is asked each question and
must answer with the start of the answer it was trained on.
"""

from __future__ import annotations

from .config import load_config


def quickstart_pairs(overrides: list[str] | None = None) -> list[tuple[str, str]]:
    """First user turn and first assistant answer of every quickstart conversation, in file order."""
    import json

    from .data.sources import iter_file_rows, source_specs, to_messages

    cfg = load_config(["+experiment=quickstart", *(overrides or [])])
    pairs = []
    for spec in source_specs(cfg.data):
        for path in spec.files:
            for _, raw in iter_file_rows(path):
                msgs = [m for m in to_messages(json.loads(raw), spec)[0] if m["role"] != "system"]
                if len(msgs) >= 2 and msgs[0]["role"] == "user" and msgs[1]["role"] == "assistant":
                    pairs.append((msgs[0]["content"], msgs[1]["content"]))
    return pairs
