"""``python -m llama3zh_dist.serve.pairs [serve.out_dir=... | run.dir=...]``: compare-mode votes
(``votes.jsonl``) to ``preference_pairs.jsonl`` next to it, for TRL's DPOTrainer or LLaMA-Factory
(``ranking: true``, sharegpt columns prompt / chosen / rejected)."""

from __future__ import annotations

import json
import sys

from ..config import load_config
from ..errors import UserError, exits_cleanly_on_user_error
from ..fileio import atomic_write_text
from ..process_exit import exit_process
from .settings import out_dir_for
from .votes import PAIRS_FILE, VOTES_FILE, read_votes, to_pairs


@exits_cleanly_on_user_error
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    cfg = load_config(argv)
    out = out_dir_for(cfg, argv)
    votes_path = out / VOTES_FILE
    if not votes_path.exists():
        raise UserError(f"no votes at {votes_path}: vote in the web chat's compare mode first "
                        "(serve.compare=<second export>), or point serve.out_dir= at the folder that holds votes.jsonl")
    try:
        votes = read_votes(votes_path)
    except ValueError as e:
        raise UserError(str(e)) from None
    pairs = to_pairs(votes)
    atomic_write_text(out / PAIRS_FILE, "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs))
    skipped = len(votes) - len(pairs)
    print(f"{len(pairs)} preference pair(s) from {len(votes)} vote(s) ({skipped} tie/both_bad left out) "
          f"-> {out / PAIRS_FILE}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    exit_process(main())
