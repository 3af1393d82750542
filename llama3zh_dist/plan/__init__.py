"""Will a config fit, and how long will it take: the plan behind ``python -m llama3zh_dist.plan``.

``make_plan(cfg)`` answers from the same config (and the same generated DeepSpeed config) that the
run uses, without weights or a GPU; pre-flight calls ``memory_problem(cfg)`` and refuses a run
whose predicted peak exceeds the GPU's memory.
"""

from __future__ import annotations

import copy

from omegaconf import DictConfig, OmegaConf, open_dict

from ..attention import planned_attention
from ..deepspeed_config import build_deepspeed_config
from ..loss import CHUNK_TOKENS
from ..errors import UserError
from ..gpus import GPU, attached_gpu, by_name, known_names
from ..flops import ModelShape
from ..throughput import CHECKPOINTING, Choice, checkpointed_layers, checkpointing_name, reduce_dtype_choice
from .memory import DTYPE_BYTES, GIB, ZeroSettings, activations, loss_buffer, model_states, zero_buffers
from .shapes import model_shape
from .timing import calibration, data_stats, step_time


def plan_gpu(cfg: DictConfig) -> GPU | None:
    """``cluster.gpu`` when given, else the attached GPU; None on the CPU path (no memory limit)."""
    name = cfg.cluster.get("gpu")
    if name:
        gpu = by_name(name)
        if gpu is None:
            raise UserError(f"cluster.gpu={name} is not a GPU model we know; use one of {known_names()}")
        return gpu
    if cfg.cluster.device != "cuda":
        return None
    found = attached_gpu()
    if found is None:
        return None
    gpu = by_name(found[0])
    # A GPU missing from the table: its real memory, no peak (time needs plan.calibrate_from).
    return gpu or GPU(found[0], found[1], None, 0.0, 0.0, (found[0],))  # type: ignore[arg-type]


def memory(cfg: DictConfig, shape, ds: dict, gpu: GPU | None, world: int) -> dict:
    """Per-GPU bytes by term, and host bytes per node."""
    p = DTYPE_BYTES[cfg.model.dtype]
    z = ZeroSettings.from_ds_config(ds, cfg.model.dtype)
    states = model_states(shape, z, world)
    bufs = zero_buffers(shape, z)
    tokens = int(cfg.trainer.micro_batch_size) * int(cfg.data.max_seq_len)
    attn = planned_attention(str(cfg.model.attn_implementation), str(cfg.cluster.device))
    granularity = cfg.model.gradient_checkpointing
    if str(granularity) == "auto":
        granularity = checkpointing_choice(cfg, shape, ds, world).value
    act = activations(shape, tokens, p, attn,
                      checkpointed_layers(granularity, shape.num_hidden_layers))
    loss = loss_buffer(shape, int(tokens * float(cfg.plan.peak_supervised_share)), p, chunk=CHUNK_TOKENS)
    model_states_bytes = states["parameters"] + states["gradients_and_optimizer"] + states["largest_layer_gathered"]
    buffers = sum(bufs.values())
    # Activations and the loss peak at different moments: the layers' backward comes after the loss.
    compute_peak = max(act["at_loss"] + loss, act["peak"])
    fixed = int(float(cfg.plan.overhead_gib) * GIB) if gpu is not None else 0
    subtotal = model_states_bytes + buffers + compute_peak
    overhead = fixed + int(float(cfg.plan.fragmentation) * subtotal) if gpu is not None else 0
    per_node = int(cfg.cluster.nproc_per_node)
    checkpoint_load = p * shape.total_params if cfg.model.init == "pretrained" else 0
    host = per_node * (states["host_per_rank"] + int(float(cfg.plan.host_gib_per_rank) * GIB)) + checkpoint_load
    return {
        "per_gpu_bytes": {"model_states": model_states_bytes, "activations": act["peak"], "loss": loss,
                          "buffers": buffers, "overhead": overhead, "total": subtotal + overhead},
        "detail": {"parameters_gpu": states["parameters"], "gradients_and_optimizer": states["gradients_and_optimizer"],
                   "largest_layer_gathered": states["largest_layer_gathered"],
                   "partitioned_per_rank": states["partitioned_per_rank"], **bufs,
                   # DeepSpeed's cap on gathered parameters; in practice it releases each module after
                   # use, so only the current module and the prefetch bucket are live (counted above).
                   "max_live_parameters_bound": z.param_bytes * min(z.max_live_parameters, shape.total_params),
                   "activations_at_loss": act["at_loss"], "tokens_per_micro_batch": tokens,
                   "host_states_per_rank": states["host_per_rank"], "host_checkpoint_load_node0": checkpoint_load},
        "host_bytes_per_node": host,
    }


