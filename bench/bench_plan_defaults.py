"""Benchmark (planner figures): today's throughput defaults against the planner's automatic ones.

    .venv/bin/python bench/bench_plan_defaults.py

For 8B on one node and 70B on 8 nodes of H100-SXM, prints side by side the plan with the defaults
every run used before (``deepspeed.reduce_dtype=fp32``, ``model.gradient_checkpointing=every_layer``)
and with ``auto`` (throughput.py, plan.checkpointing_choice): reduce dtype, checkpointing, per-GPU peak, predicted step time,
then one JSON line. These are the planner's predictions (assumed MFU, table bandwidths), not
measurements: ``plan.calibrate_from`` replaces the MFU with a measured one once a GPU run exists.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llama3zh_dist.config import load_config  # noqa: E402
from llama3zh_dist.plan import make_plan  # noqa: E402

CASES = {
    "8B, 1 node": ["+experiment=full_sft", "data=llama3_chinese_chat", "cluster.gpu=H100-SXM"],
    "70B, 8 nodes": ["+experiment=full_sft_70b", "data=llama3_chinese_chat", "cluster.gpu=H100-SXM"],
}
TODAY = ["deepspeed.reduce_dtype=fp32", "model.gradient_checkpointing=every_layer"]


def row(plan: dict) -> dict:
    c = plan["detail"]["choices"]
    return {"reduce_dtype": c["reduce_dtype"]["value"], "checkpointing": c["gradient_checkpointing"]["value"],
            "peak_gib": round(plan["per_gpu_bytes"]["total"] / 2**30, 1), "step_s": round(plan["step_seconds"], 2)}


def main() -> int:
    out = {}
    print(f"{'case':<14}{'defaults':<10}{'reduce':<8}{'checkpointing':<21}{'peak GiB':>9}{'step s':>8}")
    for name, args in CASES.items():
        today, auto = row(make_plan(load_config([*args, *TODAY]))), row(make_plan(load_config(args)))
        for label, r in (("today", today), ("auto", auto)):
            print(f"{name:<14}{label:<10}{r['reduce_dtype']:<8}{r['checkpointing']:<21}{r['peak_gib']:>9.1f}{r['step_s']:>8.2f}")
        print(f"{'':<14}{'speed-up':<10}{today['step_s'] / auto['step_s']:>46.2f}x")
        out[name] = {"today": today, "auto": auto}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
