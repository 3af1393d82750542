"""The plan as a console table (people) or one JSON object (machines, ``plan.format=json``)."""

from __future__ import annotations

import json

from .memory import GIB

# Where each memory figure comes from, printed next to it.
SOURCES = {
    "model_states": "ZeRO-3 partitions + largest layer gathered (= DeepSpeed's estimator)",
    "activations": "per layer, tensor by tensor (Korthikanti et al. 2022, adapted to Llama)",
    "loss": "supervised hidden states + chunked fp32 cross-entropy (loss.CHUNK_TOKENS rows of logits)",
    "buffers": "hpZ weight copy, persistent params, prefetch and reduce buckets",
    "overhead": "CUDA context, NCCL, allocator (plan.overhead_gib + plan.fragmentation)",
}


def _gib(n: float | None) -> str:
    return "-" if n is None else f"{n / GIB:8.2f} GiB"


def _short(n: float) -> str:
    return f"{n / GIB:.2f} GiB"


def counted_terms(plan: dict) -> dict[str, int | None]:
    """The terms the total adds, by row: activations and the loss peak at different moments, so the
    rows show the larger phase (the loss with the activations held during it, or the layers' backward
    peak without the loss) and the rows add up to the total."""
    b, d = plan["per_gpu_bytes"], plan["detail"]
    at_loss = d["activations_at_loss"]
    loss_phase = at_loss + b["loss"] > b["activations"]
    rows = dict(b)
    rows["activations"] = at_loss if loss_phase else b["activations"]
    rows["loss"] = b["loss"] if loss_phase else None
    return rows


def breakdown_lines(plan: dict) -> list[str]:
    b, d = plan["per_gpu_bytes"], plan["detail"]
    rows = counted_terms(plan)
    lines = [f"{k:<13}{_gib(rows[k])}   {SOURCES[k]}" for k in SOURCES]
    lines.insert(1, f"  of which: parameters {_short(d['parameters_gpu'])}, gradients+optimizer "
                    f"{_short(d['gradients_and_optimizer'])}, largest layer gathered {_short(d['largest_layer_gathered'])}")
    if rows["loss"] is not None:
        phase = (f"  held during the loss (the larger phase; the layers' backward peaks at "
                 f"{_short(b['activations'])} without the loss)")
    else:
        phase = (f"  the layers' backward peak (the larger phase; during the loss {_short(d['activations_at_loss'])} "
                 f"are held + the loss's {_short(b['loss'])})")
    lines.insert(3, phase)
    lines.insert(6, f"  of which: hpZ weights {_short(d.get('hpz_secondary_weights', 0))}, persistent parameters {_short(d['persistent_parameters'])}, prefetch "
                    f"{_short(d['prefetch_bucket'])}, reduce buckets {_short(d['reduce_buckets'])} (stage3_max_live_parameters "
                    f"would allow up to {_short(d['max_live_parameters_bound'])} gathered)")
    lines.append(f"{'total':<13}{_gib(b['total'])}   (the sum of the rows above)")
    return lines


def choice_lines(choices: dict) -> list[str]:
    """The throughput settings (throughput.py, plan.checkpointing_choice): the value, and who chose it and why."""
    names = {"reduce_dtype": "deepspeed.reduce_dtype", "gradient_checkpointing": "model.gradient_checkpointing"}
    return [f"{names.get(k, k)}={c['value']}  ({'auto: ' if c['picked'] else ''}{c['reason']})" for k, c in choices.items()]


def table(plan: dict) -> str:
    d, gpu = plan["detail"], plan["gpu"]
    fits = {True: "fits", False: "DOES NOT FIT", None: "no GPU memory to check against"}[plan["fits"]]
    out = [
        f"model       {d['model']}: {d['parameters'] / 1e9:.2f}B parameters",
        f"cluster     {d['nodes']} node(s) x {d['gpus_per_node']} = {plan['world_size']} ranks, "
        f"{gpu['name'] or 'no GPU'}" + (f" ({gpu['memory_bytes'] / GIB:.1f} GiB)" if gpu["memory_bytes"] else ""),
        f"micro-batch {d['tokens_per_micro_batch']} tokens per GPU per pass",
        *choice_lines(d.get("choices") or {}),
        "",
        "per GPU",
        *("  " + line for line in breakdown_lines(plan)),
        f"  -> {fits}",
        f"host RAM per node {_gib(plan['host_bytes_per_node'])}  (offloaded states {_gib(d['host_states_per_rank'])} "
        f"per rank; checkpoint load on node 0 {_gib(d['host_checkpoint_load_node0'])})",
        "",
        "time",
        f"  tokens per step   {plan['tokens_per_step']:,.0f}   ({d['data']})",
        f"  FLOPs per step    {d['flops_per_step']:.3e}   (flops.py, as logged for MFU)",
    ]
    if plan["step_seconds"] is None:
        out.append(f"  step time         unknown: {d['time_basis']}")
        return "\n".join(out)
    if d.get("comm_seconds"):
        out.append(f"  compute {d['compute_seconds']:.2f} s, ZeRO-3 traffic {d['comm_bytes_per_gpu'] / 1e9:.1f} GB per GPU "
                   f"= {d['comm_seconds']:.2f} s (overlapped: the longer counts)")
    out += [
        f"  step time         {plan['step_seconds']:.2f} s   ({d['time_basis']})",
        f"  tokens/s          {plan['tokens_per_s']:,.0f}",
        f"  to max_steps      {plan['hours_to_max_steps']:.2f} h, {plan['gpu_hours']:.1f} GPU-hours",
    ]
    return "\n".join(out)


def to_json(plan: dict) -> str:
    return json.dumps(plan, indent=2, default=float)
