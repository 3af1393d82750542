#!/usr/bin/env bash
# The wheels bench/gpu_check.py needs on the bare GPU image (../shared/gpu_image.md: Python 3.12,
# torch, transformers 5.17, huggingface_hub 1.33, ... but no deepspeed, hydra, pydantic, llama-models,
# httpx2). Writes the set to $WHEEL_DIR (default .whl/, git-ignored; < 64 MiB):
#
#   bench/gpu_wheels.sh
#   # on the GPU machine, from the repository root:
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
#     && PYTHONPATH=/tmp/site python3 bench/gpu_check.py --out /tmp/gpu_check
#
# The set is complete: every Requires-Dist of every wheel here is met by another wheel here or by a
# package of the image (bench/wheel_check.py checks it; tests/unit/test_gpu_wheels.py proves it in a
# virtual environment holding only the image's packages). Versions are the ones this repository's
# suite passes with (transformers 5.25 needs huggingface_hub >= 2.4, which needs httpx2; the image's
# 1.33 is shadowed by the carried one). Where a wheel needs a minimum version of a package the image
# has but whose version neither gpu_image.md nor its stated packages' own requirements settle (typing-
# extensions, jinja2, anyio, idna, h11, pyyaml), the tested version is carried rather than assumed; tokenizers
# 0.23.3 too, as the image's 0.23.2 requires huggingface_hub < 2.0.
#
# Pure-Python packages published only as sdists (deepspeed, antlr4) are built here: DeepSpeed with
# DS_BUILD_OPS=0, so no CUDA extension is compiled (training uses torch's fused AdamW).
# PY_VERSION (default 3.12, the image's) picks the build of the compiled wheels.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${WHEEL_DIR:-.whl}
PY_VERSION=${PY_VERSION:-3.12}
if [ "$OUT" = .whl ]; then
  grep -qxF '/.whl/' "$(git rev-parse --git-path info/exclude)" 2>/dev/null || echo '/.whl/' >> "$(git rev-parse --git-path info/exclude)"
fi
rm -rf "$OUT" && mkdir -p "$OUT"
pure=(
  deepspeed==0.19.8 hjson==3.1.0
  pydantic==2.14.4 annotated-types==0.8.0 typing-inspection==0.4.5 typing_extensions==4.16.0
  transformers==5.25.0 huggingface_hub==2.4.0 tomlkit==0.15.3
  httpx2==2.17.0 httpcore2==2.17.0 truststore==0.10.5 h11==0.16.0 anyio==4.16.0 idna==3.21
  hydra-core==1.3.8 omegaconf==2.3.1 antlr4-python3-runtime==4.9.3
  llama_models==0.3.0 termcolor==3.3.0 jinja2==3.1.6
  datasketch==2.0.0 opencc-python-reimplemented==0.1.7
)
DS_BUILD_OPS=0 "$PY" -m pip wheel -q --no-deps -w "$OUT" "${pure[@]}"
# compiled: for the GPU machine's Python (3.12, x86-64)
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PY_VERSION" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$OUT" pydantic_core==2.50.5 kernels==0.19.1 markupsafe==3.0.4 pyyaml==6.0.4 tokenizers==0.23.3
du -sh "$OUT"
ls "$OUT"
