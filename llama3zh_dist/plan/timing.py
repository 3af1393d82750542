"""Step time: FLOPs (flops.py, the formula the run logs as MFU) at an MFU, and ZeRO-3 traffic.

Traffic per micro-batch and GPU (ZeRO paper, Rajbhandari et al. 2020, section 7): the parameters are
all-gathered for the forward and again for the backward (recomputation re-uses the backward's
gather), and the gradients reduce-scattered once, each moving (W-1)/W of the model through every
GPU's link. With hierarchical partitioning (``zero_hpz_partition_size`` = GPUs per node) the
backward gather stays inside the node. Compute and communication overlap (``overlap_comm``), so a
step takes the longer of the two. A calibrated MFU (``plan.calibrate_from``) already contains the
exposed communication of the run it was measured on and is used as is.

Calibrated, the step time is taken as proportional to the step's FLOPs. Costs that do not grow with
the tokens of a step (the optimizer step, ZeRO-3's per-module gathers and releases) are spread over
the calibration run's FLOPs, so a prediction for more tokens per step comes out high by about their
share, and for fewer tokens low. Measured on 2 CPU ranks (quickstart, interleaved steps of 1 and 2
rows per rank on one engine): the step's CPU time grows 1.73x for 2.00x the FLOPs, i.e. ~27% of the
quickstart's step is such a fixed part under load, ~48% on a quiet machine (where the tiny model's
compute is fast), and the prediction for micro_batch_size=2 is 2/(2-f) of the measured time: 13-31%
high. A run logs one token count per step, near constant under packing, so the fixed part cannot be fitted
from its records; its share shrinks as the tokens per step grow.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..flops import ModelShape, step_flops


@dataclass(frozen=True)
class DataStats:
    tokens_per_row: float
    supervised_per_row: float
    sum_sq_lengths_per_row: float
    source: str


def data_stats(cfg, out_dir: Path) -> DataStats:
    """Row statistics of the prepared dataset when it exists, else the stated assumptions."""
    manifest = out_dir / "manifest.json"
    seq = int(cfg.data.max_seq_len)
    if manifest.is_file():
        c = json.loads(manifest.read_text())["counts"]
        rows, tokens, samples = max(c["rows"], 1), c["tokens"], max(c["train_samples"], 1)
        mean_len = tokens / samples
        # sum of l^2 over a row's samples, from the mean sample length (variance ignored)
        return DataStats(tokens / rows, c["supervised_tokens"] / rows, (samples / rows) * mean_len**2,
                         f"prepared dataset {out_dir}")
    mean_len = min(float(cfg.plan.mean_sample_tokens), seq)
    fill = float(cfg.plan.row_fill) if cfg.data.packing else mean_len / seq
    tokens = fill * seq
    return DataStats(tokens, tokens * float(cfg.plan.supervised_share), tokens * mean_len,
                     f"assumed (plan.mean_sample_tokens={cfg.plan.mean_sample_tokens}, plan.row_fill, "
                     f"plan.supervised_share); prepare the data first for measured figures")


def comm_seconds(shape: ModelShape, ds: dict, *, world: int, per_node: int, micro_steps: int, gpu, efficiency: float,
                 param_bytes: int, inter_node_bytes_s: float | None) -> dict[str, float]:
    """ZeRO-3 bytes each GPU moves per step, and the seconds they take at the stated bandwidths."""
    if world <= 1:
        return {"bytes": 0.0, "seconds": 0.0}
    n = shape.total_params
    comm = 4 if ds.get("communication_data_type") == "fp32" else param_bytes
    share = (world - 1) / world
    gather, reduce = param_bytes * n * share, comm * n * share
    nodes = world // per_node
    intra = gpu.intra_node_bytes_s * efficiency
    inter = (inter_node_bytes_s or gpu.inter_node_bytes_s) * efficiency
    hpz = int(ds["zero_optimization"].get("zero_hpz_partition_size", 1) or 1) > 1
    if nodes <= 1:
        seconds = (2 * gather + reduce) / intra
    elif hpz:
        seconds = (gather + reduce) / inter + gather * (per_node - 1) / per_node / intra
    else:
        seconds = (2 * gather + reduce) / inter
    return {"bytes": micro_steps * (2 * gather + reduce), "seconds": micro_steps * seconds}


def calibration(run_dir: str) -> dict:
    """MFU (GPU runs) or FLOP/s per rank (runs on devices without a known peak) of a finished run."""
    path = Path(run_dir).expanduser() / "metrics.jsonl"
    if not path.is_file():
        raise UserError(f"plan.calibrate_from={run_dir}: no metrics.jsonl there; give the run.dir of a run that trained")
    records = []
    for line in path.read_text().splitlines():
        try:
            r = json.loads(line)
        except ValueError:
            continue
        if r.get("flops") and r.get("tokens_per_s") and not r.get("skipped"):
            records.append(r)
    records = records[1:] if len(records) > 2 else records  # the first step carries start-up work
    if not records:
        raise UserError(f"plan.calibrate_from={run_dir}: metrics.jsonl has no step with flops and tokens_per_s "
                        "(runs before this version do not log flops)")
    mfus = [r["mfu"] for r in records if r.get("mfu") is not None]
    per_rank = [r["flops"] * r["tokens_per_s"] / r["tokens"] / r["world_size"] for r in records]
    return {"run": str(run_dir), "steps": len(records), "mfu": statistics.median(mfus) if mfus else None,
            "flops_per_s_per_rank": statistics.median(per_rank),
            "step_seconds": statistics.median(r["tokens"] / r["tokens_per_s"] for r in records)}


def step_time(cfg, shape: ModelShape, ds: dict, *, world: int, gpu, stats: DataStats, calibrated: dict | None,
              checkpointed: int | None = None) -> dict:
    """Predicted seconds per optimizer step, tokens/s, hours to max_steps and GPU-hours.

    ``checkpointed``: decoder layers that recompute their forward (default: all). ``plan.mfu`` is
    the MFU with every layer checkpointed (how the usual 8B/70B figures are measured); the GPU
    runs the recomputation at the same hardware rate, so recomputing fewer layers takes less time.
    A calibrated MFU is used as measured."""
    from ..throughput import recompute_flops

    rows = int(cfg.trainer.global_batch_size)
    tokens = rows * stats.tokens_per_row
    flops = step_flops(shape, tokens, rows * stats.supervised_per_row, rows * stats.sum_sq_lengths_per_row)
    layers = shape.num_hidden_layers if checkpointed is None else checkpointed
    sum_sq = rows * stats.sum_sq_lengths_per_row
    # Hardware FLOPs relative to the every-layer run that plan.mfu describes.
    slowdown = (flops + recompute_flops(shape, tokens, sum_sq, layers)) / (
        flops + recompute_flops(shape, tokens, sum_sq, shape.num_hidden_layers))
    micro_steps = rows // (int(cfg.trainer.micro_batch_size) * world)
    peak = gpu.bf16_flops if gpu else None
    comm = {"bytes": 0.0, "seconds": 0.0}
    if calibrated and (calibrated["mfu"] is None or peak is None):
        rate, mfu, basis = calibrated["flops_per_s_per_rank"], None, f"measured FLOP/s per rank of {calibrated['run']}"
        compute = flops / (world * rate)
    else:
        mfu = calibrated["mfu"] if calibrated else float(cfg.plan.mfu)
        basis = f"measured MFU of {calibrated['run']}" if calibrated else f"assumed MFU plan.mfu={cfg.plan.mfu}"
        if peak is None:
            return {"tokens_per_step": tokens, "flops_per_step": flops, "step_seconds": None, "basis":
                    "no GPU peak known: give cluster.gpu, or plan.calibrate_from=<run.dir> of a run on this hardware"}
        compute = flops / (world * peak * mfu) * (1.0 if calibrated else slowdown)
        if not calibrated:
            comm = comm_seconds(shape, ds, world=world, per_node=int(cfg.cluster.nproc_per_node), micro_steps=micro_steps,
                                gpu=gpu, efficiency=float(cfg.plan.comm_efficiency), param_bytes=2 if cfg.model.dtype != "float32" else 4,
                                inter_node_bytes_s=cfg.plan.inter_node_gbytes_s and float(cfg.plan.inter_node_gbytes_s) * 1e9)
    seconds = max(compute, comm["seconds"])
    hours = seconds * int(cfg.trainer.max_steps) / 3600
    return {"tokens_per_step": tokens, "flops_per_step": flops, "mfu": mfu, "compute_seconds": compute,
            "comm_bytes_per_gpu": comm["bytes"], "comm_seconds": comm["seconds"], "step_seconds": seconds,
            "tokens_per_s": tokens / seconds, "hours_to_max_steps": hours, "gpu_hours": hours * world, "basis": basis}
