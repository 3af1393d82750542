"""Benchmark: our ZeRO-3 export against DeepSpeed's own ``zero_to_fp32.py``, side by side, on two
checkpoints in one run:

    .venv/bin/python bench/bench_export.py [--workers 4] [--repeat 3] [--only quickstart|synthetic]

* ``quickstart``: the quickstart's final checkpoint (17M parameters, tied embeddings), made once by
  ``python -m llama3zh_dist +experiment=quickstart export.enabled=false`` and cached under
  ``~/.cache/llama3zh_dist/bench_export/quickstart`` (``--quickstart-run`` takes another run);
* ``synthetic``: a >=300M-parameter Llama (Llama 3 vocabulary, untied embeddings, reference logits and
  the tokenizer as a final checkpoint holds them) saved by DeepSpeed with 2 CPU ranks on gloo
  (``tests/distributed/_export_helpers.py``), cached under ``~/.cache/llama3zh_dist/bench_export/synthetic``.

Each checkpoint is exported by DeepSpeed's converter (``convert_zero_checkpoint_to_fp32_state_dict``;
``safe_serialization=True`` where it can, the pickle where tied embeddings stop it), by ours in fp32
(like for like) and in bf16 (our default), each in its own process under ``/usr/bin/time -v``
(Debian package ``time``). The page cache is warmed by one unmeasured read of the checkpoint first.
Ours runs as ``python -m llama3zh_dist.export`` does (the process ends through ``exit_process``) and
includes copying the checkpoint's tokenizer files, the read-back SHA-256 of every file, fsync before the atomic
rename and the verification (names/shapes/dtypes, tokenizer files, logits of the reference prompts);
DeepSpeed's output is not fsynced (``deepspeed_plus_fsync`` adds that flush).

Each exporter runs ``--repeat`` times (default 3), in turns. Printed per checkpoint: the largest peak
RSS and the median wall and CPU time of each and the ratios ours/DeepSpeed, then one JSON
line with every figure. Limits (issue 23): at 300M+ parameters ours fp32 takes at most DeepSpeed's
time with at most 0.3x its peak RSS; on the quickstart at most 1.5x its time.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import shutil
import statistics
import subprocess
import sys
import time
import math

ROOT = pathlib.Path(__file__).resolve().parent.parent
HELPERS = ROOT / "tests" / "distributed"  # _export_helpers.py: the ZeRO-3 checkpoint maker
CACHE = pathlib.Path(os.environ.get("LLAMA3ZH_CACHE", pathlib.Path.home() / ".cache" / "llama3zh_dist")) / "bench_export"

MODEL = dict(vocab=128256, hidden=1024, intermediate=2816, layers=4, heads=16, kv_heads=8)


def _timed(cmd: list[str], env: dict) -> dict:
    r = subprocess.run(["/usr/bin/time", "-v", *cmd], env=env, capture_output=True, text=True, cwd=ROOT)
    if r.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}")
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", r.stderr).group(1)) * 1024
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", r.stderr).group(1)
    secs = 0.0
    for part in wall.split(":"):
        secs = secs * 60 + float(part)
    cpu = sum(float(re.search(rf"{k} time \(seconds\): ([\d.]+)", r.stderr).group(1)) for k in ("User", "System"))
    # CPU seconds too: on a shared machine wall time mostly measures the neighbours
    return {"peak_rss_bytes": rss, "wall_s": secs, "cpu_s": round(cpu, 2)}


def _ours(ckpt: str, out: str, dtype: str, workers: int, verify: bool = True) -> None:
    """Our export as ``python -m llama3zh_dist.export`` runs it: the checkpoint's own tokenizer files
    (the tokenizer loaded only for a checkpoint without them), and the process ends as the command's
    does (``exit_process``)."""
    from llama3zh_dist.export import export_checkpoint
    from llama3zh_dist.llama3.hf_tokenizer import load_tokenizer
    from llama3zh_dist.process_exit import exit_process

    s = export_checkpoint(ckpt, out, tokenizer=lambda: load_tokenizer(None), dtype=dtype, workers=workers,
                          verify=verify)
    print(json.dumps({k: s[k] for k in ("num_parameters", "shards", "seconds", "verification")}), flush=True)
    exit_process(0)


def checkpoint_maker():
    """The test helper that saves a real ZeRO-3 checkpoint (imported here so a test can check the
    benchmark still finds it)."""
    if str(HELPERS) not in sys.path:
        sys.path.insert(0, str(HELPERS))
    from _export_helpers import make_zero3_checkpoint

    return make_zero3_checkpoint


def _latest(run: pathlib.Path) -> pathlib.Path:
    return run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()


def _has_tokenizer(run: pathlib.Path) -> bool:
    """A cached checkpoint from before checkpoints carried their tokenizer is made again."""
    from llama3zh_dist.export.tokenizer_files import has_checkpoint_tokenizer

    return (run / "checkpoints" / "latest").is_file() and has_checkpoint_tokenizer(_latest(run))


def synthetic_checkpoint() -> pathlib.Path:
    run = CACHE / "synthetic" / "run"
    if not _has_tokenizer(run):
        shutil.rmtree(run, ignore_errors=True)
        print(f"making a {MODEL} ZeRO-3 checkpoint with 2 CPU ranks in {run} (once; minutes) ...", flush=True)
        checkpoint_maker()(run, steps=1, reference_logits=True, tokenizer=True, **MODEL)
    return _latest(run)


def quickstart_checkpoint(env: dict, run: pathlib.Path | None = None) -> pathlib.Path:
    if run is not None:  # the user's run, as it is (an older one: the export loads the tokenizer)
        return _latest(run)
    run = CACHE / "quickstart" / "run"
    if not _has_tokenizer(run):
        shutil.rmtree(run, ignore_errors=True)
        print(f"training the quickstart in {run} (once; minutes) ...", flush=True)
        r = subprocess.run([sys.executable, "-m", "llama3zh_dist", "+experiment=quickstart", f"run.dir={run}",
                            f"data.out_dir={run.parent / 'prepared'}", "export.enabled=false",
                            "trainer.progress_bar=false"], env=env, cwd=ROOT, capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"quickstart failed:\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}")
    return _latest(run)


def _deepspeed(ckpt: str, out: str) -> None:
    """DeepSpeed's converter as users call it: safetensors where it can write them."""
    from deepspeed.utils.zero_to_fp32 import convert_zero_checkpoint_to_fp32_state_dict

    c = pathlib.Path(ckpt)
    try:
        convert_zero_checkpoint_to_fp32_state_dict(str(c.parent), out, tag=c.name, safe_serialization=True)
        print("deepspeed wrote safetensors")
    except RuntimeError as e:  # tied embeddings: safetensors refuses shared tensors
        print(f"deepspeed safetensors refused ({str(e)[:80]}...); pickle")
        shutil.rmtree(out, ignore_errors=True)
        convert_zero_checkpoint_to_fp32_state_dict(str(c.parent), out, tag=c.name, safe_serialization=False)