def refuse_calibration_from_another_device(cfg: DictConfig, gpu: GPU | None, run_dir: str) -> None:
    """A run measured on one device says nothing about another: CPU FLOP/s priced as H100 steps
    predicted 151,220 s per step. The calibration run's device comes from the config it saved."""
    from pathlib import Path

    saved = Path(run_dir).expanduser() / "config.yaml"
    if not saved.is_file():
        return  # a run folder without its config (copied metrics): nothing to compare
    cluster = OmegaConf.load(saved).get("cluster") or {}
    run_device, run_gpu_name = cluster.get("device"), cluster.get("gpu")
    run_gpu = by_name(run_gpu_name) if run_gpu_name else None
    planned = gpu.name if gpu else str(cfg.cluster.device)
    measured = run_gpu.name if run_gpu else (run_gpu_name or run_device)
    if run_device != cfg.cluster.device or (gpu and run_gpu and run_gpu.name != gpu.name):
        raise UserError(f"plan.calibrate_from={run_dir} was measured on {measured}, but this plan is for "
                        f"{planned}: its speed does not carry over. Calibrate from a run on {planned}, or drop "
                        f"plan.calibrate_from (the plan then assumes plan.mfu={cfg.plan.mfu})")


def make_plan(cfg: DictConfig) -> dict:
    """The plan of ``cfg`` as the JSON object of SPEC.md (Planning), plus a ``detail`` section."""
    from ..data.settings import resolve_out_dir

    world = int(cfg.cluster.nodes) * int(cfg.cluster.nproc_per_node)
    shape, shape_source = model_shape(cfg)
    ds = build_deepspeed_config(cfg, world, shape)  # sized from the same shape (no weights needed)
    gpu = plan_gpu(cfg)
    choices = {"reduce_dtype": reduce_dtype_choice(cfg, world, int(cfg.cluster.nproc_per_node)),
               "gradient_checkpointing": checkpointing_choice(cfg, shape, ds, world)}
    cfg = with_overrides(cfg, {"model.gradient_checkpointing": choices["gradient_checkpointing"].value})
    mem = memory(cfg, shape, ds, gpu, world)
    total = mem["per_gpu_bytes"]["total"]
    calibrated = None
    if cfg.plan.calibrate_from:
        calibrated = calibration(str(cfg.plan.calibrate_from))
        refuse_calibration_from_another_device(cfg, gpu, str(cfg.plan.calibrate_from))
    stats = data_stats(cfg, resolve_out_dir(cfg))
    timing = step_time(cfg, shape, ds, world=world, gpu=gpu, stats=stats, calibrated=calibrated,
                       checkpointed=checkpointed_layers(choices["gradient_checkpointing"].value, shape.num_hidden_layers))
    return {
        "gpu": {"name": gpu.name if gpu else None, "memory_bytes": gpu.memory_bytes if gpu else None},
        "world_size": world,
        "per_gpu_bytes": mem["per_gpu_bytes"],
        "host_bytes_per_node": mem["host_bytes_per_node"],
        "fits": (total <= gpu.memory_bytes) if gpu else None,
        "tokens_per_step": timing["tokens_per_step"],
        "step_seconds": timing["step_seconds"],
        "tokens_per_s": timing.get("tokens_per_s"),
        "hours_to_max_steps": timing.get("hours_to_max_steps"),
        "gpu_hours": timing.get("gpu_hours"),
        "detail": {
            **mem["detail"], "model": shape_source, "parameters": shape.total_params,
            "nodes": int(cfg.cluster.nodes), "gpus_per_node": int(cfg.cluster.nproc_per_node),
            "flops_per_step": timing["flops_per_step"], "mfu": timing.get("mfu"),
            "compute_seconds": timing.get("compute_seconds"), "comm_seconds": timing.get("comm_seconds"),
            "comm_bytes_per_gpu": timing.get("comm_bytes_per_gpu"), "time_basis": timing["basis"],
            "data": stats.source, "calibration": calibrated,
            "choices": {k: {"value": c.value, "reason": c.reason, "picked": c.picked} for k, c in choices.items()},
        },
    }


