#!/usr/bin/env bash
# Local multi-GPU training with torchrun: one worker process per GPU, each run as its rank.
#
#   launchers/torchrun_local.sh +experiment=full_sft data=llama3_chinese_chat
#   NPROC=4 launchers/torchrun_local.sh +experiment=full_sft data=llama3_chinese_chat trainer.global_batch_size=32
#   # several machines, static rendezvous (run on each, NODE_RANK=0..NNODES-1):
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=host0 MASTER_PORT=29500 launchers/torchrun_local.sh +experiment=full_sft data=llama3_chinese_chat
#
# Arguments are Hydra overrides, as for `python -m llama3zh_dist`. The config is validated once
# (pre-flight) before torchrun starts anything; rank 0 prepares the data if it is missing.
#
# `python -m llama3zh_dist` alone does the same on one machine with its own launcher, and is the
# better choice when preemption matters: torchrun's agent reports a rank's "saved, requeue me" exit
# code 75 as a plain failure (exit 1). Use this script when a site's tooling expects torchrun.
#
# Environment: NPROC (default: number of GPUs, else 1), NNODES (1), NODE_RANK (0), MASTER_ADDR
# (127.0.0.1), MASTER_PORT (29500), LLAMA3ZH_PYTHON (default: ./.venv/bin/python, else python3).
set -euo pipefail

HOME_DIR=${LLAMA3ZH_HOME:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
cd "$HOME_DIR"
if [[ -n "${LLAMA3ZH_PYTHON:-}" ]]; then PYTHON=$LLAMA3ZH_PYTHON
elif [[ -x .venv/bin/python ]]; then PYTHON=$PWD/.venv/bin/python
else PYTHON=$(command -v python3); fi

if [[ -z "${NPROC:-}" ]]; then
  NPROC=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
  ((NPROC > 0)) || NPROC=1
fi
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}

overrides=("$@" "cluster.nodes=$NNODES" "cluster.nproc_per_node=$NPROC")
"$PYTHON" -m llama3zh_dist.preflight "${overrides[@]}"

# RANK/WORLD_SIZE from an outer launch would confuse the workers' rank assignment.
unset RANK WORLD_SIZE LOCAL_RANK LOCAL_WORLD_SIZE GROUP_RANK
# One node: --standalone, where torchrun's agent binds port 0 for its store and holds it while the
# workers run (never raced). Several: the agent on node 0 binds MASTER_PORT; a port held there ends
# with torch's traceback after every node started, so say it here first, in one line.
if ((NNODES == 1)); then
  rdzv=(--standalone)
else
  if ((NODE_RANK == 0)) && ! "$PYTHON" -c 'import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("", int(sys.argv[1])))' \
      "$MASTER_PORT" 2>/dev/null; then
    echo "error: rendezvous port $MASTER_PORT (MASTER_PORT=$MASTER_PORT) is already in use on this machine: set MASTER_PORT to a free port, the same on every node" >&2
    exit 2
  fi
  rdzv=(--nnodes="$NNODES" --node-rank="$NODE_RANK" --master-addr="$MASTER_ADDR" --master-port="$MASTER_PORT")
fi
exec "$PYTHON" -m torch.distributed.run "${rdzv[@]}" --nproc-per-node="$NPROC" \
  -m llama3zh_dist "${overrides[@]}"