def _warm(ckpt: pathlib.Path) -> None:
    for f in sorted(ckpt.iterdir()):
        if f.is_file():
            with open(f, "rb") as h:
                while h.read(1 << 24):
                    pass


def _deepspeed_once(ckpt: pathlib.Path, out_ds: pathlib.Path, env: dict) -> tuple[dict, dict]:
    shutil.rmtree(out_ds, ignore_errors=True)
    r = _timed([sys.executable, __file__, "--_deepspeed", str(ckpt), str(out_ds)], env)
    t = time.time()
    for f in sorted(out_ds.rglob("*")):
        if f.is_file():
            fd = os.open(f, os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
    return r, {**r, "wall_s": round(r["wall_s"] + time.time() - t, 2)}


def _median(runs: list[dict]) -> dict:
    """Median wall and CPU time of the repeats, largest peak RSS, and every wall time."""
    return {"peak_rss_bytes": max(r["peak_rss_bytes"] for r in runs),
            "wall_s": statistics.median(r["wall_s"] for r in runs),
            "cpu_s": statistics.median(r["cpu_s"] for r in runs), "walls": [r["wall_s"] for r in runs]}


def bench_one(label: str, ckpt: pathlib.Path, work: pathlib.Path, env: dict, workers: int, repeat: int) -> dict:
    """Each exporter ``repeat`` times, in turns (DeepSpeed, ours fp32, ours bf16, DeepSpeed, ...) so
    that a change of the machine's load or page cache falls on all of them; the medians compare."""
    _warm(ckpt)
    runs: dict[str, list[dict]] = {k: [] for k in ("deepspeed_fp32", "deepspeed_plus_fsync", "ours_float32",
                                                   "ours_bfloat16")}
    for i in range(repeat):
        print(f"[{label}] round {i + 1}/{repeat}: deepspeed zero_to_fp32, ours float32, ours bfloat16 ...", flush=True)
        plain, synced = _deepspeed_once(ckpt, work / f"{label}-deepspeed", env)
        runs["deepspeed_fp32"].append(plain)
        runs["deepspeed_plus_fsync"].append(synced)
        for dtype in ("float32", "bfloat16"):
            out = work / f"{label}-ours-{dtype}"
            shutil.rmtree(out, ignore_errors=True)
            runs[f"ours_{dtype}"].append(_timed([sys.executable, __file__, "--workers", str(workers), "--_ours",
                                                 str(ckpt), str(out), dtype], env))
    results = {k: _median(v) for k, v in runs.items()}
    ds = results["deepspeed_fp32"]
    n_params = sum(math.prod(s.shape) for s in _sources(ckpt))
    summary = {"checkpoint": str(ckpt), "parameters": n_params,
               "checkpoint_bytes": sum(f.stat().st_size for f in ckpt.iterdir() if f.is_file()),
               "results": results,
               "time_ratio_fp32": results["ours_float32"]["wall_s"] / ds["wall_s"],
               "cpu_ratio_fp32": results["ours_float32"]["cpu_s"] / ds["cpu_s"],
               "rss_ratio_fp32": results["ours_float32"]["peak_rss_bytes"] / ds["peak_rss_bytes"],
               "time_ratio_bf16": results["ours_bfloat16"]["wall_s"] / ds["wall_s"],
               "rss_ratio_bf16": results["ours_bfloat16"]["peak_rss_bytes"] / ds["peak_rss_bytes"]}
    print(f"\n[{label}] {n_params / 1e6:.1f}M parameters, checkpoint {summary['checkpoint_bytes'] / 2**30:.2f} GiB")
    print(f"{'exporter':<24}{'peak RSS (MiB)':>16}{'wall (s)':>10}{'CPU (s)':>9}{'RSS ratio':>11}{'time ratio':>11}"
          f"{'CPU ratio':>11}")
    for name, r in results.items():
        print(f"{name:<24}{r['peak_rss_bytes'] / 2**20:>16.0f}{r['wall_s']:>10.2f}{r['cpu_s']:>9.2f}"
              f"{r['peak_rss_bytes'] / ds['peak_rss_bytes']:>11.2f}{r['wall_s'] / ds['wall_s']:>11.2f}"
              f"{r['cpu_s'] / ds['cpu_s']:>11.2f}")
    return summary


def _sources(ckpt: pathlib.Path):
    from llama3zh_dist.export.zero3 import Zero3Checkpoint

    return list(Zero3Checkpoint(ckpt).sources.values())


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", default="/tmp/llama3zh_bench_export")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--repeat", type=int, default=3, help="runs of each exporter (medians are compared)")
    p.add_argument("--only", choices=("quickstart", "synthetic"))
    p.add_argument("--quickstart-run", type=pathlib.Path, help="a finished quickstart run to use")
    p.add_argument("--_ours", nargs=3, metavar=("CKPT", "OUT", "DTYPE"), help=argparse.SUPPRESS)
    p.add_argument("--_deepspeed", nargs=2, metavar=("CKPT", "OUT"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a._ours:
        return _ours(*a._ours, a.workers)
    if a._deepspeed:
        return _deepspeed(*a._deepspeed)
    if not shutil.which("/usr/bin/time"):
        raise SystemExit("needs GNU time at /usr/bin/time: apt-get install time")
    work = pathlib.Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"), TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1", WANDB_MODE="offline", LLAMA3ZH_NO_SLURM="1")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    out = {}
    try:
        if a.only in (None, "quickstart"):
            out["quickstart"] = bench_one("quickstart", quickstart_checkpoint(env, a.quickstart_run), work, env, a.workers, a.repeat)
        if a.only in (None, "synthetic"):
            out["synthetic"] = bench_one("synthetic", synthetic_checkpoint(), work, env, a.workers, a.repeat)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    limits = {"quickstart": {"time_ratio_fp32": 1.5}, "synthetic": {"time_ratio_fp32": 1.0, "rss_ratio_fp32": 0.3}}
    print()
    for label, s in out.items():
        for key, limit in limits[label].items():
            print(f"{label:<11} {key:<16} {s[key]:6.2f}  (limit {limit}) {'OK' if s[key] <= limit else 'OVER'}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