# Changes that lower the per-GPU peak, cheapest first (what each costs is said with it).
REMEDIES = [
    ("model.attn_implementation=flash_attention_2", {"model.attn_implementation": "flash_attention_2"}, "no cost"),
    ("model.gradient_checkpointing=every_layer", {"model.gradient_checkpointing": "every_layer"}, "~1/3 more compute"),
    ("deepspeed.offload_optimizer=cpu", {"deepspeed.offload_optimizer": "cpu"}, "needs host RAM, slower steps"),
    ("deepspeed=zero3_offload", {"deepspeed.offload_optimizer": "cpu", "deepspeed.offload_param": "cpu"},
     "parameters too: needs host RAM, 2-3x slower steps"),
]


def with_overrides(cfg: DictConfig, changes: dict) -> DictConfig:
    new = copy.deepcopy(cfg)
    with open_dict(new):
        for k, v in changes.items():
            OmegaConf.update(new, k, v, merge=False)
    return new


_with = with_overrides


def cheapest_changes(cfg: DictConfig, limit: int = 4) -> list[str]:
    """Overrides that would make ``cfg`` fit, each with its predicted per-GPU total."""
    gpu = plan_gpu(cfg)
    out: list[str] = []

    def fits(c: DictConfig) -> int | None:
        world = int(c.cluster.nodes) * int(c.cluster.nproc_per_node)
        shape, _ = model_shape(c)
        total = memory(c, shape, build_deepspeed_config(c, world, shape), gpu, world)["per_gpu_bytes"]["total"]
        return total if total <= gpu.memory_bytes else None

    for text, changes, cost in REMEDIES:
        if all(OmegaConf.select(cfg, k) == v for k, v in changes.items()):
            continue
        total = fits(_with(cfg, changes))
        if total:
            out.append(f"{text}  ({total / GIB:.1f} GiB per GPU; {cost})")
    seq = int(cfg.data.max_seq_len) // 2
    while seq >= 1024:
        total = fits(_with(cfg, {"data.max_seq_len": seq}))
        if total:
            out.append(f"data.max_seq_len={seq}  ({total / GIB:.1f} GiB per GPU; shorter rows, longer samples truncated)")
            break
        seq //= 2
    nodes = int(cfg.cluster.nodes) * 2
    while nodes <= 128:
        total = fits(_with(cfg, {"cluster.nodes": nodes}))
        if total:
            out.append(f"cluster.nodes={nodes}  ({total / GIB:.1f} GiB per GPU; more GPUs, same GPU-hours or more)")
            break
        nodes *= 2
    return out[:limit]


