"""Packing efficiency (real tokens / row slots) of best-fit-decreasing at max_seq_len 4096 and 8192.

    .venv/bin/python bench/bench_packing.py [--samples 200000] [--seed 0]

Synthetic length distribution of Chinese chat SFT data (token counts with the Llama 3 tokenizer,
template included), a mixture modelled on the corpora this project targets:

- 35%  short single-turn Q&A (ruozhiba / Alpaca style): lognormal, median 140 tokens, sigma 0.6
- 25%  long single answers (Zhihu-KOL style): lognormal, median 650 tokens, sigma 0.8
- 25%  multi-turn chats (ShareGPT / Firefly style): 2-8 turns (geometric), each exchange
       lognormal median 220 tokens, sigma 0.7, plus a 30-token system prompt in a third of them
- 15%  notes / posts (xiaohongshu style): lognormal, median 420 tokens, sigma 0.5

Samples longer than max_seq_len are truncated to it (what data.overlong=truncate bounds them to).
Compared against first-fit-decreasing, one sample per row, and padding to the longest sample of
random micro-batches of 8 (the classic "pad to batch max" collator).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llama3zh_dist.data.packing import best_fit_decreasing, packing_efficiency  # noqa: E402


def chinese_chat_lengths(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    kind = rng.choice(4, size=n, p=[0.35, 0.25, 0.25, 0.15])
    out = np.empty(n, dtype=np.int64)
    m = kind == 0
    out[m] = rng.lognormal(np.log(140), 0.6, m.sum())
    m = kind == 1
    out[m] = rng.lognormal(np.log(650), 0.8, m.sum())
    m = kind == 2
    turns = np.minimum(rng.geometric(0.45, m.sum()) + 1, 8)
    per = [rng.lognormal(np.log(220), 0.7, t).sum() for t in turns]
    sys_prompt = np.where(rng.random(m.sum()) < 1 / 3, 30, 0)
    out[m] = np.asarray(per) + sys_prompt
    m = kind == 3
    out[m] = rng.lognormal(np.log(420), 0.5, m.sum())
    return np.maximum(out, 12)


def first_fit_decreasing(lengths, cap):
    order = np.argsort(-lengths, kind="stable")
    rooms: list[int] = []
    bins: list[list[int]] = []
    for i in order:
        n = lengths[i]
        for b, r in enumerate(rooms):
            if r >= n:
                rooms[b] -= n
                bins[b].append(int(i))
                break
        else:
            rooms.append(cap - n)
            bins.append([int(i)])
    return bins


def pad_to_batch_max(lengths, batch=8, seed=0):
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(lengths))
    real = slots = 0
    for k in range(0, len(perm), batch):
        b = lengths[perm[k : k + batch]]
        real += b.sum()
        slots += b.max() * len(b)
    return real / slots


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=200_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ffd-samples", type=int, default=20_000, help="FFD is O(n*bins): run it on a subset")
    args = ap.parse_args()
    raw = chinese_chat_lengths(args.samples, args.seed)
    print(f"synthetic Chinese chat lengths: n={len(raw):,} median={np.median(raw):.0f} mean={raw.mean():.0f} "
          f"p95={np.percentile(raw, 95):.0f} max={raw.max()}")
    for cap in (4096, 8192):
        lengths = np.minimum(raw, cap)
        t = time.perf_counter()
        bins = best_fit_decreasing(lengths, cap)
        dt = time.perf_counter() - t
        eff = packing_efficiency(lengths, bins, cap)
        sub = lengths[: args.ffd_samples]
        ffd = packing_efficiency(sub, first_fit_decreasing(sub, cap), cap)
        bfd_sub = packing_efficiency(sub, best_fit_decreasing(sub, cap), cap)
        print(
            f"max_seq_len={cap}: best-fit-decreasing {eff:.4%} ({len(bins):,} rows, {len(lengths) / len(bins):.1f} samples/row, "
            f"{dt:.2f}s for {len(lengths):,} samples) | on {len(sub):,} samples: BFD {bfd_sub:.4%}, FFD {ffd:.4%} | "
            f"one sample per row {lengths.sum() / (len(lengths) * cap):.2%} | pad to batch max (8) {pad_to_batch_max(lengths):.2%}"
        )


if __name__ == "__main__":
    main()
