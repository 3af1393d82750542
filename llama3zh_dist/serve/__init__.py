"""Serving an export: an OpenAI-compatible API and a web chat that compares two exports.

``python -m llama3zh_dist.serve model.path=<export> [serve.compare=<export>]``. Modules:
``settings`` (paths, ids, key) -> ``models`` (load an export, prompts, stop ids, vLLM engine
arguments) -> ``engine`` (transformers batched generation) / ``vllm_backend`` -> ``detok``
(incremental text) -> ``protocol`` (OpenAI shapes) -> ``app`` (HTTP) ; ``votes`` + ``pairs``
(compare-mode votes to preference pairs); ``static/`` (the page, no build step).
"""
