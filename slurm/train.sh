#!/usr/bin/env bash
# Multi-node training under Slurm, with preemption, requeue and auto-resume.
#
#   sbatch slurm/train.sh +experiment=full_sft data=llama3_chinese_chat model.path=/models/Meta-Llama-3-8B   # 2 nodes x 8 GPUs
#   sbatch --nodes=8 slurm/train.sh +experiment=full_sft_70b data=llama3_chinese_chat model.path=/models/Meta-Llama-3-70B
#   sbatch --nodes=2 --gpus-per-node=0 slurm/train.sh +experiment=quickstart cluster.nproc_per_node=1
#
# Submit from the repository root (or set LLAMA3ZH_HOME). Every argument is a Hydra override, exactly
# as for `python -m llama3zh_dist`. sbatch options on the command line win over the #SBATCH lines.
#
# What one job attempt does:
#   1. Pre-flight, before anything runs on the nodes: `python -m llama3zh_dist.preflight` composes and
#      validates the config for this allocation's world size (batch arithmetic, model path, GPUs, ...)
#      and plans its memory (python -m llama3zh_dist.plan): a run whose predicted per-GPU peak exceeds
#      the GPU's memory is refused with the breakdown and the cheapest changes that would fit.
#      A bad config fails here in seconds, exit 2, with the message in this job's output.
#   2. Stops at once if the run folder says FINISHED (a stale requeue, or a rerun of a finished run).
#   3. MASTER_ADDR = first host of the allocation, MASTER_PORT derived from the job id (and the
#      restart count, so a requeued attempt never meets the previous one's sockets). It is a first
#      choice: node 0's launcher binds and holds the rendezvous store, takes a free port instead when
#      the derived one is held, and tells the other nodes through run.dir (llama3zh_dist/rendezvous.py).
#   4. `srun` starts ONE launcher per node (`python -m llama3zh_dist`, launcher mode); each starts
#      cluster.nproc_per_node local ranks (one per GPU) and takes its node rank from SLURM_NODEID.
#      Why not one srun task per GPU: the launcher prepares data before any process group exists,
#      passes the ranks' exit code 75 through unchanged, and stops the node's ranks together; and
#      the same command works under torchrun/ray. (Per-GPU tasks also work with the trainer:
#      `srun --ntasks-per-node=8` exporting RANK/WORLD_SIZE/LOCAL_RANK puts it in worker mode.)
#      A node whose launcher fails (crash, data prep error) ends the step on all nodes at once.
#   5. The warning signal (--signal=B:USR1@...) reaches this script only; it forwards it to srun,
#      which delivers it to every process of the step: every rank stops at the same step, saves a
#      checkpoint and exits 75 (EX_TEMPFAIL = "requeue me").
#   6. Exit 75 -> the job requeues itself (`scontrol requeue`; where the site forbids requeueing, it
#      submits a copy of itself that waits for this job). The next attempt resumes from
#      run.dir/checkpoints/latest, into the same W&B run. The chain stops when the trainer writes
#      run.dir/FINISHED, or after more than 3 consecutive attempts without a new optimizer step
#      (state in run.dir/slurm/state; the last step comes from run.dir/metrics.jsonl).
#   `scancel` (SIGTERM: the ranks save too) ends the chain: a cancelled job is never requeued.
#   Rerunning the same `sbatch` on the same run folder resumes too.
#
# Logs: the job output (--output below, in the submission folder: Slurm does not create folders, and
# a missing one makes the job fail without any output) is linked into run.dir/slurm/<jobid>.out.
#
# Network (NCCL) settings: conf/cluster/slurm.yaml (cluster.env, exported to every rank), added to
# the config by this script as an overlay; each value can also come from the environment at
# submission (e.g. `NCCL_SOCKET_IFNAME=ib0 sbatch slurm/train.sh ...`) or an override
# (`+cluster.env.NCCL_IB_HCA=mlx5`).
#
# Environment knobs (all optional):
#   LLAMA3ZH_HOME                 repository root (default: the submission folder)
#   LLAMA3ZH_PYTHON               interpreter (default: $LLAMA3ZH_HOME/.venv/bin/python, else python3)
#   LLAMA3ZH_MASTER_PORT          fixed rendezvous port instead of the one derived from the job id (a
#                                 held fixed port ends the job with one message instead of moving)
#   LLAMA3ZH_MAX_STALLED          attempts without a new step before the chain stops (default 3)
#   LLAMA3ZH_REQUEUE_ON_FAILURE=1 also requeue after a crash (not only after a preemption save)
#   LLAMA3ZH_NO_REQUEUE=1         never requeue (the job just ends with 75 after a preemption save)
#
# ---- Resources: change these for your site (or pass them to sbatch) --------------------------------
#SBATCH --job-name=llama3zh
# Nodes; the world size is nodes x cluster.nproc_per_node (cluster.nodes is set from the allocation).
#SBATCH --nodes=2
# One task per node: the launcher (do not change; it starts the per-GPU ranks itself).
#SBATCH --ntasks-per-node=1
# GPUs per node; one rank per GPU (cluster.nproc_per_node follows it unless given as an override).
#SBATCH --gpus-per-node=8
# Whole nodes: all CPUs (data loading, DeepSpeed optimizer threads) and all host memory
# (ZeRO offload, checkpoint staging). Drop --exclusive/--mem=0 only on shared nodes.
#SBATCH --exclusive
#SBATCH --mem=0
# Wall time per attempt; the job requeues itself until the run finishes.
#SBATCH --time=24:00:00
# Warning signal to this script (B:) 10 minutes before the time limit: enough for every rank to finish
# the step and write a ZeRO-3 checkpoint (8B: ~1 min, 70B: a few min on a parallel filesystem).
# Raise it if your checkpoints take longer to write. Slurm may send it up to 60 s early.
#SBATCH --signal=B:USR1@600
# Allow requeueing (preemption, node failure, our own `scontrol requeue`), and keep appending to the
# same output file across attempts.
#SBATCH --requeue
#SBATCH --open-mode=append
# Output file (%x = job name, %j = job id), relative to the submission folder.
#SBATCH --output=%x-%j.out
# Often needed too:  #SBATCH --partition=...   #SBATCH --account=...   #SBATCH --qos=...
# ----------------------------------------------------------------------------------------------------

