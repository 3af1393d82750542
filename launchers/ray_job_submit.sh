#!/usr/bin/env bash
# Submit a training, a sweep or a data prep to a running Ray cluster as a Ray job.
#
#   launchers/ray_job_submit.sh train +experiment=full_sft data=llama3_chinese_chat   # one training (one node's GPUs)
#   launchers/ray_job_submit.sh sweep +sweep=lr_wd                  # Ray Tune sweep: trials placed by Ray
#   launchers/ray_job_submit.sh prep data=files data.files=[a.jsonl] data.format=sharegpt
#   RAY_ADDRESS=http://head:8265 RAY_NO_WAIT=1 launchers/ray_job_submit.sh sweep +sweep=lr_wd
#
# The first argument picks the entry point (train | sweep | prep | export), the rest are Hydra
# overrides. The job's driver runs on a cluster node in a copy of this repository (Ray's
# working_dir upload, without runs/, .venv/, prepared data, W&B folders) unless RAY_SHARED_FS=1 says
# the repository path is the same on every node, in which case it runs there directly.
# A Ray cluster inside a Slurm allocation: launchers/slurm_ray_cluster.sh.
#
# Environment: RAY_ADDRESS (default http://127.0.0.1:8265: the head's dashboard; RAY_JOB_ADDRESS wins
# when set, as inside launchers/slurm_ray_cluster.sh), RAY_NO_WAIT=1
# (return after submission; follow with `ray job logs -f <id>`), RAY_SHARED_FS=1,
# TRAIN_GPUS (GPUs reserved for the driver of `train`, default 8), LLAMA3ZH_PYTHON (ray CLI's python).
set -euo pipefail

usage() { echo "usage: $0 train|sweep|prep|export [hydra overrides]" >&2; exit 2; }
(($# >= 1)) || usage
what=$1; shift
case "$what" in
  train) module=llama3zh_dist ;;
  sweep) module=llama3zh_dist.sweep ;;
  prep) module=llama3zh_dist.prep ;;
  export) module=llama3zh_dist.export ;;
  *) usage ;;
esac

HOME_DIR=${LLAMA3ZH_HOME:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
cd "$HOME_DIR"
if [[ -n "${LLAMA3ZH_PYTHON:-}" ]]; then PYTHON=$LLAMA3ZH_PYTHON
elif [[ -x .venv/bin/python ]]; then PYTHON=$PWD/.venv/bin/python
else PYTHON=$(command -v python3); fi
# The job server (dashboard) address: RAY_JOB_ADDRESS (set by launchers/slurm_ray_cluster.sh), else an
# http:// RAY_ADDRESS, else the local default.
if [[ -n "${RAY_JOB_ADDRESS:-}" ]]; then RAY_ADDRESS=$RAY_JOB_ADDRESS
elif [[ "${RAY_ADDRESS:-}" != http* ]]; then RAY_ADDRESS=http://127.0.0.1:8265; fi
export RAY_ADDRESS

# The jobs CLI needs the dashboard client libraries that come with ray[default].
if ! "$PYTHON" -c 'import aiohttp, requests' 2>/dev/null; then
  echo "error: Ray job submission needs ray[default] in $PYTHON's environment: pip install 'ray[default]'" >&2
  exit 2
fi

# Fail here, not on the cluster, when the config cannot work (sweeps validate their own trials).
if [[ "$what" == train ]]; then "$PYTHON" -m llama3zh_dist.preflight "$@"; fi

# The entrypoint is a shell command line: quote every override.
entry="python -m $module"
for a in "$@"; do entry+=" $(printf '%q' "$a")"; done

opts=(--submission-id "llama3zh-$what-$(date +%Y%m%d-%H%M%S)-$$")
if [[ "${RAY_SHARED_FS:-0}" == 1 ]]; then
  entry="cd $(printf '%q' "$HOME_DIR") && $entry"
else
  opts+=(--runtime-env-json '{"working_dir": ".", "excludes": ["runs/", ".venv/", "prepared/", "outputs/", "wandb/", ".git/", "*.safetensors", "*.pt"]}')
fi
# A training's driver is its node launcher: reserve that node's GPUs for it.
[[ "$what" == train ]] && opts+=(--entrypoint-num-gpus "${TRAIN_GPUS:-8}")
[[ "${RAY_NO_WAIT:-0}" == 1 ]] && opts+=(--no-wait)

echo "ray job submit to $RAY_ADDRESS: $entry" >&2
exec "$PYTHON" -m ray.scripts.scripts job submit "${opts[@]}" -- bash -c "$entry"
