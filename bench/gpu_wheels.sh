#!/usr/bin/env bash
# The wheels bench/gpu_check.py needs on a GPU machine whose image has torch, numpy, pyarrow,
# safetensors, tokenizers, accelerate, psutil, tqdm, ninja, msgpack, einops, py-cpuinfo and
# nvidia-ml-py but not this project's other dependencies. Writes .whl/ (git-ignored, < 64 MiB):
#
#   bench/gpu_wheels.sh
#   # on the GPU machine, from the repository root:
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
#     && PYTHONPATH=/tmp/site:$PWD python3 bench/gpu_check.py
#
# Versions are the ones this repository's suite passes with. Pure-Python packages published only as
# sdists (deepspeed, antlr4) are built here: DeepSpeed with DS_BUILD_OPS=0, so no CUDA extension is
# compiled (the training path uses torch's fused AdamW and needs none).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
grep -qxF '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> "$(git rev-parse --git-path info/exclude)"
rm -rf .whl && mkdir -p .whl
pure=(
  deepspeed==0.19.8 hjson==3.1.0
  transformers==5.24.0 huggingface_hub==2.4.0
  hydra-core==1.3.8 omegaconf==2.3.1 antlr4-python3-runtime==4.9.3
  llama_models==0.3.0 datasketch==2.0.0 opencc-python-reimplemented==0.1.7
  pydantic==2.14.4 annotated-types==0.8.0 typing-inspection==0.4.5
)
DS_BUILD_OPS=0 "$PY" -m pip wheel -q --no-deps -w .whl "${pure[@]}"
# compiled: for the GPU machine's Python (3.12, x86-64)
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl pydantic_core==2.50.5 tokenizers==0.23.3
du -sh .whl
ls .whl
