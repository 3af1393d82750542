"""Measure the peak resident memory of one export, in a process of its own.

    python tests/distributed/_export_memprobe.py WARM_CKPT CKPT OUT_DIR MAX_SHARD_SIZE [WORKERS] [HOLD_BYTES]

Exports WARM_CKPT once first (imports, tokenizer save/reload, verification code paths: the fixed
overhead, the same for any model size), then resets the peak-RSS counter of this process
(``/proc/self/clear_refs``: VmHWM := VmRSS), exports CKPT and prints one JSON line:
``{"baseline": VmRSS before, "peak": VmHWM after, "largest_tensor_fp32", "total_fp32", ...}`` (bytes).
HOLD_BYTES > 0 is the regression the bound must catch: the first tensor written also fills and keeps a
buffer of that size until the export ends (as a writer that materialised a whole tensor would).
"""

from __future__ import annotations

import json
import math
import pathlib
import sys


def _status(key: str) -> int:
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def main(argv):
    warm, ckpt, out, shard = argv[:4]
    workers = int(argv[4]) if len(argv) > 4 else 4
    hold = int(argv[5]) if len(argv) > 5 else 0
    import gc

    from llama3zh_dist.export import export_checkpoint
    from llama3zh_dist.export.zero3 import Zero3Checkpoint
    from llama3zh_dist.llama3.hf_tokenizer import load_tokenizer

    tok = load_tokenizer(None)
    export_checkpoint(warm, pathlib.Path(out).with_name("warmup-export"), tokenizer=tok, dtype="bfloat16",
                      max_shard_size=shard, workers=workers)
    c = Zero3Checkpoint(ckpt)
    largest = max(math.prod(s.shape) for s in c.sources.values()) * 4
    total = sum(math.prod(s.shape) for s in c.sources.values()) * 4
    del c
    gc.collect()
    if hold:
        import torch

        from llama3zh_dist.export import writer

        kept = []
        real = writer._write_tensor

        def holding(*args):
            if not kept:
                kept.append(torch.ones(hold // 4, dtype=torch.float32))
            return real(*args)

        writer._write_tensor = holding
    pathlib.Path("/proc/self/clear_refs").write_text("5")
    baseline = _status("VmRSS")
    s = export_checkpoint(ckpt, out, tokenizer=tok, dtype="bfloat16", max_shard_size=shard, workers=workers)
    peak = _status("VmHWM")
    print(json.dumps({"baseline": baseline, "peak": peak, "largest_tensor_fp32": largest, "total_fp32": total,
                      "shard_size": s["max_shard_size"], "shards": len(s["shards"]),
                      "total_export_bytes": s["total_bytes"]}))


if __name__ == "__main__":
    main(sys.argv[1:])
