"""Peak memory of prep against input size: JSON array and JSONL, two sizes each, side by side.

    .venv/bin/python bench/bench_prep_memory.py [--small-mb 100] [--large-mb 1024] [--stream-mb 10 100]
                                                [--prep-mb 20 80] [--prep-workers auto] [--stages read stream prep]

    # the figures of issue 14 (two sizes of each format through the whole prep; ~25 min on 2 cores):
    .venv/bin/python bench/bench_prep_memory.py --stages prep --prep-mb 256 1024

Corpus: ShareGPT-layout conversations of synthetic Chinese chat (bench_prep.make_corpus's text
generator), the same rows written as one JSON array (indented, as ShareGPT_V3 dumps are) and as
JSONL. Every figure is the peak RSS (``VmHWM``) of a fresh child process, so stages do not
share caches. Figures:

- ``stream``: the prep's read + per-row stage as prep runs it in-process (``data.ray.workers=0``):
  ``stream.raw_blocks`` (incremental JSON array / JSONL reader) -> ``process.process_batch`` (parse,
  map format, repair, clean, validate, tokenise + mask, dedup keys), block by block, outputs
  counted and dropped. This stage is bounded: reader buffer (~1 MiB + one record) + one block.
- ``read``: the reader alone (``readers.iter_records`` + ``json.loads`` of every record).
- ``prep``: the whole ``prepare_dataset`` at the ``--prep-mb`` sizes, as a user runs it
  (``--prep-workers auto``: Ray Data on all CPUs above ``data.ray.min_rows`` rows; ``0`` for
  in-process). Every processed block goes to disk (raw text, tokens, signatures and the per-row
  metadata), the driver keeps numpy arrays of a few dozen bytes per row and builds the shards one at
  a time, so peak memory is a fixed part plus those bytes per row. Two figures: the driver's peak
  RSS, and the peak of the sum over the driver and every process it started (Ray's GCS, raylet and
  workers; sampled every 0.5 s; shared pages counted once per process, so an upper bound).

Near-dedup is off in the stages above (that corpus repeats its bodies; see ``_child``).

``--scaling ROWS ROWS``: the whole prep as users run it (Ray Data, near-dedup ON as by default) against
a naive whole-file prep (every row read into a list, converted and tokenised into lists, exact dedup
with a set, one Parquet table at the end), on corpora of that many conversations whose bodies are all
distinct (nothing near-duplicates, so near-dedup searches every row and keeps it: its per-row band
hashes are all in the driver). Printed side by side: the peak RSS of all processes (driver plus
every Ray process, sampled with psutil) and of the driver, per size, and the bytes per row by which
each grows from one size to the other. tests/distributed/test_prep_memory.py asserts the same figures:

    .venv/bin/python bench/bench_prep_memory.py --scaling 20000 80000
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def write_corpus(folder: Path, mb: int, seed: int = 0) -> dict:
    """A JSON array and a JSONL file of ~mb MB each (same rows); returns paths and row count."""
    from bench_prep import _para, _words

    rng = random.Random(seed)
    words = _words()
    # 3,000 distinct conversation bodies, repeated with fresh ids and a varying first line so the
    # generator keeps up with the disk (the per-row work of prep does not depend on repetition)
    bodies = []
    for _ in range(3000):
        turns = []
        for _ in range(rng.randint(1, 4)):
            turns.append({"from": "human", "value": _para(rng, words, rng.randint(1, 3))})
            turns.append({"from": "gpt", "value": _para(rng, words, rng.randint(2, 10))})
        bodies.append(turns)
    target = mb * 1_000_000
    arr, jl = folder / f"sharegpt_{mb}mb.json", folder / f"sharegpt_{mb}mb.jsonl"
    n = size = 0
    with open(arr, "w", encoding="utf-8") as fa, open(jl, "w", encoding="utf-8") as fl:
        fa.write("[\n")
        while size < target:
            turns = [dict(t) for t in bodies[n % len(bodies)]]
            turns[0]["value"] = f"第{n}个问题。" + turns[0]["value"]
            row = {"id": f"{n // 3}_{n % 3}", "conversations": turns}
            line = json.dumps(row, ensure_ascii=False)
            fl.write(line + "\n")
            pretty = json.dumps(row, ensure_ascii=False, indent=2)
            fa.write(("  " if n == 0 else ",\n  ") + pretty.replace("\n", "\n  "))
            size += len(line.encode("utf-8")) + 1
            n += 1
        fa.write("\n]\n")
    return {"json": str(arr), "jsonl": str(jl), "rows": n}


def _child(stage: str, path: str, out_dir: str) -> dict:
    """Run in a fresh process: one stage on one file; returns figures incl. peak RSS."""
    os.environ.setdefault("RAY_DISABLE_IMPORT_WARNING", "1")
    from omegaconf import OmegaConf

    from llama3zh_dist.config import load_config
    from llama3zh_dist.data import prep as P
    from llama3zh_dist.data.readers import iter_records

    t0 = time.perf_counter()
    cfg = load_config(["model=tiny", "data=sample"])
    OmegaConf.set_struct(cfg, False)
    cfg.data.sources = {"sg": {"format": "sharegpt", "files": [path]}}
    cfg.data.out_dir = out_dir
    cfg.data.max_seq_len = 4096
    cfg.data.max_reject_fraction = 1.0
    workers = os.environ.get("BENCH_PREP_WORKERS", "0")
    cfg.data.ray.workers = None if workers == "auto" else int(workers)  # auto: all CPUs, as by default
    cfg.data.progress = stage == "prep"
    # the corpus of write_corpus repeats 3,000 bodies (fresh ids, first lines): near-dedup would keep
    # only those and hide how prep's memory follows the kept samples; the --scaling corpus is distinct
    cfg.data.clean.near_dedup.enabled = os.environ.get("BENCH_NEAR_DEDUP") == "1"
    if os.environ.get("BENCH_RAY_MIN_ROWS"):
        cfg.data.ray.min_rows = int(os.environ["BENCH_RAY_MIN_ROWS"])
    rows = kept = 0
    extra: dict = {}
    if stage == "naive":
        rows, kept = _naive_prep(path, Path(out_dir))
    elif stage == "read":
        for _, raw, err in iter_records(path):
            json.loads(raw) if err is None else None
            rows += 1
    elif stage == "stream":
        from llama3zh_dist.data.process import process_batch
        from llama3zh_dist.data.settings import data_config, process_settings
        from llama3zh_dist.data.sources import source_specs
        from llama3zh_dist.data.stream import raw_blocks
        from llama3zh_dist.llama3.chat_format import get_encoder

        specs = source_specs(cfg.data)
        proc = process_settings(specs, data_config(cfg.data), get_encoder(None), "bench")
        meta: dict = {}
        last = time.perf_counter()
        for block in raw_blocks(specs, 2000, False, meta):
            out = process_batch(block, proc)
            rows += out.num_rows
            kept += sum(1 for s in out.column("status").to_pylist() if s == "")
            if time.perf_counter() - last > 30:
                last = time.perf_counter()
                print(f"    ... {rows:,} rows, {rows / (last - t0):,.0f} rows/s", file=sys.stderr, flush=True)
    else:
        out = P.prepare_dataset(cfg)
        rep = json.loads((Path(out) / "data_report.json").read_text())
        rows, kept = rep["read"], rep["kept"]
        extra = {"near_dedup": rep["cleaning"]["enabled"]["near_dedup"],
                 "near_duplicates_removed": rep["cleaning"]["near_duplicates_removed"]}
    return {**extra, "stage": stage, "file": os.path.basename(path), "mb": os.path.getsize(path) / 1e6, "rows": rows,
            "kept": kept, "seconds": time.perf_counter() - t0,
            "peak_rss_mb": _own_peak_rss_mb()}


def _own_peak_rss_mb() -> float:
    """This process image's peak RSS: ``VmHWM``, which starts afresh at exec. Not ``ru_maxrss``: Linux
    carries it across fork and exec, so a child of a large parent (pytest after a training run) reports
    the parent's RSS at fork as its own peak, whatever it did itself."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_distinct_corpus(folder: Path, rows: int, seed: int = 0) -> Path:
    """JSONL of ``rows`` ShareGPT conversations, each of fresh random text (one short exchange):
    no two near-duplicate each other, so near-dedup keeps every row after searching it."""
    from bench_prep import _para, _words

    rng = random.Random(seed)
    words = _words()
    path = folder / f"distinct_{rows}.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for n in range(rows):
            row = {"id": str(n), "conversations": [{"from": "human", "value": _para(rng, words, 1)},
                                                   {"from": "gpt", "value": _para(rng, words, 2)}]}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def _naive_prep(path: str, out_dir: Path) -> tuple[int, int]:
    """The baseline: the whole file into a list, every sample tokenised into a list, exact dedup with
    a set, one Parquet table written at the end (what a first script does)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from llama3zh_dist.llama3.chat_format import get_encoder

    enc = get_encoder(None)
    with open(path, encoding="utf-8") as f:
        records = [json.loads(line) for line in f]
    roles = {"human": "user", "gpt": "assistant", "system": "system"}
    samples, seen = [], set()
    for r in records:
        ids = enc.encode_dialog([{"role": roles[t["from"]], "content": t["value"]} for t in r["conversations"]])
        if tuple(ids) not in seen:
            seen.add(tuple(ids))
            samples.append(ids)
    out_dir.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"input_ids": samples}), out_dir / "train.parquet")
    return len(records), len(samples)


def _tree_rss_mb(proc) -> float:
    """RSS of a process and all its descendants (Ray's raylet, GCS and workers), in MB; shared pages
    count once per process, so this is an upper bound."""
    import psutil

    total = 0
    try:
        procs = [proc] + proc.children(recursive=True)
    except psutil.NoSuchProcess:
        return 0.0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total / 2**20


def measure(stage: str, path: str, tmp: Path, workers: str = "0", near_dedup: bool = False,
            ray_min_rows: int | None = None, quiet: bool = False) -> dict:
    import psutil

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               BENCH_PREP_WORKERS=workers, BENCH_NEAR_DEDUP="1" if near_dedup else "0",
               BENCH_RAY_MIN_ROWS=str(ray_min_rows or ""))
    cmd = [sys.executable, __file__, "--child", stage, path, str(tmp / f"out_{stage}_{Path(path).name}")]
    err_path = tmp / f"stderr_{stage}_{Path(path).name}.txt"
    with open(err_path, "w") as err:  # quiet: the child's console kept for a failure report only
        child = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=err if quiet else None, text=True)
    proc, tree_peak = psutil.Process(child.pid), 0.0
    while child.poll() is None:
        tree_peak = max(tree_peak, _tree_rss_mb(proc))
        time.sleep(0.2)
    out = child.stdout.read()
    if child.returncode != 0:
        raise SystemExit(f"{stage} on {path} failed (exit {child.returncode})\n{err_path.read_text()[-4000:]}")
    fig = json.loads(out.strip().splitlines()[-1])
    fig["tree_peak_mb"] = tree_peak
    fig["workers"] = workers
    if quiet:
        return fig
    print(f"  {fig['stage']:<7} {fig['file']:<26} {fig['mb']:>8.0f} MB {fig['rows']:>10,} rows "
          f"{fig['seconds']:>8.1f} s  {fig['rows'] / max(fig['seconds'], 1e-9):>8,.0f} rows/s  "
          f"peak RSS {fig['peak_rss_mb']:>7,.0f} MB (all processes {tree_peak:,.0f} MB)", flush=True)
    return fig


def scaling(sizes: list[int], tmp: Path, quiet: bool = False) -> dict:
    """Ours (Ray, near-dedup on) and the naive prep on distinct corpora of ``sizes`` rows: figures per
    size and the growth in bytes per row between the smallest and the largest."""
    figs: dict = {"ours": {}, "naive": {}}
    for n in sizes:
        path = write_distinct_corpus(tmp, n, seed=n)
        figs["ours"][n] = measure("prep", str(path), tmp, "auto", near_dedup=True, ray_min_rows=1000, quiet=quiet)
        figs["naive"][n] = measure("naive", str(path), tmp, quiet=quiet)
        os.remove(path)
    lo, hi = min(sizes), max(sizes)
    for which in figs.values():
        for key in ("tree_peak_mb", "peak_rss_mb"):
            which[f"{key}_bytes_per_row"] = (which[hi][key] - which[lo][key]) * 2**20 / (hi - lo)
    return figs


def print_scaling(figs: dict) -> None:
    sizes = sorted(k for k in figs["ours"] if isinstance(k, int))
    print("\nwhole prep, peak RSS (MB): all processes (driver + Ray) / driver alone")
    print(f"  {'rows':>8}  {'ours (Ray, near-dedup on)':>28}  {'naive whole-file prep':>24}")
    for n in sizes:
        o, v = figs["ours"][n], figs["naive"][n]
        print(f"  {n:>8,}  {o['tree_peak_mb']:>14,.0f} / {o['peak_rss_mb']:>10,.0f}  "
              f"{v['tree_peak_mb']:>12,.0f} / {v['peak_rss_mb']:>9,.0f}")
    o, v = figs["ours"], figs["naive"]
    print(f"  {'B/row':>8}  {o['tree_peak_mb_bytes_per_row']:>14,.0f} / {o['peak_rss_mb_bytes_per_row']:>10,.0f}  "
          f"{v['tree_peak_mb_bytes_per_row']:>12,.0f} / {v['peak_rss_mb_bytes_per_row']:>9,.0f}"
          f"   (growth from {sizes[0]:,} to {sizes[-1]:,} rows)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--small-mb", type=int, default=100)
    ap.add_argument("--large-mb", type=int, default=1024)
    ap.add_argument("--stream-mb", type=int, nargs="*", default=None,
                    help="sizes for the stream stage (default: --small-mb and --large-mb; at ~300-2,500 rows/s "
                         "per core a 1 GB file takes 10-30 minutes per format)")
    ap.add_argument("--prep-mb", type=int, nargs="*", default=[20, 80])
    ap.add_argument("--stages", nargs="*", default=["read", "stream", "prep"])
    ap.add_argument("--prep-workers", default="auto",
                    help="data.ray.workers for the prep stage: auto (all CPUs, the default; Ray above "
                         "data.ray.min_rows rows) or a number (0 = in-process)")
    ap.add_argument("--tmp", default=None, help="folder for the generated files (default: a temp folder)")
    ap.add_argument("--child", nargs=3, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--scaling", type=int, nargs=2, default=None, metavar="ROWS",
                    help="ours (Ray, near-dedup on) against a naive whole-file prep at two row counts")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(_child(*args.child)))
        return
    if args.scaling:
        with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
            print_scaling(scaling(sorted(args.scaling), Path(tmp)))
        return
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        tmp = Path(tmp)
        figs = []
        read_sizes = {args.small_mb, args.large_mb} if "read" in args.stages else set()
        stream_sizes = set(args.stream_mb if args.stream_mb is not None else [args.small_mb, args.large_mb])
        stream_sizes = stream_sizes if "stream" in args.stages else set()
        for mb in sorted(read_sizes | stream_sizes):
            t = time.perf_counter()
            c = write_corpus(tmp, mb)
            print(f"corpus {mb} MB: {c['rows']:,} conversations ({time.perf_counter() - t:.0f}s to write)", flush=True)
            for stage, sizes in (("read", read_sizes), ("stream", stream_sizes)):
                if mb in sizes:
                    figs += [measure(stage, c["json"], tmp), measure(stage, c["jsonl"], tmp)]
            for p in (c["json"], c["jsonl"]):
                os.remove(p)
        if "prep" in args.stages:
            for mb in args.prep_mb:
                c = write_corpus(tmp, mb, seed=1)
                print(f"corpus {mb} MB: {c['rows']:,} conversations", flush=True)
                figs += [measure("prep", c["json"], tmp, args.prep_workers),
                         measure("prep", c["jsonl"], tmp, args.prep_workers)]
                for p in (c["json"], c["jsonl"]):
                    os.remove(p)
        print("\npeak RSS by stage and size (MB):")
        for stage in ("read", "stream", "prep"):
            for kind in ("json", "jsonl"):
                row = [f for f in figs if f["stage"] == stage and f["file"].endswith("." + kind)]
                if row:
                    cells = ", ".join(f"{f['mb']:,.0f} MB input ({f['rows']:,} rows) -> {f['peak_rss_mb']:,.0f} MB"
                                      f" (all processes {f['tree_peak_mb']:,.0f} MB)" for f in row)
                    print(f"  {stage:<7}{kind:<6} {cells}")


if __name__ == "__main__":
    main()
