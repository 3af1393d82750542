"""Benchmark: our ZeRO-3 export against DeepSpeed's own ``zero_to_fp32.py``, side by side.

    .venv/bin/python bench/bench_export.py [--work /tmp/llama3zh_bench_export] [--keep]

1. makes a ZeRO-3 checkpoint of a >=300M-parameter Llama (Llama 3 vocabulary, untied embeddings,
   reference logits as the final checkpoint of a training run holds them) with 2 CPU ranks on gloo
   (``tests/distributed/_export_helpers.py``);
2. exports it with DeepSpeed's ``zero_to_fp32.py --safe_serialization`` (fp32, its only dtype), with ours
   in fp32 (like for like) and with ours in bf16 (our default), each in its own process under
   ``/usr/bin/time -v`` (Debian package ``time``: ``apt-get install time`` if missing);
3. prints peak RSS and wall time of each, and our/DeepSpeed ratios, as a table and one JSON line.
   ``zero_to_fp32`` exits with its output unflushed in the page cache, ours fsyncs before the atomic
   rename: ``deepspeed_fp32_plus_fsync`` adds the time to flush DeepSpeed's output, for like for like.

All runs read the same checkpoint files, which the checkpoint maker has just written (page cache warm
for every run). Ours includes loading the tokenizer, writing SHA256SUMS from a read-back of every file, fsync before
the atomic rename, and (default) its verification (names/shapes/dtypes, tokenizer files, logits of the
reference prompts); ``ours_float32_verify_off`` shows the fp32 export without the verification.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "dist"))

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
    return {"peak_rss_bytes": rss, "wall_s": secs}


def _ours(ckpt: str, out: str, dtype: str, workers: int, verify: bool = True) -> None:
    from llama3zh_dist.export import export_checkpoint
    from llama3zh_dist.llama3.hf_tokenizer import load_tokenizer

    s = export_checkpoint(ckpt, out, tokenizer=load_tokenizer(None), dtype=dtype, workers=workers,
                          verify=verify)
    print(json.dumps({k: s[k] for k in ("num_parameters", "shards", "seconds", "verification")}))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", default="/tmp/llama3zh_bench_export")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--keep", action="store_true", help="keep the checkpoint and exports")
    p.add_argument("--no-verify", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--_ours", nargs=3, metavar=("CKPT", "OUT", "DTYPE"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a._ours:
        return _ours(*a._ours, a.workers, not a.no_verify)
    if not shutil.which("/usr/bin/time"):
        raise SystemExit("needs GNU time at /usr/bin/time: apt-get install time")
    work = pathlib.Path(a.work)
    run = work / "run"
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"), TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    ckpt = run / "checkpoints" / "step_1"
    if not (ckpt / "complete.json").is_file():
        from _export_helpers import make_zero3_checkpoint

        shutil.rmtree(run, ignore_errors=True)
        print(f"making a ZeRO-3 checkpoint with 2 CPU ranks in {run} ...", flush=True)
        make_zero3_checkpoint(run, steps=1, reference_logits=True, **MODEL)
    ckpt_bytes = sum(f.stat().st_size for f in ckpt.iterdir())
    # the copy DeepSpeed saves next to the checkpoints, run as users run it
    z_script = run / "checkpoints" / "zero_to_fp32.py"
    results = {}
    out_ds = work / "export-deepspeed"
    shutil.rmtree(out_ds, ignore_errors=True)
    print("deepspeed zero_to_fp32.py --safe_serialization ...", flush=True)
    results["deepspeed_fp32"] = _timed([sys.executable, str(z_script), str(run / "checkpoints"), str(out_ds),
                                        "--safe_serialization", "-t", "step_1"], env)
    ds_peak = results["deepspeed_fp32"]["peak_rss_bytes"]
    # zero_to_fp32 leaves its output in the page cache, unflushed; ours fsyncs every file before the
    # folder is renamed into place. Time the flush of DeepSpeed's output too, for a like-for-like figure.
    import time

    t = time.time()
    for f in sorted(out_ds.iterdir()):
        fd = os.open(f, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    results["deepspeed_fp32_plus_fsync"] = {"peak_rss_bytes": ds_peak, "wall_s": round(
        results["deepspeed_fp32"]["wall_s"] + time.time() - t, 2)}
    for dtype in ("float32", "bfloat16"):
        out = work / f"export-ours-{dtype}"
        print(f"ours {dtype} ...", flush=True)
        results[f"ours_{dtype}"] = _timed([sys.executable, __file__, "--workers", str(a.workers),
                                           "--_ours", str(ckpt), str(out), dtype], env)
    # what the checks cost: the same fp32 export with verify=False (SHA256SUMS, read-back and fsync stay)
    print("ours float32, verify=False ...", flush=True)
    results["ours_float32_verify_off"] = _timed([sys.executable, __file__, "--workers", str(a.workers), "--no-verify",
                                                 "--_ours", str(ckpt), str(work / "export-ours-noverify"), "float32"],
                                                env)
    from safetensors import safe_open

    n_params = 0
    for f in out_ds.glob("*.safetensors"):
        with safe_open(str(f), framework="pt") as h:
            for k in h.keys():
                shape = h.get_slice(k).get_shape()
                n = 1
                for d in shape:
                    n *= d
                n_params += n
    ds = results["deepspeed_fp32"]
    summary = {"parameters": n_params, "checkpoint_bytes": ckpt_bytes, "workers": a.workers, "results": results,
               "ratio_peak_rss_ours_fp32_vs_ds": results["ours_float32"]["peak_rss_bytes"] / ds["peak_rss_bytes"],
               "ratio_wall_ours_fp32_vs_ds": results["ours_float32"]["wall_s"] / ds["wall_s"],
               "ratio_wall_ours_fp32_vs_ds_plus_fsync":
                   results["ours_float32"]["wall_s"] / results["deepspeed_fp32_plus_fsync"]["wall_s"],
               "ratio_peak_rss_ours_bf16_vs_ds": results["ours_bfloat16"]["peak_rss_bytes"] / ds["peak_rss_bytes"],
               "ratio_wall_ours_bf16_vs_ds": results["ours_bfloat16"]["wall_s"] / ds["wall_s"]}
    print(f"\nmodel: {n_params / 1e6:.1f}M parameters, checkpoint {ckpt_bytes / 2**30:.2f} GiB (2 ranks)")
    print(f"{'exporter':<28}{'peak RSS (MiB)':>16}{'wall (s)':>10}{'RSS ratio':>11}{'time ratio':>11}")
    for name, r in results.items():
        print(f"{name:<28}{r['peak_rss_bytes'] / 2**20:>16.0f}{r['wall_s']:>10.1f}"
              f"{r['peak_rss_bytes'] / ds['peak_rss_bytes']:>11.2f}{r['wall_s'] / ds['wall_s']:>11.2f}")
    print(json.dumps(summary))
    if not a.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
