#!/usr/bin/env bash
# Every test: unit, distributed (2 ranks on gloo), the quickstart end to end, and the Slurm tests on
# a real two-node Slurm started here (tests/slurm/cluster.sh; needs root on Debian, installs the
# packages when missing). GPU tests skip themselves without a GPU.
#
#   tests/run.sh                 # everything; installs Chromium and llama.cpp (tests/setup/) when missing
#   tests/run.sh -m "not slow"   # quick: no end-to-end training runs
#   LLAMA3ZH_NO_SLURM=1 tests/run.sh   # skip starting Slurm (the Slurm tests then skip)
#
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${LLAMA3ZH_PYTHON:-.venv/bin/python}

if [[ "${LLAMA3ZH_NO_SLURM:-0}" != 1 ]]; then
  tests/slurm/cluster.sh start
  trap 'tests/slurm/cluster.sh stop || true' EXIT
  export LLAMA3ZH_REQUIRE_SLURM=1   # a Slurm test must not skip silently once the cluster is up
fi
# What the serve and GGUF tests drive for real: Debian's headless Chromium + chromedriver (the web
# chat's browser test) and llama.cpp (llama-cpp-python built once from its sdist, wheel cached in
# ~/.cache/llama3zh_dist). Both scripts return at once when already installed.
tests/setup/chromium.sh
PY="$PY" tests/setup/llama_cpp.sh
export HF_HUB_OFFLINE=1 WANDB_MODE=offline
"$PY" -m pytest -p no:cacheprovider -v -rs "$@" tests
