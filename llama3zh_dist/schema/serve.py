"""``serve``: the OpenAI-compatible API and web chat (``python -m llama3zh_dist.serve``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .base import one_of, require

BACKENDS = ("auto", "transformers", "vllm")


@dataclass
class ServeConfig:
    host: str = "127.0.0.1"
    """Address to listen on; 127.0.0.1 keeps the server on this machine (0.0.0.0 opens it to the network)."""
    port: int = 8000
    """TCP port (0 = any free port; the chosen one is printed)."""
    api_key: Optional[str] = None
    """When set (or the LLAMA3ZH_API_KEY environment variable), /v1/* and the page's calls require
    ``Authorization: Bearer <key>``. Never printed, logged or saved."""
    compare: Optional[str] = None
    """A second export: the web chat answers each turn with both models side by side (names hidden
    until the vote) and /v1/models lists both."""
    backend: str = "auto"
    """auto: vLLM when it is installed and a GPU is present, else transformers."""
    out_dir: Optional[str] = None
    """Where votes.jsonl and preference_pairs.jsonl go (null = run.dir/serve with run.dir on the
    command line, else serve_out/ in the current folder)."""
    max_concurrent: int = 16
    """Requests generated at once (the batch rows of the transformers backend, vLLM's max_num_seqs)."""
    max_queue: int = 64
    """Requests waiting beyond max_concurrent; one more is answered 429."""
    max_request_bytes: int = 1_000_000
    """Largest request body; a bigger one is answered 413."""
    max_tokens: int = 1024
    """Cap on max_tokens / max_completion_tokens of a request (and its default)."""
    max_model_len: Optional[int] = None
    """Prompt + answer tokens (null = the export's max_position_embeddings); longer prompts are a 400."""
    dtype: str = "auto"
    """Weights dtype: auto = the export's torch_dtype."""
    gpu_memory_utilization: float = 0.90
    """vLLM: share of GPU memory for weights and KV cache."""

    def __post_init__(self):
        one_of("backend", self.backend, BACKENDS)
        require(0 <= self.port <= 65535, "port", self.port, "a TCP port is 0-65535 (0 = any free port)")
        require(self.max_concurrent >= 1, "max_concurrent", self.max_concurrent, "at least one request must run")
        require(self.max_queue >= 0, "max_queue", self.max_queue, "0 = no waiting requests beyond max_concurrent")
        require(self.max_request_bytes >= 1024, "max_request_bytes", self.max_request_bytes,
                "a chat request needs at least 1 KiB")
        require(self.max_tokens >= 1, "max_tokens", self.max_tokens, "an answer needs at least one token")
        require(self.max_model_len is None or self.max_model_len >= 16, "max_model_len", self.max_model_len,
                "null = the export's context length; less than 16 tokens cannot hold a prompt")
        one_of("dtype", self.dtype, ("auto", "float32", "bfloat16", "float16"))
        require(0.05 <= self.gpu_memory_utilization <= 1.0, "gpu_memory_utilization", self.gpu_memory_utilization,
                "a share of GPU memory between 0.05 and 1")