def memory_problem(cfg: DictConfig) -> str | None:
    """Pre-flight: why ``cfg`` cannot fit in the GPU's memory (breakdown and fixes), or None."""
    from .report import breakdown_lines

    if cfg.get("plan") is None or not bool(cfg.plan.check) or plan_gpu(cfg) is None:
        return None
    plan = make_plan(_with(cfg, {"plan.calibrate_from": None}))
    if plan["fits"]:
        return None
    lines = [f"predicted peak {plan['per_gpu_bytes']['total'] / GIB:.1f} GiB per GPU exceeds the "
             f"{plan['gpu']['name']}'s {plan['gpu']['memory_bytes'] / GIB:.1f} GiB "
             f"({plan['world_size']} GPUs; python -m llama3zh_dist.plan shows the whole plan):",
             *("    " + line for line in breakdown_lines(plan)), *fix_lines(cfg)]
    lines.append("  (plan.check=false skips this check)")
    return "\n".join(lines)


# -- gradient-checkpointing granularity ------------------------------------------------------------
def checkpointing_choice(cfg: DictConfig, shape: ModelShape, ds: dict, world: int) -> Choice:
    """The fastest granularity whose predicted peak fits the GPU less ``plan.memory_margin``.

    Recomputing fewer layers saves compute, but a step bound by ZeRO-3 traffic gains nothing from
    it: among the granularities that fit, the one with the least predicted step time, and of those
    within 1% of it the one that recomputes most (most memory left). Without a known GPU peak the
    fastest is the one that recomputes least."""
    given = cfg.model.get("gradient_checkpointing", "auto")
    if str(given) != "auto":
        return Choice(checkpointing_name(given), "model.gradient_checkpointing given", False)
    from ..data.settings import resolve_out_dir

    gpu = plan_gpu(cfg)
    if gpu is None:
        return Choice("none", "no GPU memory to plan against (CPU run): no recomputation", True)
    margin = float(cfg.plan.get("memory_margin", 0.1))
    limit = gpu.memory_bytes * (1 - margin)
    stats = data_stats(cfg, resolve_out_dir(cfg))
    fitting, tried = [], []
    for name in CHECKPOINTING:
        c = with_overrides(cfg, {"model.gradient_checkpointing": name})
        total = memory(c, shape, ds, gpu, world)["per_gpu_bytes"]["total"]
        seconds = step_time(c, shape, ds, world=world, gpu=gpu, stats=stats, calibrated=None,
                            checkpointed=checkpointed_layers(name, shape.num_hidden_layers))["step_seconds"]
        tried.append(f"{name} {total / 2**30:.1f} GiB" + (f" {seconds:.2f} s" if seconds else ""))
        if total <= limit:
            fitting.append((name, seconds))
    where = f"limit {limit / 2**30:.1f} GiB ({gpu.name} less plan.memory_margin={margin:g}): " + ", ".join(tried)
    if not fitting:
        return Choice(CHECKPOINTING[0], f"none fits, this needs least; {where}", True)
    if any(sec is None for _, sec in fitting):  # no GPU peak: recomputing less is faster
        return Choice(fitting[-1][0], f"recomputes least of those that fit; {where}", True)
    best = min(sec for _, sec in fitting)
    name = next(n for n, sec in fitting if sec <= best * 1.01)
    why = ("fastest that fits" if name == fitting[-1][0] else
           "as fast as recomputing less (the step waits for ZeRO-3 traffic) and leaves more memory free")
    return Choice(name, f"{why}; {where}", True)


def resolved_checkpointing(cfg: DictConfig, ds_config: dict, hf_config) -> str:
    """``model.gradient_checkpointing``, with ``auto`` resolved as the plan resolves it."""
    import os

    import torch.distributed as dist

    world = dist.get_world_size() if dist.is_initialized() else int(os.environ.get("WORLD_SIZE", 1))
    return checkpointing_choice(cfg, ModelShape.from_config(hf_config), ds_config, world).value


def fix_lines(cfg: DictConfig) -> list[str]:
    """The cheapest changes that would fit, as pre-flight and ``plan`` print them under "DOES NOT FIT"."""
    fixes = cheapest_changes(cfg)
    head = ("  changes that would fit, cheapest first:" if fixes else
            "  no single change fits: combine gradient checkpointing, offload and more nodes")
    return [head, *("    " + f for f in fixes)]
