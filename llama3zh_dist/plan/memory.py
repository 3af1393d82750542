"""Per-GPU memory of one ZeRO-3 training rank, term by term, and host memory per node.

Model states follow DeepSpeed's own accounting (``estimate_zero3_model_states_mem_needs``: the
per-rank partitions of parameters, gradients and optimizer state, plus the largest layer's
gathered bf16 parameters and gradients), with the bytes per parameter read from the generated
DeepSpeed config rather than assumed: bf16 parameters (2), fp32 gradient accumulation (4 where
``data_types.grad_accum_dtype`` is fp32, else the parameter dtype), fp32 master weights (4; a
separate copy even for an fp32 model, as measured on a 2-rank run) and Adam's two fp32 moments (8).

Activations are counted for the Hugging Face Llama layer as it runs, tensor by tensor (what
autograd saves), in the spirit of Korthikanti et al. 2022 ("Reducing Activation Recomputation in
Large Transformer Models", section 4.1), adapted to Llama: RMSNorm keeps an fp32 copy of its
input, SwiGLU keeps four [tokens, intermediate] tensors, no dropout, rotary embeddings shared.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..flops import ModelShape

GIB = 2**30
DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4, "fp32": 4, "fp16": 2, "bf16": 2}


@dataclass(frozen=True)
class ZeroSettings:
    """What the generated DeepSpeed config says about memory."""

    param_bytes: int
    grad_bytes: int
    master_bytes: int
    comm_bytes: int
    offload_optimizer: bool
    offload_param: bool
    persistence_threshold: int
    prefetch_bucket: int
    reduce_bucket: int
    max_live_parameters: int
    hpz_partition: int = 1

    @classmethod
    def from_ds_config(cls, ds: dict, model_dtype: str) -> "ZeroSettings":
        z = ds["zero_optimization"]
        p = DTYPE_BYTES[model_dtype]
        accum = (ds.get("data_types") or {}).get("grad_accum_dtype")
        return cls(
            param_bytes=p,
            grad_bytes=DTYPE_BYTES[accum] if accum else p,
            master_bytes=4,
            comm_bytes=DTYPE_BYTES.get(str(ds.get("communication_data_type")), p),
            offload_optimizer=(z.get("offload_optimizer") or {}).get("device", "none") not in ("none", None),
            offload_param=(z.get("offload_param") or {}).get("device", "none") not in ("none", None),
            persistence_threshold=int(z.get("stage3_param_persistence_threshold", 0)),
            prefetch_bucket=int(z.get("stage3_prefetch_bucket_size", 0)),
            reduce_bucket=int(z.get("reduce_bucket_size", 0)),
            max_live_parameters=int(z.get("stage3_max_live_parameters", 0)),
            hpz_partition=int(z.get("zero_hpz_partition_size", 1) or 1),
        )

    @property
    def optimizer_bytes(self) -> int:
        """Per parameter: master weights and Adam's exp_avg and exp_avg_sq (fp32)."""
        return self.master_bytes + 8


def parameter_sizes(shape: ModelShape) -> list[int]:
    """numel of every parameter tensor of a Hugging Face LlamaForCausalLM, in model order."""
    h, f = shape.hidden_size, shape.intermediate_size
    layer = [h * shape.q_dim, h * shape.kv_dim, h * shape.kv_dim, shape.q_dim * h, f * h, f * h, h * f, h, h]
    sizes = [shape.embedding_params, *layer * shape.num_hidden_layers, h]
    return sizes if shape.tie_word_embeddings else [*sizes, shape.embedding_params]


def partition_numel(shape: ModelShape, world: int) -> int:
    """Elements of this rank's share: every tensor split into ceil(numel / world) (ZeRO-3 pads the last)."""
    return sum(math.ceil(n / world) for n in parameter_sizes(shape))


def model_states(shape: ModelShape, z: ZeroSettings, world: int) -> dict[str, int]:
    """ZeRO-3 model states on one GPU (DeepSpeed's estimator terms) and on the host, per rank."""
    part = partition_numel(shape, world)
    optim = (z.grad_bytes + z.optimizer_bytes) * part
    on_gpu = {
        "parameters": 0 if z.offload_param else z.param_bytes * part,
        "gradients_and_optimizer": 0 if z.offload_optimizer else optim,
        # The largest layer's full parameters and gradients while it is gathered (DeepSpeed: 4 x params).
        "largest_layer_gathered": 2 * z.param_bytes * shape.largest_layer_params,
    }
    on_host = (optim if z.offload_optimizer else 0) + (z.param_bytes * part if z.offload_param else 0)
    return {**on_gpu, "partitioned_per_rank": z.param_bytes * part + optim, "host_per_rank": on_host}


