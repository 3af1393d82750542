"""``python -m llama3zh_dist.prep [overrides]``: prepare the dataset of ``cfg.data`` and print its report.

    python -m llama3zh_dist.prep                               # the bundled sample (data=sample)
    python -m llama3zh_dist.prep data=quickstart
    python -m llama3zh_dist.prep data=files data.files=[a.jsonl] data.format=sharegpt data.max_seq_len=4096
"""

from __future__ import annotations

import json
import sys

from .errors import exits_cleanly_on_user_error
from .process_exit import exit_process


@exits_cleanly_on_user_error
def main(argv: list[str] | None = None) -> int:
    from .config import load_config
    from .data.prep import prepare_dataset
    from .data.report import format_report

    cfg = load_config(list(sys.argv[1:] if argv is None else argv))
    out = prepare_dataset(cfg)
    report = json.loads((out / "data_report.json").read_text())
    print(format_report(report), flush=True)
    return 0


if __name__ == "__main__":
    exit_process(main())