set -uo pipefail

EXIT_REQUEUE=75
say() { printf '[train.sh %(%F %T)T] %s\n' -1 "$*"; }
fail() { printf '[train.sh %(%F %T)T] error: %s\n' -1 "$1" >&2; exit "${2:-1}"; }

# The warning signal may come at any time, even during the pre-flight: never let it kill this script.
SIGNALLED=""
srun_pid=""
PHASE=prepare   # prepare -> train (srun running) -> decide
# shellcheck disable=SC2317,SC2329  # invoked only through the traps below (ShellCheck cannot see trap calls)
forward() {  # signal name
  SIGNALLED=$1
  case "$PHASE" in
    train)
      say "got SIG$1: forwarding to the training step (every rank saves at the same step, then exits $EXIT_REQUEUE)"
      [[ -n "$srun_pid" ]] && kill -s "$1" "$srun_pid" 2>/dev/null ;;
    prepare) say "got SIG$1 before training started: will requeue without starting it" ;;
    *) : ;;  # the job is ending (requeue or cancel): nothing left to forward
  esac
}
trap 'forward USR1' USR1
trap 'forward TERM' TERM
trap 'forward INT' INT

if [[ -z "${SLURM_JOB_ID:-}" ]]; then
  echo "usage: sbatch [sbatch options] slurm/train.sh [hydra overrides]   (this is a Slurm batch script;" >&2
  echo "       on one machine run: python -m llama3zh_dist [overrides], or launchers/torchrun_local.sh)" >&2
  exit 2
fi

# ---- Where things are ------------------------------------------------------------------------------
HOME_DIR=${LLAMA3ZH_HOME:-${SLURM_SUBMIT_DIR:-$PWD}}
cd "$HOME_DIR" || fail "cannot cd to $HOME_DIR (set LLAMA3ZH_HOME to the repository root)" 2
if [[ -n "${LLAMA3ZH_PYTHON:-}" ]]; then
  PYTHON=$LLAMA3ZH_PYTHON
