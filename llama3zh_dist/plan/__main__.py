"""``python -m llama3zh_dist.plan [overrides]``: memory, step time and cost of a config, before queueing.

``plan.format=json`` (or ``--json``) prints one JSON object instead of the table. Exit 0 when the
config fits (or there is no GPU memory to check against), 2 when it cannot fit.
"""

from __future__ import annotations

import sys

from ..config import load_config
from ..errors import exits_cleanly_on_user_error
from ..process_exit import exit_process
from . import fix_lines, make_plan
from .report import table, to_json


@exits_cleanly_on_user_error
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    as_json = "--json" in argv
    cfg = load_config([a for a in argv if a != "--json"])
    plan = make_plan(cfg)
    if as_json or cfg.plan.format == "json":
        print(to_json(plan))
    else:
        print(table(plan))
        if plan["fits"] is False:
            print("\n".join(fix_lines(cfg)))
    return 2 if plan["fits"] is False else 0


if __name__ == "__main__":
    exit_process(main())
