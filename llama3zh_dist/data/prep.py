"""Data preparation: sources -> validated, cleaned, tokenised, mixed, packed Parquet shards.

``prepare_dataset(cfg)`` is the whole pipeline (``python -m llama3zh_dist.prep`` and the prep step of
training call it, before any process group exists):

1. read every row of every source as a stream of blocks (:mod:`.stream`, :mod:`.readers`: JSONL lines
   and JSON array records stay raw text so a bad one is a reject; a truncated file keeps its
   complete records and the rest is one reject);
2. per row, in parallel with Ray Data (in-process below ``data.ray.min_rows`` rows or with
   ``data.ray.workers=0``, block by block as read): parse, map the format, clean (whitespace,
   Traditional->Simplified, identity), repair (:mod:`.repair`, ``data.repair.*``), validate, refusal
   filter, tokenise with the Llama 3 template and mask labels, handle over-long samples, compute
   dedup keys;
3. driver: exact and near (MinHash LSH) de-duplication, per-source validation split, mixture
   weights (deterministic from ``trainer.seed``), best-fit-decreasing packing, Parquet shards;
4. write ``rejects.jsonl``, ``repairs.jsonl``, ``data_report.json``, ``val/`` and, last, ``manifest.json`` into a temp
   folder that is renamed into place.

Memory: steps 1-2 in-process hold the reader's buffer (~1 MiB plus the record being read) and one
block (``data.ray.block_rows`` rows) at a time, whatever the input size; steps 2-3 keep, per row read,
its tokens (kept rows) or its raw text (rejected rows, up to ``data.rejects_raw_max_chars``) until
the output is written, so prep's peak memory follows the kept tokens (bench/bench_prep_memory.py).

The fingerprint (input bytes, tokenizer, template, settings, seed, pipeline version) makes a rerun
with nothing changed a cache hit.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path
import itertools
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import UserError
from ..tokenizer import (
    TEMPLATE_VERSION,
    file_sha256,
    load_tokenizer,
    meta_tokenizer_fingerprint,
    tokenizer_fingerprint,
)
from .clean import DEFAULT_REFUSAL_PHRASES, near_duplicates
from .packing import best_fit_decreasing, build_rows
from .repair import DEFAULTS as REPAIR_DEFAULTS, REPAIRS
from .sources import FILTER_REASONS, SourceSpec, VALIDATION_REASONS, hub_fingerprint, source_specs
from .report import format_report, repair_records, write_rejects, write_repairs  # noqa: F401  (format_report: the CLI's)
from .stream import raw_blocks

PIPELINE_VERSION = "4"  # bump when the output of the same inputs/settings changes
FORMAT_VERSION = 1
HIST_EDGES = [0, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768]

DEFAULTS: dict[str, Any] = {
    "max_seq_len": 2048,
    "packing": True,
    "max_reject_fraction": 0.05,
    "val_fraction": 0.0,
    "train_on": "all_assistant",
    "overlong": "truncate",
    "shard_rows": 4096,
    "rejects_raw_max_chars": 4096,
    "progress": True,
    "clean": {
        "whitespace": True,
        "traditional_to_simplified": True,
        "exact_dedup": True,
        "near_dedup": {"enabled": True, "threshold": 0.85, "num_perm": 64, "ngram": 5},
        "identity": {"enabled": True, "name": "Llama3-中文助手", "owner": "llama3zh_dist", "rules": None},
        "refusal": {"enabled": True, "phrases": DEFAULT_REFUSAL_PHRASES},
    },
    "ray": {"workers": None, "min_rows": 20000, "block_rows": 2000, "address": None},
    "repair": REPAIR_DEFAULTS,
}


def _log(msg: str, enabled: bool = True) -> None:
    if enabled:
        print(f"[prep] {msg}", flush=True)


def _merge(defaults: dict, given: dict) -> dict:
    out = dict(defaults)
    for k, v in (given or {}).items():
        if isinstance(v, dict) and isinstance(defaults.get(k), dict):
            out[k] = _merge(defaults[k], v)
        elif v is not None or k not in defaults:
            out[k] = v
    return out


def data_settings(cfg) -> dict:
    """``cfg.data`` as a plain dict with defaults filled in and values checked (UserError on bad ones)."""
    from omegaconf import OmegaConf

    d = OmegaConf.to_container(cfg.data, resolve=True, throw_on_missing=False)
    d = {k: v for k, v in d.items() if v != "???"}
    s = _merge(DEFAULTS, d)
    if not isinstance(s["max_seq_len"], int) or s["max_seq_len"] < 16:
        raise UserError(f"data.max_seq_len={s['max_seq_len']!r} must be an integer >= 16")
    if s["train_on"] not in ("all_assistant", "last_assistant"):
        raise UserError(f"data.train_on={s['train_on']!r}: use all_assistant or last_assistant")
    if s["overlong"] not in ("drop", "truncate"):
        raise UserError(f"data.overlong={s['overlong']!r}: use drop or truncate")
    f = s["max_reject_fraction"]
    if not isinstance(f, (int, float)) or not 0 <= f <= 1:
        raise UserError(f"data.max_reject_fraction={f!r} must be a number in [0, 1]")
    v = s["val_fraction"]
    if not isinstance(v, (int, float)) or not 0 <= v < 1:
        raise UserError(f"data.val_fraction={v!r} must be a number in [0, 1)")
    for k in REPAIRS:
        if not isinstance(s["repair"].get(k), bool):
            raise UserError(f"data.repair.{k}={s['repair'].get(k)!r} must be true or false")
    if not isinstance(s["repair"].get("banner_phrases") or [], list):
        raise UserError("data.repair.banner_phrases must be a list of phrases")
    nd = s["clean"]["near_dedup"]
    if not 0 < float(nd["threshold"]) <= 1:
        raise UserError(f"data.clean.near_dedup.threshold={nd['threshold']!r} must be in (0, 1]")
    return s


def _cfg_get(cfg, dotted: str, default=None):
    from omegaconf import OmegaConf

    try:
        v = OmegaConf.select(cfg, dotted, default=default)
    except Exception:
        return default
    return default if v is None else v


def process_settings(specs: list[SourceSpec], settings: dict, encoder, key: str) -> dict:
    """What the per-row stage (:func:`llama3zh_dist.data.process.process_batch`) needs, picklable for Ray."""
    return {
        "key": key,
        "specs": {s.name: {**s.__dict__} for s in specs},
        "multi_file": {s.name: len(s.files) > 1 for s in specs},
        "clean": settings["clean"],
        "encoder": encoder,
        "max_seq_len": int(settings["max_seq_len"]),
        "overlong": settings["overlong"],
        "train_on": settings["train_on"],
        "raw_max_chars": int(settings["rejects_raw_max_chars"]),
        "assistant_header_len": len(encoder.header_ids("assistant")),
        "repair": settings["repair"],
    }


def resolve_out_dir(cfg) -> Path:
    return Path(os.path.expanduser(str(cfg.data.out_dir))).absolute()


def compute_fingerprint(specs: list[SourceSpec], settings: dict, tok_fp: str, seed: int) -> tuple[str, dict]:
    inputs = []
    for spec in specs:
        if spec.hub:
            inputs.append({"source": spec.name, "hub": spec.hub, "version": hub_fingerprint(spec)})
        for f in spec.files:
            inputs.append({"source": spec.name, "file": os.path.basename(f), "sha256": file_sha256(f)})
    payload = {
        "pipeline": PIPELINE_VERSION,
        "template": TEMPLATE_VERSION,
        "tokenizer": tok_fp,
        "seed": seed,
        "inputs": inputs,
        "sources": [s.settings() for s in specs],
        "settings": {k: v for k, v in settings.items() if k not in ("out_dir", "ray", "progress", "sources", "files")},
    }
    blob = json.dumps(payload, sort_keys=True, ensure_ascii=False, default=str).encode()
    return hashlib.sha256(blob).hexdigest(), payload


def read_manifest(out_dir: Path) -> dict | None:
    try:
        return json.loads((Path(out_dir) / "manifest.json").read_text())
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------- per-row processing
_TIMINGS: dict[str, float] = {}


def proc_workers(settings: dict, total: int) -> int:
    """Ray Data workers for this many rows (0 = in-process)."""
    ray_cfg = settings["ray"]
    workers = ray_cfg.get("workers")
    if workers is None:
        workers = max(1, min(os.cpu_count() or 1, 32))
    workers = int(workers)
    if workers <= 0 or total == 0 or total < int(ray_cfg.get("min_rows") or 0):
        return 0
    return workers


def _run_rows(blocks: Iterator[pa.Table], settings: dict, proc_settings: dict, progress: bool) -> pa.Table:
    """Process every raw block; in-process (``data.ray.workers=0`` or fewer than ``data.ray.min_rows``
    rows) the blocks stream from the readers, one at a time; with Ray they are collected first."""
    from .process import OUTPUT_SCHEMA, process_batch

    ray_cfg = settings["ray"]
    wanted = proc_workers(settings, 1 << 62)
    chunks: list[pa.Table] = []
    total = 0
    if wanted > 0:  # Ray only pays off above min_rows: look ahead that far
        for c in blocks:
            chunks.append(c)
            total += c.num_rows
            if total >= int(ray_cfg.get("min_rows") or 0):
                break
    workers = proc_workers(settings, total) if wanted > 0 else 0
    use_ray = workers > 0
    if use_ray:
        chunks += list(blocks)
        total = sum(c.num_rows for c in chunks)
    else:
        blocks = itertools.chain(chunks, blocks)
    _TIMINGS.clear()
    t0 = time.time()
    outs: list[pa.Table] = []
    done = 0
    last = t0

    def tick(n):
        nonlocal done, last
        done += n
        now = time.time()
        if progress and use_ray and (now - last > 5 or done == total):
            last = now
            rate = done / max(now - t0, 1e-9)
            _log(f"processed {done}/{total} rows ({rate:,.0f} rows/s, ETA {(total - done) / max(rate, 1e-9):.0f}s)")

    if not use_ray:
        _log("processing rows in-process" + (f" ({total} rows)" if chunks else " as they are read"), progress)
        for c in blocks:
            outs.append(process_batch(c, proc_settings))
            tick(c.num_rows)
    else:
        import ray

        started = False
        if not ray.is_initialized():
            repo = str(Path(__file__).resolve().parents[2])
            env = {"PYTHONPATH": os.pathsep.join(p for p in [repo, os.environ.get("PYTHONPATH", "")] if p)}
            import logging

            for name in ("ray", "ray.data"):  # our own progress lines say what happens
                logging.getLogger(name).setLevel(logging.WARNING)
            kwargs = dict(
                include_dashboard=False,
                log_to_driver=False,
                logging_level=logging.WARNING,
                ignore_reinit_error=True,
                runtime_env={"env_vars": env},
            )
            if ray_cfg.get("address"):
                ray.init(address=ray_cfg["address"], **kwargs)
            else:
                # a local Ray started for prep: its workers are the job, not background tasks, so run
                # them at normal priority (Ray's default niceness 15 starves them on a busy machine)
                os.environ.setdefault("RAY_worker_niceness", "0")
                ray.init(num_cpus=workers, **kwargs)
            started = True
        try:
            import ray.data

            for name in ("ray", "ray.data"):  # (again: importing ray.data configures its logger)
                logging.getLogger(name).setLevel(logging.WARNING)
            ctx = ray.data.DataContext.get_current()
            ctx.execution_options.preserve_order = False  # _assemble orders rows itself (source, file, line)
            try:
                ctx.enable_progress_bars = False
            except Exception:  # pragma: no cover
                pass
            if len(chunks) < 4 * workers:  # give every worker several blocks (slices are zero-copy)
                table = pa.concat_tables(chunks)
                size = max(1, -(-table.num_rows // (4 * workers)))
                chunks = [table.slice(i, size) for i in range(0, table.num_rows, size)]
            _log(f"processing {total} rows with Ray Data ({workers} workers, {len(chunks)} blocks)", progress)
            _TIMINGS["ray_start_s"] = round(time.time() - t0, 3)
            try:
                compute = {"compute": ray.data.TaskPoolStrategy(size=workers)}
            except AttributeError:  # older Ray
                compute = {"concurrency": workers}
            ds = ray.data.from_arrow(chunks).map_batches(
                process_batch,
                batch_format="pyarrow",
                batch_size=None,
                fn_kwargs={"settings": proc_settings},
                num_cpus=1,
                zero_copy_batch=True,
                **compute,
            )
            for b in ds.iter_batches(batch_format="pyarrow", batch_size=None):
                outs.append(b)
                tick(b.num_rows)
        finally:
            if started:
                ray.shutdown()
    if not outs:
        return OUTPUT_SCHEMA.empty_table()
    table = pa.concat_tables([o.cast(OUTPUT_SCHEMA) if o.schema != OUTPUT_SCHEMA else o for o in outs])
    # row order may differ between executors: _assemble orders by (source, file, line) itself
    return table


# ---------------------------------------------------------------- main entry
def prepare_dataset(cfg) -> Path:
    """Prepare ``cfg.data`` into ``cfg.data.out_dir`` (cache hit if the fingerprint matches)."""
    settings = data_settings(cfg)
    progress = bool(settings.get("progress", True))
    specs = source_specs(cfg.data)
    out_dir = resolve_out_dir(cfg)
    seed = int(_cfg_get(cfg, "trainer.seed", 42))
    model_path = _cfg_get(cfg, "model.path", None)
    trust = bool(_cfg_get(cfg, "model.trust_remote_code", False))

    from .template import get_encoder

    if model_path is None or str(model_path) in ("", "null", "None"):
        # the llama-models tokenizer: the encoder needs only its BPE file, not the HF tokenizer
        encoder, tok_fp = get_encoder(None), meta_tokenizer_fingerprint()
    else:
        tok = load_tokenizer(model_path, trust_remote_code=trust)
        try:
            encoder = get_encoder(tok)
        except ValueError as e:
            raise UserError(f"model.path={model_path!r}: {e}") from None
        tok_fp = tokenizer_fingerprint(tok)
    fp, fp_payload = compute_fingerprint(specs, settings, tok_fp, seed)

    old = read_manifest(out_dir)
    complete = old is not None and all((out_dir / p).is_file() for p in old.get("shards", []) + old.get("val_shards", []))
    if old is not None and old.get("fingerprint") == fp and complete:
        _log(f"cache hit: {out_dir} is up to date (fingerprint {fp[:12]}); nothing to do", progress)
        return out_dir
    if old is not None:
        _log(f"inputs or settings changed since {out_dir} was prepared: rebuilding", progress)

    t_start = time.time()
    meta: dict = {}
    blocks = raw_blocks(specs, int(settings["ray"].get("block_rows") or 2000), progress, meta)
    proc_settings = process_settings(specs, settings, encoder, fp)
    t_read = time.time()
    rows = _run_rows(blocks, settings, proc_settings, progress)
    read = meta["read"]
    t_proc = time.time()
    result = _assemble(rows, specs, settings, seed, read, meta["files"], progress)
    repaired, repair_counts = repair_records(rows, result["kept_rows"])
    for name, src in result["report"]["sources"].items():
        src["repairs"] = repair_counts.get(name, {})
        src["read_errors"] = meta["read_errors"].get(name, [])
    total_repairs: Counter = Counter()
    for c in repair_counts.values():
        total_repairs.update(c)
    result["report"]["repairs"] = {
        "rows": dict(sorted(total_repairs.items())),
        "enabled": {k: bool(settings["repair"][k]) for k in REPAIRS},
        "file": str(out_dir / "repairs.jsonl"),
    }
    t_asm = time.time()

    # ------------------------------------------------------------ write (temp folder, rename last)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        write_rejects(tmp / "rejects.jsonl", result["rejects"], meta["files"])
        write_repairs(tmp / "repairs.jsonl", repaired, meta["files"])
        report = result["report"]
        report.update(
            name=str(settings.get("name", "")),
            fingerprint=fp,
            out_dir=str(out_dir),
            rejects_file=str(out_dir / "rejects.jsonl"),
            seconds=round(time.time() - t_start, 2),
            timings={
                "read_s": round(t_read - t_start, 3),  # set-up; reading streams into process_s
                "process_s": round(t_proc - t_read, 3),  # the parallel (Ray Data) stage, Ray start-up included
                "ray_start_s": _TIMINGS.get("ray_start_s", 0.0),
                "assemble_s": round(t_asm - t_proc, 3),  # dedup, mixture, packing
            },
            workers=proc_workers(settings, sum(read.values())),
        )
        frac = report["rejected_validation"] / max(report["read"], 1)
        if frac > float(settings["max_reject_fraction"]):
            failed = out_dir.parent / f"{out_dir.name}.failed"
            report["rejects_file"] = str(failed / "rejects.jsonl")
            (tmp / "data_report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
            if failed.exists():
                shutil.rmtree(failed)
            os.replace(tmp, failed)
            top = ", ".join(f"{r} ({n})" for r, n in Counter(report["validation_by_reason"]).most_common(3))
            raise UserError(
                f"data.max_reject_fraction={settings['max_reject_fraction']} exceeded: "
                f"{report['rejected_validation']} of {report['read']} rows ({frac:.1%}) failed validation; "
                f"top reasons: {top}. Every rejected row and its reason is in {failed / 'rejects.jsonl'}. "
                f"Fix the data or the source format, or raise data.max_reject_fraction."
            )
        if report["train_samples"] == 0:
            failed = out_dir.parent / f"{out_dir.name}.failed"
            report["rejects_file"] = str(failed / "rejects.jsonl")
            (tmp / "data_report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
            if failed.exists():
                shutil.rmtree(failed)
            os.replace(tmp, failed)
            raise UserError(
                f"data: no training sample left ({report['read']} rows read, {report['rejected']} rejected, "
                f"{report['val_samples']} held out by data.val_fraction). Check data.files / data.sources and "
                f"{failed / 'rejects.jsonl'}."
            )
        shards = _write_shards(tmp, result["train"], int(settings["shard_rows"]))
        val_shards = _write_val(tmp, result["val"], int(settings["shard_rows"]))
        (tmp / "data_report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
        manifest = {
            "format_version": FORMAT_VERSION,
            "fingerprint": fp,
            "name": str(settings.get("name", "")),
            "created_unix": time.time(),
            "max_seq_len": int(settings["max_seq_len"]),
            "packing": bool(settings["packing"]),
            "train_on": settings["train_on"],
            "template": TEMPLATE_VERSION,
            "tokenizer": {"model_path": model_path, "fingerprint": tok_fp},
            "seed": seed,
            "columns": ["input_ids", "labels", "position_ids", "sample_ids", "sources"],
            "shards": shards,
            "val_shards": val_shards,
            "counts": {
                "read": report["read"],
                "kept": report["kept"],
                "rejected": report["rejected"],
                "rejected_validation": report["rejected_validation"],
                "train_samples": report["train_samples"],
                "val_samples": report["val_samples"],
                "rows": report["packing"]["rows"],
                "tokens": report["tokens"],
                "supervised_tokens": report["supervised_tokens"],
            },
            "packing_efficiency": report["packing"]["efficiency"],
            "inputs": fp_payload["inputs"],
            "settings": fp_payload["settings"],
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False, default=str) + "\n")
        _swap_into_place(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _log(f"wrote {out_dir} in {time.time() - t_start:.1f}s", progress)
    return out_dir


def _swap_into_place(tmp: Path, out_dir: Path) -> None:
    old = None
    if out_dir.exists():
        old = out_dir.parent / f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------- driver-side assembly
def _assemble(rows: pa.Table, specs, settings, seed, read, files_of, progress) -> dict:
    clean = settings["clean"]
    src_order = {s.name: i for i, s in enumerate(specs)}
    n = rows.num_rows
    status = rows.column("status").to_pylist()
    source = rows.column("source").to_pylist()
    ids = rows.column("id").to_pylist()
    ok = [i for i in range(n) if status[i] == ""]
    # rows arrive in order, but make it explicit and executor-independent
    order_key = list(zip([src_order[s] for s in source], rows.column("file").to_pylist(), rows.column("line").to_pylist()))
    ok.sort(key=lambda i: order_key[i])
    reason = list(status)
    detail = rows.column("detail").to_pylist()

    # exact dedup
    n_dup = n_near = 0
    if clean["exact_dedup"]:
        keys = rows.column("key").to_pylist()
        first: dict[bytes, int] = {}
        kept = []
        for i in ok:
            j = first.setdefault(keys[i], i)
            if j != i:
                reason[i], detail[i] = "duplicate", f"same conversation as {ids[j]}"
                n_dup += 1
            else:
                kept.append(i)
        ok = kept
    if clean["near_dedup"]["enabled"] and ok:
        _log(f"near-duplicate search over {len(ok)} samples (MinHash LSH)", progress)
        sig_col = rows.column("sig").combine_chunks()
        nperm = int(clean["near_dedup"]["num_perm"])
        flat = sig_col.flatten().to_numpy().reshape(-1, nperm) if len(sig_col) else np.zeros((0, nperm))
        # sig_col rows are all present for ok rows; rejected rows have null sigs -> index map
        valid = np.flatnonzero(sig_col.is_valid().to_numpy(zero_copy_only=False))
        pos = np.full(n, -1, dtype=np.int64)
        pos[valid] = np.arange(len(valid))
        sigs = flat[pos[np.asarray(ok, dtype=np.int64)]].astype(np.uint64)
        dup_of = near_duplicates(ok, sigs, float(clean["near_dedup"]["threshold"]), nperm)
        if dup_of:
            for i, j in dup_of.items():
                reason[i], detail[i] = "near_duplicate", f"near-duplicate of {ids[j]}"
            n_near = len(dup_of)
            ok = [i for i in ok if i not in dup_of]  # dup_of keys are row indices

    # per-source validation split and mixture
    by_src: dict[str, list[int]] = defaultdict(list)
    for i in ok:
        by_src[source[i]].append(i)
    train_idx: list[int] = []
    copy_no: list[int] = []
    val_idx: list[int] = []
    vf = float(settings["val_fraction"])
    mixture: dict[str, dict] = {}
    for spec in specs:
        idx = by_src.get(spec.name, [])
        rng = np.random.default_rng([seed, int(hashlib.md5(spec.name.encode()).hexdigest()[:8], 16)])
        perm = [idx[k] for k in rng.permutation(len(idx))]
        n_val = 0
        if vf > 0 and len(idx) >= 2:
            n_val = min(len(idx) - 1, max(1, int(round(vf * len(idx)))))
        val = sorted(perm[:n_val], key=lambda i: order_key[i])
        rest = perm[n_val:]
        w = float(spec.weight)
        target = int(round(w * len(rest)))
        chosen: list[tuple[int, int]] = []
        if target <= len(rest):
            keep = set(rest[:target])
            for i in rest[target:]:
                reason[i], detail[i] = "downsampled", f"data.sources.{spec.name}.weight={w}"
            chosen = [(i, 0) for i in sorted(keep, key=lambda i: order_key[i])]
        else:
            full, extra = divmod(target, len(rest))
            base = sorted(rest, key=lambda i: order_key[i])
            for c in range(full):
                chosen += [(i, c) for i in base]
            chosen += [(i, full) for i in sorted(rest[:extra], key=lambda i: order_key[i])]
        val_idx += val
        train_idx += [i for i, _ in chosen]
        copy_no += [c for _, c in chosen]
        mixture[spec.name] = {"weight": w, "unique": len(rest), "samples": len(chosen), "val": len(val)}

    # ---- training samples table (with repeats)
    sample_ids = [ids[i] if c == 0 else f"{ids[i]}#{c}" for i, c in zip(train_idx, copy_no)]
    base = rows.select(["input_ids", "labels", "source", "n_tokens", "n_sup"])
    samples = base.take(pa.array(train_idx, type=pa.int64())).append_column("id", pa.array(sample_ids, pa.string()))
    lengths = samples.column("n_tokens").to_numpy().astype(np.int64) if samples.num_rows else np.zeros(0, np.int64)
    max_len = int(settings["max_seq_len"])
    if settings["packing"] and len(lengths):
        _log(f"packing {len(lengths)} samples into rows of {max_len} tokens (best-fit decreasing)", progress)
        bins = best_fit_decreasing(lengths, max_len)
    else:
        bins = [[i] for i in range(len(lengths))]
    rng = np.random.default_rng([seed, 7])
    bins = [bins[k] for k in rng.permutation(len(bins))] if bins else []
    train = build_rows(samples, bins) if bins else _empty_rows()
    n_rows = len(bins)
    eff = float(lengths.sum()) / (n_rows * max_len) if n_rows else 0.0

    val_ids = [ids[i] for i in val_idx]
    if val_idx:
        vt = rows.select(["input_ids", "labels", "source", "n_tokens"]).take(pa.array(val_idx, type=pa.int64()))
        vt = vt.append_column("id", pa.array(val_ids, pa.string()))
        val = build_rows(vt, [[k] for k in range(vt.num_rows)], extra=())
        val = val.append_column("source", vt.column("source"))
    else:
        val = None

    # ---- report
    rejects = [i for i in range(n) if reason[i] != ""]
    by_reason_src: dict[str, Counter] = defaultdict(Counter)
    for i in rejects:
        by_reason_src[source[i]][reason[i]] += 1
    n_sup_all = rows.column("n_sup").to_numpy(zero_copy_only=False)
    n_tok_all = rows.column("n_tokens").to_numpy(zero_copy_only=False)
    zh = rows.column("zh_chars").to_numpy(zero_copy_only=False)
    chars = rows.column("chars").to_numpy(zero_copy_only=False)
    trunc = rows.column("truncated").to_numpy(zero_copy_only=False)
    flags = {k: rows.column(k).to_numpy(zero_copy_only=False) for k in ("ws_changed", "t2s_changed", "identity_changed")}
    kept_all = np.array(sorted(set(train_idx) | set(val_idx)), dtype=np.int64)
    train_arr = np.array(train_idx, dtype=np.int64)
    sources_report = {}
    for spec in specs:
        name = spec.name
        kmask = np.array([source[i] == name for i in kept_all], dtype=bool) if len(kept_all) else np.zeros(0, bool)
        tmask = np.array([source[i] == name for i in train_idx], dtype=bool) if len(train_idx) else np.zeros(0, bool)
        k_idx = kept_all[kmask] if len(kept_all) else kept_all
        t_idx = train_arr[tmask] if len(train_arr) else train_arr
        rej = by_reason_src.get(name, Counter())
        sources_report[name] = {
            "format": spec.format,
            "files": files_of.get(name, []),
            "read": read.get(name, 0),
            "kept": int(len(k_idx)),
            "rejected": int(sum(rej.values())),
            "by_reason": dict(sorted(rej.items())),
            "weight": spec.weight,
            "train_samples": int(len(t_idx)),
            "val_samples": mixture[name]["val"],
            "tokens": int(n_tok_all[t_idx].sum()) if len(t_idx) else 0,
            "supervised_tokens": int(n_sup_all[t_idx].sum()) if len(t_idx) else 0,
            "truncated": int(trunc[k_idx].sum()) if len(k_idx) else 0,
        }
    total_read = sum(read.values())
    all_reasons = Counter()
    for c in by_reason_src.values():
        all_reasons.update(c)
    val_reasons = {r: c for r, c in all_reasons.items() if r in VALIDATION_REASONS}
    tokens = int(lengths.sum())
    sup = int(samples.column("n_sup").to_numpy().sum()) if samples.num_rows else 0
    hist_counts = np.histogram(np.clip(lengths, 0, HIST_EDGES[-1] - 1), bins=HIST_EDGES)[0] if len(lengths) else np.zeros(len(HIST_EDGES) - 1)
    report = {
        "read": int(total_read),
        "kept": int(len(kept_all)),
        "rejected": int(len(rejects)),
        "rejected_validation": int(sum(val_reasons.values())),
        "by_reason": dict(sorted(all_reasons.items())),
        "validation_by_reason": dict(sorted(val_reasons.items())),
        "filter_reasons": list(FILTER_REASONS),
        "train_samples": int(len(train_idx)),
        "val_samples": int(len(val_idx)),
        "tokens": tokens,
        "supervised_tokens": sup,
        "supervised_share": sup / tokens if tokens else 0.0,
        "chinese_char_share": float(zh[kept_all].sum() / max(chars[kept_all].sum(), 1)) if len(kept_all) else 0.0,
        "length_histogram": {"edges": HIST_EDGES, "counts": [int(x) for x in hist_counts]},
        "length_stats": {
            "min": int(lengths.min()) if len(lengths) else 0,
            "mean": float(lengths.mean()) if len(lengths) else 0.0,
            "p50": float(np.percentile(lengths, 50)) if len(lengths) else 0.0,
            "p95": float(np.percentile(lengths, 95)) if len(lengths) else 0.0,
            "max": int(lengths.max()) if len(lengths) else 0,
        },
        "cleaning": {
            "whitespace_changed": int(flags["ws_changed"][kept_all].sum()) if len(kept_all) else 0,
            "traditional_to_simplified_changed": int(flags["t2s_changed"][kept_all].sum()) if len(kept_all) else 0,
            "identity_rewritten": int(flags["identity_changed"][kept_all].sum()) if len(kept_all) else 0,
            "exact_duplicates_removed": n_dup,
            "near_duplicates_removed": n_near,
            "refusals_removed": int(all_reasons.get("refusal", 0)),
            "truncated_at_turn_boundary": int(trunc[kept_all].sum()) if len(kept_all) else 0,
            "enabled": {
                "whitespace": bool(clean["whitespace"]),
                "traditional_to_simplified": bool(clean["traditional_to_simplified"]),
                "exact_dedup": bool(clean["exact_dedup"]),
                "near_dedup": bool(clean["near_dedup"]["enabled"]),
                "identity": bool(clean["identity"]["enabled"]),
                "refusal": bool(clean["refusal"]["enabled"]),
            },
        },
        "mixture": mixture,
        "packing": {
            "enabled": bool(settings["packing"]),
            "max_seq_len": max_len,
            "rows": n_rows,
            "efficiency": eff,
            "samples_per_row": (len(lengths) / n_rows) if n_rows else 0.0,
        },
        "sources": sources_report,
    }
    for name, s in sources_report.items():
        assert s["kept"] + s["rejected"] == s["read"], f"row accounting broken for source {name}: {s}"
    rej_rows = [
        {
            "source": source[i],
            "file": int(rows.column("file")[i].as_py()),
            "line": int(rows.column("line")[i].as_py()),
            "id": ids[i],
            "reason": reason[i],
            "detail": detail[i],
            "raw_index": i,
        }
        for i in rejects
    ]
    raw_col = rows.column("raw")
    for r in rej_rows:
        r["raw"] = raw_col[r.pop("raw_index")].as_py()
    rej_rows.sort(key=lambda r: (src_order[r["source"]], r["file"], r["line"]))
    return {"train": train, "val": val, "rejects": rej_rows, "report": report, "kept_rows": kept_all}


def _empty_rows() -> pa.Table:
    li = pa.list_(pa.int32())
    ls = pa.list_(pa.string())
    return pa.table(
        {"input_ids": pa.array([], li), "labels": pa.array([], li), "position_ids": pa.array([], li),
         "sample_ids": pa.array([], ls), "sources": pa.array([], ls)}
    )


def _write_shards(folder: Path, table: pa.Table, shard_rows: int) -> list[str]:
    names = []
    n = table.num_rows
    k = max(1, math.ceil(n / shard_rows))
    for s in range(k):
        part = table.slice(s * shard_rows, shard_rows)
        name = f"part-{s:05d}.parquet"
        pq.write_table(part, folder / name, compression="zstd")
        names.append(name)
    return names


def _write_val(folder: Path, table: pa.Table | None, shard_rows: int) -> list[str]:
    if table is None or table.num_rows == 0:
        return []
    (folder / "val").mkdir()
    return ["val/" + n for n in _write_shards(folder / "val", table, shard_rows)]