elif [[ -x "$HOME_DIR/.venv/bin/python" ]]; then
  PYTHON=$HOME_DIR/.venv/bin/python
else
  PYTHON=$(command -v python3 || command -v python) || fail "no python found (set LLAMA3ZH_PYTHON)" 2
fi
# $0 is Slurm's spooled copy of this script; keep it for resubmission where requeue is not allowed.
SCRIPT_COPY=$0
NNODES=${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:-1}}
ATTEMPT=${SLURM_RESTART_COUNT:-0}

# ---- Overrides: the user's, plus what the allocation fixes ------------------------------------------
overrides=("$@")
has_override() {  # key: true when the user set it on the command line
  local a
  for a in "${overrides[@]}"; do
    [[ "$a" == "$1="* || "$a" == "+$1="* || "$a" == "++$1="* ]] && return 0
  done
  return 1
}
override_value() {
  local a v=""
  for a in "${overrides[@]}"; do
    [[ "$a" =~ ^\+{0,2}"$1"=(.*)$ ]] && v=${BASH_REMATCH[1]}
  done
  printf '%s' "$v"
}
if has_override cluster.nodes; then
  if [[ "$(override_value cluster.nodes)" != "$NNODES" ]]; then
    fail "cluster.nodes=$(override_value cluster.nodes) but this job has $NNODES node(s): submit with sbatch --nodes=$(override_value cluster.nodes), or drop the cluster.nodes override (it follows the allocation)" 2
  fi
else
  overrides+=("cluster.nodes=$NNODES")
fi
if ! has_override cluster.nproc_per_node && [[ "${SLURM_GPUS_ON_NODE:-0}" =~ ^[1-9][0-9]*$ ]]; then
  overrides+=("cluster.nproc_per_node=$SLURM_GPUS_ON_NODE")   # one rank per allocated GPU
fi
# NCCL/network knobs (cluster.env) from conf/cluster/slurm.yaml, merged over the chosen cluster config.
has_override cluster@_global_ || overrides+=("+cluster@_global_=slurm")

say "job $SLURM_JOB_ID attempt $((ATTEMPT + 1)) on ${SLURM_JOB_NODELIST:-?} ($NNODES node(s)); python: $PYTHON"
say "overrides: ${overrides[*]}"

# ---- 1. Pre-flight (before srun): compose + validate; bad config -> exit 2 in seconds ---------------
preflight_out=$("$PYTHON" -m llama3zh_dist.preflight "${overrides[@]}" 2>&1)
preflight_rc=$?
printf '%s\n' "$preflight_out"
if ((preflight_rc != 0)); then
  fail "pre-flight failed (exit $preflight_rc): fix the setting above and submit again; nothing was started" "$preflight_rc"
