#!/usr/bin/env bash
# llama-cpp-python (llama.cpp itself, used by the GGUF acceptance tests) built from its PyPI source
# distribution, once: the wheel and the sdist are cached under ~/.cache/llama3zh_dist/ so reruns and
# fresh clones install in seconds. Idempotent.
#
# GGML_NATIVE=OFF: a native build uses AMX instructions that these virtual machines' processors report
# but do not allow ("Illegal instruction"). The sdist is kept because it ships llama.cpp's own
# converter (vendor/llama.cpp/convert_hf_to_gguf.py), which a test runs on our export.
#
#   tests/setup/llama_cpp.sh            # uses .venv/bin/python
#   PY=/path/to/python tests/setup/llama_cpp.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
VERSION=0.3.36
PY=${PY:-${LLAMA3ZH_PYTHON:-.venv/bin/python}}
CACHE=${LLAMA3ZH_CACHE:-$HOME/.cache/llama3zh_dist}
WHEELS=$CACHE/wheels
SDIST=$CACHE/sdist
mkdir -p "$WHEELS" "$SDIST"

if "$PY" -c "import importlib.metadata as m, sys; sys.exit(m.version('llama_cpp_python') != '$VERSION')" 2>/dev/null; then
  echo "llama-cpp-python $VERSION already installed"
  exit 0
fi

if ! ls "$SDIST"/llama_cpp_python-$VERSION.tar.gz >/dev/null 2>&1; then
  "$PY" -m pip download -q --no-deps --no-binary llama-cpp-python "llama-cpp-python==$VERSION" -d "$SDIST"
fi

wheel=$(ls "$WHEELS"/llama_cpp_python-$VERSION-*.whl 2>/dev/null | head -1 || true)
if [[ -z "$wheel" ]]; then
  echo "building llama-cpp-python $VERSION from source (about 7 minutes on 2 cores; cached afterwards)"
  CMAKE_ARGS="-DGGML_NATIVE=OFF" CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-2} \
    "$PY" -m pip wheel -q --no-deps "$SDIST/llama_cpp_python-$VERSION.tar.gz" -w "$WHEELS"
  wheel=$(ls "$WHEELS"/llama_cpp_python-$VERSION-*.whl | head -1)
fi
# Its runtime deps (numpy, jinja2, diskcache, typing-extensions) come from PyPI as usual.
"$PY" -m pip install -q "$wheel"
echo "llama-cpp-python $VERSION installed from $wheel"
