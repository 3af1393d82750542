"""Map: every raw row through the per-row stage (:func:`.process.process_batch`), with Ray Data
across workers or in-process.

In-process (``data.ray.workers=0``, or fewer rows than ``data.ray.min_rows``) the blocks stream from
the readers one at a time; with Ray they go into Ray's object store a window at a time
(``WINDOW_BLOCKS_PER_WORKER`` x workers blocks), the next window read once the one before is processed
(Ray only pays off above ``min_rows``, so that many rows are looked ahead in memory to decide).
Progress (bytes, rows/s, ETA) is the reader's line (:class:`.stream.ProgressLine`).
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from pathlib import Path
from typing import Callable, Iterator

import pyarrow as pa

from ..schema.data import RayDataConfig
from ..quiet import silence_known_noise
from .spill import Rows, Spill

# raw blocks handed to Ray Data at a time, per worker: enough to keep every worker busy to the end
# of a window, few enough that the object store holds a bounded slice of the input
WINDOW_BLOCKS_PER_WORKER = 8
STORE_WINDOWS = 4
MIN_STORE_BYTES = 256 << 20


def _log(msg: str, enabled: bool = True) -> None:
    if enabled:
        print(f"[prep] {msg}", flush=True)


def proc_workers(ray_cfg: RayDataConfig, total: int) -> int:
    """Ray Data workers for this many rows (0 = in-process)."""
    workers = ray_cfg.workers
    if workers is None:
        workers = max(1, min(os.cpu_count() or 1, 32))
    workers = int(workers)
    if workers <= 0 or total == 0 or total < int(ray_cfg.min_rows or 0):
        return 0
    return workers


def map_rows(blocks: Iterator[pa.Table], ray_cfg: RayDataConfig, proc_settings: dict, progress: bool,
             spill: Spill) -> tuple[Rows, dict]:
    """Process every raw block into ``spill`` as it arrives; returns the processed rows (in any
    order: the driver orders them by source, file and line itself) and timings (``ray_start_s``)."""
    from .process import OUTPUT_SCHEMA

    def kept(t: pa.Table) -> None:
        spill.add(t.cast(OUTPUT_SCHEMA) if t.schema != OUTPUT_SCHEMA else t)

    ahead: list[pa.Table] = []
    total = 0
    if proc_workers(ray_cfg, 1 << 62) > 0:  # Ray only pays off above min_rows: look ahead that far
        for c in blocks:
            ahead.append(c)
            total += c.num_rows
            if total >= int(ray_cfg.min_rows or 0):
                break
    workers = proc_workers(ray_cfg, total) if ahead else 0
    timings: dict = {"ray_start_s": 0.0}
    if workers > 0:
        block_bytes = sum(c.nbytes for c in ahead) / len(ahead)
        _map_with_ray(itertools.chain(ahead, blocks), workers, ray_cfg, proc_settings, progress, timings, kept,
                      block_bytes)
    else:
        _log("processing rows in-process" + (f" ({total} rows)" if ahead else " as they are read"), progress)
        _map_in_process(itertools.chain(ahead, blocks), proc_settings, kept)
    return spill.rows(), timings


def _map_in_process(blocks: Iterator[pa.Table], proc_settings: dict, kept: Callable[[pa.Table], None]) -> None:
    from .process import process_batch

    for c in blocks:
        kept(process_batch(c, proc_settings))


def _quiet_ray_loggers() -> None:
    silence_known_noise()
    for name in ("ray", "ray.data"):  # our own progress lines say what happens
        logging.getLogger(name).setLevel(logging.WARNING)


def object_store_bytes(workers: int, block_bytes: float) -> int | None:
    """The object store of a local Ray started for prep: ``STORE_WINDOWS`` windows of raw blocks
    (the outputs in flight fit in the same room: the driver takes each as it is done), at least
    ``MIN_STORE_BYTES``; None (Ray's default, 30% of RAM) if that is less. Why cap it: every new
    object lands on fresh pages of the store, all mapped into the driver, so with Ray's default the
    driver's RSS grows with the input up to 30% of RAM; capped, the store reuses its pages (and
    spills to disk if ever full)."""
    import psutil

    want = max(MIN_STORE_BYTES, int(STORE_WINDOWS * WINDOW_BLOCKS_PER_WORKER * workers * block_bytes))
    return want if want < 0.3 * psutil.virtual_memory().total else None


def _start_ray(ray_cfg: RayDataConfig, workers: int, store_bytes: int | None) -> bool:
    """Connect to ``data.ray.address`` or start a local Ray for this prep (object store of
    ``store_bytes``); True if we started it."""
    import ray

    if ray.is_initialized():
        return False
    repo = str(Path(__file__).resolve().parents[2])
    env = {"PYTHONPATH": os.pathsep.join(p for p in [repo, os.environ.get("PYTHONPATH", "")] if p)}
    _quiet_ray_loggers()
    kwargs = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING,
                  ignore_reinit_error=True, runtime_env={"env_vars": env})
    if ray_cfg.address:
        ray.init(address=ray_cfg.address, **kwargs)
    else:
        # a local Ray started for prep: its workers are the job, not background tasks, so run
        # them at normal priority (Ray's default niceness 15 starves them on a busy machine)
        os.environ.setdefault("RAY_worker_niceness", "0")
        ray.init(num_cpus=workers, object_store_memory=store_bytes, **kwargs)
    return True


def _windows(blocks: Iterator[pa.Table], workers: int, size: int) -> Iterator[list]:
    """The raw blocks as Ray object refs, ``size`` blocks at a time (read as the previous window is
    processed, so the object store holds one window of the input, not all of it). When the whole
    input is a few blocks, they are re-cut so every worker gets several."""
    import ray

    first = list(itertools.islice(blocks, size))
    if len(first) < size and 0 < len(first) < 4 * workers:
        table = pa.concat_tables(first)
        cut = max(1, -(-table.num_rows // (4 * workers)))
        first = [table.slice(i, cut) for i in range(0, table.num_rows, cut)]
    window = first
    while window:
        yield [ray.put(b) for b in window]
        window = list(itertools.islice(blocks, size))


def _map_with_ray(blocks: Iterator[pa.Table], workers: int, ray_cfg: RayDataConfig, proc_settings: dict,
                  progress: bool, timings: dict, kept: Callable[[pa.Table], None], block_bytes: float) -> None:
    """``block_bytes``: the mean size of a raw block (of those read ahead), to size the object store."""
    import ray

    from .process import process_batch

    t0 = time.time()
    started = _start_ray(ray_cfg, workers, object_store_bytes(workers, block_bytes))
    try:
        import ray.data

        timings["ray_start_s"] = round(time.time() - t0, 3)
        _quiet_ray_loggers()  # (again: importing ray.data configures its logger)
        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = False  # the driver orders rows itself (source, file, line)
        try:
            ctx.enable_progress_bars = False
        except Exception:  # pragma: no cover
            pass
        try:
            compute = {"compute": ray.data.TaskPoolStrategy(size=workers)}
        except AttributeError:  # older Ray
            compute = {"concurrency": workers}
        _log(f"processing rows with Ray Data ({workers} workers, {WINDOW_BLOCKS_PER_WORKER * workers} blocks "
             f"at a time)", progress)
        # Windows of blocks, one Ray Data pipeline each: Ray Data reads only from its own datasources,
        # and ours (the streaming JSON array / JSONL readers, with byte offsets in their errors) run
        # in the driver; a window bounds what the object store holds of the input.
        for refs in _windows(blocks, workers, WINDOW_BLOCKS_PER_WORKER * workers):
            ds = ray.data.from_arrow_refs(refs).map_batches(
                process_batch, batch_format="pyarrow", batch_size=None, fn_kwargs={"settings": proc_settings},
                num_cpus=1, zero_copy_batch=True, **compute,
            )
            del refs  # the dataset owns the blocks now: each is freed once processed
            for b in ds.iter_batches(batch_format="pyarrow", batch_size=None):
                kept(b)
    finally:
        if started:
            ray.shutdown()