def zero_buffers(shape: ModelShape, z: ZeroSettings) -> dict[str, int]:
    """Whole small parameters kept on every rank, prefetched parameters and gradient buckets."""
    persistent = sum(n for n in parameter_sizes(shape) if n <= z.persistence_threshold)
    # ZeRO++ hpZ keeps a second copy of the weights partitioned over the GPUs of one node only, so
    # that the backward's all-gathers stay on NVLink (params / GPUs per node, parameter dtype).
    hpz = z.param_bytes * sum(math.ceil(n / z.hpz_partition) for n in parameter_sizes(shape)) if z.hpz_partition > 1 else 0
    return {
        "hpz_secondary_weights": hpz,
        "persistent_parameters": z.param_bytes * persistent,
        "prefetch_bucket": z.param_bytes * z.prefetch_bucket,
        # contiguous_gradients bucket (parameter dtype) and its reduce-scatter copy (communication dtype)
        "reduce_buckets": (z.param_bytes + z.comm_bytes) * z.reduce_bucket,
    }


def layer_activations(shape: ModelShape, tokens: int, p: int, attn: str) -> int:
    """Bytes autograd keeps for one decoder layer over ``tokens`` tokens (one flattened micro-batch)."""
    h, f, q, kv, T = shape.hidden_size, shape.intermediate_size, shape.q_dim, shape.kv_dim, tokens
    norms = 2 * (4 + 2 * p) * h * T  # fp32 input copy, normalised x, weighted output
    mlp = 4 * p * f * T  # gate, silu(gate), up, silu(gate) * up
    lse = 4 * shape.num_attention_heads * T
    if attn == "flash_attention_2":
        # q, k, v (k/v at GQA size) and the output, which o_proj reads in place.
        attention = p * T * (2 * q + 2 * kv) + lse
    else:
        # With the packed-row mask SDPA gets k/v repeated to all heads, the output is copied
        # contiguous for o_proj, and the boolean mask becomes a float [T, T] copy in every layer.
        attention = p * T * 5 * q + lse + p * T * T
        if attn == "eager":
            attention += 2 * p * shape.num_attention_heads * T * T  # scores and probabilities
    return norms + attention + mlp


def activations(shape: ModelShape, tokens: int, p: int, attn: str, checkpointed: int | bool) -> dict[str, int]:
    """Activation bytes per GPU: ``peak`` over the backward of the layers, and ``at_loss``, what the
    layers still hold while the loss is computed and differentiated (the two peaks never coincide).

    ``checkpointed``: how many decoder layers recompute their forward in the backward (True: all,
    False: none; ``every_second_layer`` checkpoints half of them)."""
    h, L, T = shape.hidden_size, shape.num_hidden_layers, tokens
    k = (L if checkpointed else 0) if isinstance(checkpointed, bool) else max(0, min(L, int(checkpointed)))
    layer = layer_activations(shape, T, p, attn)
    final_norm = (4 + 2 * p) * h * T
    mask = T * T if attn != "flash_attention_2" else 0  # the boolean packed-row mask, shared by the layers
    hidden_grads = 2 * p * h * T  # gradient flowing into and out of the layer being differentiated
    # A checkpointed layer keeps only its input; the others keep everything autograd saves.
    at_loss = k * p * h * T + (L - k) * layer + final_norm + mask
    # The first layer differentiated, if it kept its activations, also holds the gradients of its
    # widest tensors; a checkpointed layer is recomputed whole (one at a time, freed as its backward
    # proceeds) once the layers above it have been differentiated and freed. Checkpointed layers are
    # 0, n, 2n, ...: the highest one has L - 1 - n * floor((L - 1) / n) plain layers above it.
    widest = 2 * p * shape.intermediate_size * T
    if k == 0:
        return {"peak": at_loss + hidden_grads + widest, "at_loss": at_loss}
    n = math.ceil(L / k)
    above = L - 1 - n * ((L - 1) // n)
    recompute_peak = at_loss - above * layer + layer + hidden_grads
    return {"peak": max(recompute_peak, at_loss + hidden_grads + widest if above else 0), "at_loss": at_loss}


def loss_buffer(shape: ModelShape, supervised: int, p: int, chunk: int | None = None) -> int:
    """The loss head over the kept (supervised) hidden states.

    ``chunk`` (training's default, ``loss.CHUNK_TOKENS``): the chunked cross-entropy keeps only the
    hidden states, per-token losses and log-sum-exps; a chunk's logits (p x c x V), their fp32 copy
    and the fp32 softmax exist one chunk at a time, and the backward adds the full lm_head weight
    gradient (p x V x h) and the hidden-state gradient (p x S x h).
    ``chunk=None``: logits of every supervised position at once, copied to fp32 for the loss (unless
    already fp32) with log-softmax keeping its fp32 output; the backward holds three fp32 [S, V]
    tensors at once (saved output, incoming and outgoing gradient).
    """
    S, V, h = supervised, shape.vocab_size, shape.hidden_size
    kept = p * S * h
    if chunk:
        c = min(S, int(chunk))
        forward = p * c * V + 2 * 4 * c * V
        backward = p * c * V + 4 * c * V + p * c * V + p * V * h + p * S * h
        return kept + 2 * 4 * S + max(forward, backward)
    forward = p * S * V + (4 * S * V if p != 4 else 0) + 4 * S * V
    backward = 3 * 4 * S * V
    return kept + max(forward, backward)
