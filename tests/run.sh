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

# The suite's checkpoints peak at ~3.4 GB in pytest's temp folder (folders are removed as tests pass;
# tests/conftest.py). A disk that fills halfway fails tests one after another with refused writes,
# so say so before the first test rather than after twenty minutes.
tmp_root=${TMPDIR:-/tmp}
free_mb=$(df -Pm "$tmp_root" | awk 'NR == 2 {print $4}')
echo "tests/run.sh: $((free_mb / 1024)) GB free under $tmp_root"
if (( free_mb < 4096 )); then
  echo "tests/run.sh: the tests need about 4 GB free under $tmp_root and $free_mb MB are;" \
       "free some space or point TMPDIR at a larger disk" >&2
  exit 1
fi
"$PY" -m pytest -p no:cacheprovider -v -rs "$@" tests
