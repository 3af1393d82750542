"""How well the quickstart model learned: ask its training questions in one-shot chat (greedy).

    python bench/bench_quickstart_recall.py [run.dir=runs/quickstart]

Prints, per question, whether the answer starts with the first 10 characters of the trained
answer, and the total (the quickstart acceptance asks for at least 8 of 10).
"""
import sys

from llama3zh_dist.chat import ChatModel, resolve_model_folder
from llama3zh_dist.config import load_config
from llama3zh_dist.quickstart_check import quickstart_pairs


def main() -> None:
    argv = ["+experiment=quickstart", *sys.argv[1:]]
    cfg = load_config(argv)
    chat = ChatModel(resolve_model_folder(cfg, argv), cfg)
    pairs = quickstart_pairs()
    hits = 0
    for q, a in pairs:
        got = chat.answer([{"role": "user", "content": q}])
        ok = got.startswith(a[:10])
        hits += ok
        print(f"{'ok ' if ok else 'MISS'} {q[:24]!r:30} -> {got[:30]!r}")
    print(f"recalled {hits}/{len(pairs)} (first 10 characters of the trained answer)")


if __name__ == "__main__":
    main()
