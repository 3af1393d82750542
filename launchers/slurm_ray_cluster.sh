#!/usr/bin/env bash
# A Ray cluster inside a Slurm allocation (head on the first node, one worker per other node), then
# one command against it: a sweep, a big data prep, a Ray job. The cluster ends with the command.
#
#   sbatch launchers/slurm_ray_cluster.sh python -m llama3zh_dist.sweep +sweep=lr_wd
#   sbatch --nodes=4 launchers/slurm_ray_cluster.sh python -m llama3zh_dist.prep data=files data.files=[...]
#   sbatch --nodes=1 --gpus-per-node=0 launchers/slurm_ray_cluster.sh python -c 'import ray; ray.init(); print(ray.cluster_resources())'
#
# Submit from the repository root (or set LLAMA3ZH_HOME); the command runs there, on the first node,
# with RAY_ADDRESS set (ray.init() / Ray Tune / Ray Data connect to this cluster by themselves).
#
# ---- Resources: change these for your site (or pass them to sbatch) --------------------------------
#SBATCH --job-name=llama3zh-ray
# Nodes of the Ray cluster (the first one runs the head and the command).
#SBATCH --nodes=2
# One Ray node process per Slurm node (do not change).
#SBATCH --ntasks-per-node=1
# GPUs per node: Ray schedules sweep trials / GPU tasks onto them.
#SBATCH --gpus-per-node=8
# Whole nodes: Ray manages the CPUs, GPUs and memory itself.
#SBATCH --exclusive
#SBATCH --mem=0
#SBATCH --time=24:00:00
#SBATCH --output=%x-%j.out
# Often needed too:  #SBATCH --partition=...   #SBATCH --account=...
# ----------------------------------------------------------------------------------------------------
#
# Environment: LLAMA3ZH_PYTHON (default ./.venv/bin/python, else python3), RAY_PORT (GCS port,
# default derived from the job id; the dashboard / job server listens on RAY_DASHBOARD_PORT, default
# RAY_PORT+1, exported as RAY_JOB_ADDRESS for `ray job submit`), RAY_TMP (Ray's temp dir; default /tmp/ray-<jobid>, local per node).
set -uo pipefail

say() { printf '[slurm_ray_cluster %(%F %T)T] %s\n' -1 "$*"; }
[[ -n "${SLURM_JOB_ID:-}" ]] || { echo "usage: sbatch launchers/slurm_ray_cluster.sh COMMAND [ARGS...]" >&2; exit 2; }
(($# >= 1)) || { echo "error: no command given (e.g. python -m llama3zh_dist.sweep +sweep=lr_wd)" >&2; exit 2; }

HOME_DIR=${LLAMA3ZH_HOME:-${SLURM_SUBMIT_DIR:-$PWD}}
cd "$HOME_DIR" || exit 2
if [[ -n "${LLAMA3ZH_PYTHON:-}" ]]; then PYTHON=$LLAMA3ZH_PYTHON
elif [[ -x .venv/bin/python ]]; then PYTHON=$PWD/.venv/bin/python
else PYTHON=$(command -v python3); fi
# `python` in the command means the project's interpreter, on every node.
PATH="$(dirname "$PYTHON"):$PATH"
export PATH

mapfile -t hosts < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
head_host=${hosts[0]}
head_ip=$(srun --nodes=1 --ntasks=1 -w "$head_host" --overlap hostname -I 2>/dev/null | awk '{print $1}')
[[ -n "$head_ip" ]] || head_ip=$(getent hosts "$head_host" | awk '{print $1; exit}')
RAY_PORT=${RAY_PORT:-$((30000 + SLURM_JOB_ID % 2000 * 2))}
RAY_DASHBOARD_PORT=${RAY_DASHBOARD_PORT:-$((RAY_PORT + 1))}
RAY_TMP=${RAY_TMP:-/tmp/ray-$SLURM_JOB_ID}
export RAY_ADDRESS="$head_ip:$RAY_PORT"
# For `ray job submit` / launchers/ray_job_submit.sh inside the command: the head's dashboard.
export RAY_JOB_ADDRESS="http://$head_ip:$RAY_DASHBOARD_PORT"
# Token authentication (Ray >= 2.5x): one random token per job, shared by every node and the command
# through the environment (srun passes it on). Older Ray ignores these variables.
if [[ -z "${RAY_AUTH_TOKEN:-}" ]]; then
  RAY_AUTH_TOKEN=$("$PYTHON" -c 'import secrets; print(secrets.token_hex(32))')
fi
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-token} RAY_AUTH_TOKEN
cpus=${SLURM_CPUS_ON_NODE:-1}
gpus=${SLURM_GPUS_ON_NODE:-0}
[[ "$gpus" =~ ^[0-9]+$ ]] || gpus=0
# Steps that hold a whole node each (ray start --block keeps them alive until the end).
step=(srun --nodes=1 --ntasks=1 --cpus-per-task="$cpus" --overlap --kill-on-bad-exit=0)

say "ray head on $head_host ($RAY_ADDRESS, jobs: $RAY_JOB_ADDRESS), ${#hosts[@]} node(s), $cpus CPUs and $gpus GPUs each"
pids=()
"${step[@]}" -w "$head_host" "$PYTHON" -m ray.scripts.scripts start --head --block \
  --node-ip-address="$head_ip" --port="$RAY_PORT" --num-cpus="$cpus" --num-gpus="$gpus" \
  --temp-dir="$RAY_TMP" --dashboard-host=0.0.0.0 --dashboard-port="$RAY_DASHBOARD_PORT" --disable-usage-stats &
pids+=($!)

# Wait for the head before starting workers.
up=0
for _ in $(seq 1 120); do
  if "$PYTHON" -m ray.scripts.scripts status --address="$RAY_ADDRESS" >/dev/null 2>&1; then up=1; break; fi
  sleep 1
done
((up)) || { say "error: the Ray head did not come up"; kill "${pids[@]}" 2>/dev/null; exit 1; }

for host in "${hosts[@]:1}"; do
  "${step[@]}" -w "$host" "$PYTHON" -m ray.scripts.scripts start --block --address="$RAY_ADDRESS" \
    --num-cpus="$cpus" --num-gpus="$gpus" --temp-dir="$RAY_TMP" --disable-usage-stats &
  pids+=($!)
done
# Wait until every node has joined.
for _ in $(seq 1 120); do
  n=$("$PYTHON" -c 'import ray; ray.init(address="auto", logging_level="ERROR"); print(sum(1 for n in ray.nodes() if n["Alive"]))' 2>/dev/null | tail -n 1)
  [[ "$n" == "${#hosts[@]}" ]] && break
  sleep 2
done
say "ray cluster up: ${n:-?}/${#hosts[@]} nodes; running: $*"

stop_all() {
  say "stopping the Ray cluster"
  kill -TERM "${pids[@]}" 2>/dev/null
  wait "${pids[@]}" 2>/dev/null
}
trap 'stop_all; exit 143' TERM INT

"$@"
rc=$?
say "command exited $rc"
stop_all
exit "$rc"