fi
RUN_DIR=$(sed -n 's/^preflight ok:.*run\.dir=//p' <<<"$preflight_out" | tail -n 1)
[[ -n "$RUN_DIR" ]] || fail "pre-flight did not report run.dir" 1
[[ "$RUN_DIR" == /* ]] || RUN_DIR="$PWD/$RUN_DIR"
STATE_DIR="$RUN_DIR/slurm"
STATE_FILE="$STATE_DIR/state"
mkdir -p "$STATE_DIR" || fail "cannot create $STATE_DIR" 1

# The job output, linked from the run folder.
stdout_path=$(scontrol show job -o "$SLURM_JOB_ID" 2>/dev/null | grep -o 'StdOut=[^ ]*' | head -n 1 | cut -d= -f2-)
if [[ -n "$stdout_path" ]]; then
  [[ "$stdout_path" == /* ]] || stdout_path="${SLURM_SUBMIT_DIR:-$PWD}/$stdout_path"
  ln -sfn "$stdout_path" "$STATE_DIR/$SLURM_JOB_ID.out" 2>/dev/null || true
fi

# ---- 2. Finished already? --------------------------------------------------------------------------
if [[ -e "$RUN_DIR/FINISHED" ]]; then
  say "run.dir=$RUN_DIR is FINISHED ($(cat "$RUN_DIR/FINISHED" 2>/dev/null)); nothing to do"
  exit 0
fi

# ---- Progress bookkeeping (survives requeues: it lives in the run folder) ----------------------------
last_step() {  # highest optimizer step in metrics.jsonl, 0 when none
  [[ -s "$RUN_DIR/metrics.jsonl" ]] || { echo 0; return; }
  "$PYTHON" - "$RUN_DIR/metrics.jsonl" <<'EOF' 2>/dev/null || echo 0
import json, sys
best = 0
with open(sys.argv[1], errors="replace") as f:
    for line in f:
        try:
            best = max(best, int(json.loads(line).get("step") or 0))
        except Exception:
            pass  # a torn last line after a kill
print(best)
EOF
}
state_get() {  # key default
  local v=""
  [[ -s "$STATE_FILE" ]] && v=$(sed -n "s/^$1=//p" "$STATE_FILE" | tail -n 1)
  printf '%s' "${v:-$2}"
}
state_put() {  # key=value ... (rewrites the file atomically)
  local tmp="$STATE_FILE.tmp.$$" kv keys=() vals=() k i
  for k in last_step stalled attempts last_job last_exit; do keys+=("$k"); vals+=("$(state_get "$k" "")"); done
  for kv in "$@"; do
    for i in "${!keys[@]}"; do [[ "${keys[$i]}" == "${kv%%=*}" ]] && vals[i]=${kv#*=}; done
  done
  : >"$tmp"
  for i in "${!keys[@]}"; do printf '%s=%s\n' "${keys[$i]}" "${vals[$i]}" >>"$tmp"; done
  mv -f "$tmp" "$STATE_FILE"
}
STEP_BEFORE=$(last_step)
say "run.dir=$RUN_DIR (last logged step: $STEP_BEFORE)"
state_put "attempts=$(($(state_get attempts 0) + 1))" "last_job=$SLURM_JOB_ID"

# ---- 3. Rendezvous: first host of the allocation, a port derived from the job id ---------------------
MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
[[ -n "$MASTER_ADDR" ]] || fail "cannot read the allocation's hosts (scontrol show hostnames)" 1
if [[ -n "${LLAMA3ZH_MASTER_PORT:-}" ]]; then
  MASTER_PORT=$LLAMA3ZH_MASTER_PORT
  LLAMA3ZH_MASTER_PORT_SOURCE=LLAMA3ZH_MASTER_PORT   # named in the launcher's message if it is held
else
  LLAMA3ZH_MASTER_PORT_SOURCE=any   # a first choice: the launcher on node 0 moves to a free port if held
  # 10000-29999: below the usual ephemeral range (32768+), distinct for concurrent jobs and attempts.
  MASTER_PORT=$((10000 + (SLURM_JOB_ID % 5000) * 4 + ATTEMPT % 4))
  # The batch script usually runs on the first node: skip a port something there already holds.
  if [[ "$(hostname -s)" == "$MASTER_ADDR" || "${SLURMD_NODENAME:-}" == "$MASTER_ADDR" ]]; then
    for _ in 1 2 3 4 5 6 7 8; do
      "$PYTHON" -c 'import socket,sys; s=socket.socket(); s.bind(("", int(sys.argv[1])))' "$MASTER_PORT" 2>/dev/null && break
      MASTER_PORT=$((MASTER_PORT + 20000 + RANDOM % 1000))
      ((MASTER_PORT < 65000)) || MASTER_PORT=$((10000 + RANDOM % 20000))
    done
  fi
fi
export MASTER_ADDR MASTER_PORT LLAMA3ZH_MASTER_PORT_SOURCE
say "rendezvous $MASTER_ADDR:$MASTER_PORT"

# CPUs per launcher: the whole node's allocation (srun does not inherit sbatch's cpus-per-task in
# every Slurm version, and one CPU per task would pin all of a node's ranks onto one core).
cpus_per_node() {
  local spec=${SLURM_JOB_CPUS_PER_NODE:-} min="" part n
  IFS=, read -ra parts <<<"$spec"
  for part in "${parts[@]}"; do
    n=${part%%(*}
    [[ "$n" =~ ^[0-9]+$ ]] || continue
    [[ -z "$min" || "$n" -lt "$min" ]] && min=$n
  done
  echo "${min:-${SLURM_CPUS_ON_NODE:-1}}"
}
CPUS=$(cpus_per_node)

# ---- 4./5. One launcher per node; the warning signal is forwarded to the step ------------------------

# Each node's task: a banner, then the launcher. A launcher that fails (crash, data prep error) ends
# the step on every node at once (scancel of this step) instead of leaving the other nodes waiting
# for a collective timeout. srun's own --kill-on-bad-exit would do that for exit 75 too, killing a
# launcher that is itself just about to exit 75 (and turning the step's exit code into 143).
# The trap keeps this small shell alive when the step is signalled; the launcher handles the signal.
# shellcheck disable=SC2016  # expanded by the task's shell on each node
node_task='echo "[node $SLURM_NODEID of $SLURM_NNODES: host $(hostname -s), slurm node ${SLURMD_NODENAME:-?}] launcher starting, rendezvous $MASTER_ADDR:$MASTER_PORT"
trap : USR1 TERM INT
"$@"
rc=$?
if [ "$rc" -ne 0 ] && [ "$rc" -ne 75 ]; then
  echo "[node $SLURM_NODEID] launcher exited $rc: ending the training step on all nodes"
  sleep 1   # let srun forward the line before the step goes down
  scancel "$SLURM_JOB_ID.$SLURM_STEP_ID" 2>/dev/null
fi
exit "$rc"'
if [[ -n "$SIGNALLED" ]]; then
  rc=$EXIT_REQUEUE   # signalled before the step started: nothing to save, requeue as it is
else
  PHASE=train
  srun --nodes="$NNODES" --ntasks="$NNODES" --ntasks-per-node=1 --cpus-per-task="$CPUS" \
    --kill-on-bad-exit=0 --unbuffered \
    env -u RANK -u WORLD_SIZE -u LOCAL_RANK -u LOCAL_WORLD_SIZE -u NODE_RANK -u GROUP_RANK \
    bash -c "$node_task" launcher "$PYTHON" -m llama3zh_dist "${overrides[@]}" &
  srun_pid=$!
  # `wait` returns early whenever a trapped signal arrives; keep waiting until srun is really gone.
  while true; do
    wait "$srun_pid"
    rc=$?
    kill -0 "$srun_pid" 2>/dev/null || break
  done
fi
srun_pid=""
PHASE=decide   # from here on a signal is only recorded

# ---- 6. Decide: finished, requeue, or stop -----------------------------------------------------------
STEP_AFTER=$(last_step)
PREV_STEP=$(state_get last_step "$STEP_BEFORE")
if ((STEP_AFTER > PREV_STEP)); then STALLED=0; else STALLED=$(($(state_get stalled 0) + 1)); fi
state_put "last_step=$STEP_AFTER" "stalled=$STALLED" "last_exit=$rc"
say "training step exited $rc; last step $STEP_AFTER (was $STEP_BEFORE)${SIGNALLED:+, after SIG$SIGNALLED}"

if [[ -e "$RUN_DIR/FINISHED" ]]; then
  say "run finished: $RUN_DIR/FINISHED (export in $RUN_DIR/export)"
  exit 0
fi
if ((rc == 0)); then
  say "the trainer exited 0 without writing FINISHED; not requeueing"
  exit 0
fi

want_requeue=0
((rc == EXIT_REQUEUE)) && want_requeue=1
[[ -n "$SIGNALLED" && $rc -ne 2 ]] && want_requeue=1
[[ "${LLAMA3ZH_REQUEUE_ON_FAILURE:-0}" == 1 && $rc -ne 2 ]] && want_requeue=1
if ((want_requeue == 0)); then
  ((rc > 128)) && say "exit $rc = a task killed by signal $((rc - 128)); each node's own exit code is in the lines above"
  fail "training failed (exit $rc); not requeueing. Fix the cause and submit the same command again: it resumes from $RUN_DIR/checkpoints/latest" "$rc"
fi
MAX_STALLED=${LLAMA3ZH_MAX_STALLED:-3}
if ((STALLED > MAX_STALLED)); then
  fail "stopping the requeue chain: $STALLED consecutive attempts without a new optimizer step (still at step $STEP_AFTER; limit LLAMA3ZH_MAX_STALLED=$MAX_STALLED). Look at the output of the attempts above, fix the cause, and submit the same command again to resume." 1
fi
if [[ "${LLAMA3ZH_NO_REQUEUE:-0}" == 1 ]]; then
  say "saved for requeue, but LLAMA3ZH_NO_REQUEUE=1: submit the same command again to resume"
  exit "$EXIT_REQUEUE"
fi

# A job the user cancelled (scancel also sends SIGTERM), or that Slurm itself is requeueing
# (preemption with PreemptMode=REQUEUE, node failure), is not ours to requeue or resubmit.
job_state=$(scontrol show job -o "$SLURM_JOB_ID" 2>/dev/null | grep -o 'JobState=[^ ]*' | head -n 1 | cut -d= -f2)
if [[ -n "$job_state" && "$job_state" != RUNNING ]]; then
  say "job is $job_state (cancelled, or requeued by Slurm itself): not requeueing it here; the checkpoint is saved, submit the same command to resume"
  exit "$rc"
fi
say "requeueing job $SLURM_JOB_ID (attempts without progress: $STALLED/$MAX_STALLED); the next attempt resumes from $RUN_DIR/checkpoints/latest"
if requeue_msg=$(scontrol requeue "$SLURM_JOB_ID" 2>&1); then
  # scontrol ends this attempt right away (the job goes back to PENDING); nothing to do after it.
  sleep 30
  exit "$EXIT_REQUEUE"
fi
say "scontrol requeue refused (${requeue_msg//$'\n'/ }); submitting a copy of this job that starts after it"

# Resubmission: same script and overrides, same main resources. Stale SLURM_* variables of this job
# must not leak into the new submission (sbatch/srun read several of them as input).
job_info=$(scontrol show job -o "$SLURM_JOB_ID" 2>/dev/null)
field() { grep -o "\\b$1=[^ ]*" <<<"$job_info" | head -n 1 | cut -d= -f2-; }
cp -f "$SCRIPT_COPY" "$STATE_DIR/train.sh" || fail "cannot copy the job script to $STATE_DIR" 1
sb=(sbatch --parsable --dependency="afterany:$SLURM_JOB_ID" --nodes="$NNODES"
  --job-name="${SLURM_JOB_NAME:-llama3zh}" --chdir="$HOME_DIR" --open-mode=append)
[[ -n "${SLURM_JOB_PARTITION:-}" ]] && sb+=(--partition="$SLURM_JOB_PARTITION")
[[ -n "${SLURM_JOB_ACCOUNT:-}" ]] && sb+=(--account="$SLURM_JOB_ACCOUNT")
[[ -n "${SLURM_JOB_QOS:-}" ]] && sb+=(--qos="$SLURM_JOB_QOS")
v=$(field TimeLimit); [[ -n "$v" && "$v" != UNLIMITED ]] && sb+=(--time="$v")
v=$(field StdOut); [[ -n "$v" ]] && sb+=(--output="$v")
v=$(field StdErr); [[ -n "$v" ]] && sb+=(--error="$v")
v=$(field TresPerNode)
if [[ "$v" =~ gpu:([0-9]+) ]]; then sb+=(--gpus-per-node="${BASH_REMATCH[1]}"); else sb+=(--gpus-per-node=0); fi
unset_slurm=()
while IFS= read -r name; do
  [[ "$name" == SLURM_CONF ]] || unset_slurm+=(-u "$name")
done < <(compgen -e | grep -E '^(SLURM|SBATCH|SRUN|SALLOC)_')
# Overrides as the user gave them (the script adds the allocation-derived ones again).
if new_id=$(env "${unset_slurm[@]}" "${sb[@]}" "$STATE_DIR/train.sh" "$@"); then
  say "submitted job $new_id to continue the run"
  exit "$EXIT_REQUEUE"
fi
fail "could not requeue or resubmit; submit the same command again to resume" "$EXIT_REQUEUE"
