#!/usr/bin/env bash
# A real two-node Slurm cluster on this one machine, for tests/slurm and CI.
#
#   tests/slurm/cluster.sh start    install (if missing), configure and start munge, slurmctld and two
#                                   slurmd (node1, node2); returns once sinfo shows both nodes idle
#   tests/slurm/cluster.sh status   daemons and sinfo; exit 0 when the cluster is up and usable
#   tests/slurm/cluster.sh stop     cancel the test jobs, stop the daemons this script started (by pid)
#   tests/slurm/cluster.sh env      print `export SLURM_CONF=...` for a shell that wants the clients
#
# Runs as root (CI: a fresh Debian machine). Idempotent: `start` on a running cluster only checks it,
# `stop` on a stopped one does nothing. Both nodes are slurmd processes of this host
# (NodeAddr=127.0.0.1, distinct ports; Debian's slurm-wlm is built with multiple-slurmd support),
# with proctrack/linuxproc and task/none: no cgroups needed, so it works in containers too.
#
# Settings (environment):
#   SLURM_TEST_DIR        state, spool and logs (default /tmp/llama3zh-slurm)
#   SLURM_TEST_PORT       first of three TCP ports: slurmctld, slurmd node1, slurmd node2 (default 16817)
#   SLURM_TEST_CPUS       CPUs each node advertises (default: this machine's CPU count)
#   SLURM_TEST_NO_INSTALL=1  never call apt-get (fail if the packages are missing)
#
# The clients (sbatch, squeue, ...) find the config through /etc/slurm/slurm.conf, which this script
# links to its own config when that path is free (or already its link); otherwise export SLURM_CONF
# (see `env`).
set -euo pipefail

STATE_DIR=${SLURM_TEST_DIR:-/tmp/llama3zh-slurm}
PORT0=${SLURM_TEST_PORT:-16817}
CONF="$STATE_DIR/slurm.conf"
SYS_CONF=/etc/slurm/slurm.conf
MARKER="# written by llama3zh_dist tests/slurm/cluster.sh"
NODES=(node1 node2)
export SLURM_CONF="$CONF"

log() { printf 'cluster.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

pid_alive() { [[ -n "${1:-}" ]] && kill -0 "$1" 2>/dev/null; }
read_pid() { if [[ -s "$1" ]]; then tr -dc '0-9' <"$1"; fi; }

install_packages() {
  local missing=()
  command -v slurmctld >/dev/null || missing+=(slurmctld)
  command -v slurmd >/dev/null || missing+=(slurmd)
  command -v sbatch >/dev/null || missing+=(slurm-client)
  command -v munged >/dev/null || missing+=(munge)
  ((${#missing[@]} == 0)) && return 0
  [[ "${SLURM_TEST_NO_INSTALL:-0}" == 1 ]] && die "missing packages: ${missing[*]} (SLURM_TEST_NO_INSTALL=1)"
  [[ $(id -u) == 0 ]] || die "missing packages ${missing[*]}; run as root to install them"
  command -v apt-get >/dev/null || die "missing packages ${missing[*]} and no apt-get to install them"
  log "installing ${missing[*]} (apt-get)"
  # policy-rc.d keeps the packages' own services from starting: this script runs its own daemons.
  local had_policy=1
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    had_policy=0
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
  fi
  local rc=0
  {
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      slurmctld slurmd slurm-client munge >/dev/null ||
      { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
          --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null; }
  } || rc=$?
  ((had_policy)) || rm -f /usr/sbin/policy-rc.d
  ((rc == 0)) || die "apt-get install slurmctld slurmd slurm-client munge failed (exit $rc)"
}

ensure_hosts() {
  local n
  for n in "${NODES[@]}"; do
    if ! getent hosts "$n" >/dev/null; then
      log "adding '127.0.0.1 $n' to /etc/hosts"
      printf '127.0.0.1 %s  %s\n' "$n" "# llama3zh_dist slurm test cluster" >>/etc/hosts
    fi
  done
}

write_conf() {
  local cpus=${SLURM_TEST_CPUS:-$(nproc)} host
  host=$(hostname -s)
  mkdir -p "$STATE_DIR"/{ctld,log,spool/node1,spool/node2}
  local tmp="$CONF.tmp.$$"
  cat >"$tmp" <<EOF
$MARKER
# Two-node test cluster on one host ($host). State and logs: $STATE_DIR
ClusterName=llama3zh-test
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$PORT0
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# A requeued job waits cred_expire+1 s before it may start again (default 120 s); the requeue tests
# wait it out several times. 10 s still covers a step launch on these two local nodes many times over.
AuthInfo=cred_expire=10
StateSaveLocation=$STATE_DIR/ctld
SlurmdSpoolDir=$STATE_DIR/spool/%n
SlurmctldPidFile=$STATE_DIR/slurmctld.pid
SlurmdPidFile=$STATE_DIR/slurmd-%n.pid
SlurmctldLogFile=$STATE_DIR/log/slurmctld.log
SlurmdLogFile=$STATE_DIR/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups: processes tracked through /proc, no task binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
MailProg=/bin/true
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
# A requeued job becomes eligible again after cred_expire+1 s but starts only at the next periodic
# pass of the main scheduler (nothing else changed to trigger one): every 2 s here, not every 60 s.
SchedulerParameters=sched_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
GresTypes=gpu
# Jobs may requeue themselves (slurm/train.sh does on preemption); finished jobs stay visible to
# scontrol for an hour so tests can read their exit codes and restart counts.
JobRequeue=1
MinJobAge=3600
ReturnToService=2
KillWait=30
InactiveLimit=0
SlurmctldTimeout=120
SlurmdTimeout=300
NodeName=node1 NodeAddr=127.0.0.1 NodeHostname=$host Port=$((PORT0 + 1)) CPUs=$cpus State=UNKNOWN
NodeName=node2 NodeAddr=127.0.0.1 NodeHostname=$host Port=$((PORT0 + 2)) CPUs=$cpus State=UNKNOWN
PartitionName=debug Nodes=node1,node2 Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
  mv -f "$tmp" "$CONF"
  # Let the plain clients find it, unless a real Slurm config lives there.
  if [[ -L "$SYS_CONF" || ! -e "$SYS_CONF" ]] || grep -qF "$MARKER" "$SYS_CONF" 2>/dev/null; then
    mkdir -p "$(dirname "$SYS_CONF")"
    ln -sfn "$CONF" "$SYS_CONF"
  else
    log "$SYS_CONF belongs to another Slurm; clients need: export SLURM_CONF=$CONF"
  fi
}

munge_ok() { munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; }

start_munge() {
  if munge_ok; then return 0; fi
  if [[ ! -s /etc/munge/munge.key ]]; then
    log "creating /etc/munge/munge.key"
    mkdir -p /etc/munge
    if command -v mungekey >/dev/null; then mungekey --create --force >/dev/null 2>&1 || true; fi
    [[ -s /etc/munge/munge.key ]] || dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
  fi
  chown munge:munge /etc/munge /etc/munge/munge.key 2>/dev/null || true
  chmod 700 /etc/munge
  chmod 400 /etc/munge/munge.key
  mkdir -p /run/munge /var/lib/munge /var/log/munge
  chown munge:munge /run/munge /var/lib/munge /var/log/munge 2>/dev/null || true
  chmod 755 /run/munge
  local user_opt=()
  id munge >/dev/null 2>&1 && command -v runuser >/dev/null && user_opt=(runuser -u munge --)
  "${user_opt[@]}" munged --pid-file=/run/munge/munged.pid ||
    munged --force --pid-file=/run/munge/munged.pid ||
    die "munged did not start"
  local i
  for ((i = 0; i < 50; i++)); do
    munge_ok && break
    sleep 0.2
  done
  munge_ok || die "munge does not answer (munge -n | unmunge fails)"
  read_pid /run/munge/munged.pid >"$STATE_DIR/munged.pid"
  log "munged started (pid $(cat "$STATE_DIR/munged.pid"))"
}

ctld_pid() { read_pid "$STATE_DIR/slurmctld.pid"; }
slurmd_pid() { read_pid "$STATE_DIR/slurmd-$1.pid"; }

start_daemons() {
  local pid n
  pid=$(ctld_pid)
  if ! pid_alive "$pid"; then
    rm -f "$STATE_DIR/slurmctld.pid"
    # -c: a test cluster starts with an empty queue; -i: ignore leftovers in the state files.
    slurmctld -c -i -f "$CONF" || die "slurmctld did not start; see $STATE_DIR/log/slurmctld.log"
  fi
  for n in "${NODES[@]}"; do
    pid=$(slurmd_pid "$n")
    if ! pid_alive "$pid"; then
      rm -f "$STATE_DIR/slurmd-$n.pid"
      slurmd -N "$n" -f "$CONF" || die "slurmd -N $n did not start; see $STATE_DIR/log/slurmd-$n.log"
    fi
  done
}

nodes_state() { sinfo -h -N -o '%N %t' 2>/dev/null | sort -u; }

wait_idle() {
  local i states n_idle
  for ((i = 0; i < 240; i++)); do
    states=$(nodes_state || true)
    n_idle=$(grep -cE '^node[12] (idle|mix|alloc)$' <<<"$states" || true)
    ((n_idle >= 2)) && { log "up: $(tr '\n' ' ' <<<"$states")"; return 0; }
    # A node the controller marked down/drained from an earlier life: bring it back.
    if grep -qE '^node[12] (down|drain|drng|fail)' <<<"$states"; then
      scontrol update nodename=node1,node2 state=resume >/dev/null 2>&1 || true
    fi
    sleep 0.5
  done
  log "nodes not idle after 120 s: $(tr '\n' ' ' <<<"${states:-<no answer>}")"
  tail -n 20 "$STATE_DIR"/log/*.log >&2 || true
  return 1
}

cmd_start() {
  [[ $(id -u) == 0 ]] || die "run as root (the test cluster's daemons run as root)"
  install_packages
  ensure_hosts
  mkdir -p "$STATE_DIR"
  # Rewrite the config only when nothing runs on it (a running cluster keeps its config).
  if ! pid_alive "$(ctld_pid)"; then write_conf; fi
  start_munge
  start_daemons
  wait_idle || die "the test cluster did not come up"
}

stop_pid() {  # name pidfile
  local pid i
  pid=$(read_pid "$2")
  if pid_alive "$pid"; then
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do pid_alive "$pid" || break; sleep 0.1; done
    if pid_alive "$pid"; then log "$1 (pid $pid) ignores SIGTERM; SIGKILL"; kill -KILL "$pid" 2>/dev/null || true; fi
    log "stopped $1 (pid $pid)"
  fi
  rm -f "$2"
}

cmd_stop() {
  local jobs n i
  if pid_alive "$(ctld_pid)"; then
    jobs=$(squeue -h -o '%A' 2>/dev/null | tr '\n' ' ' || true)
    if [[ -n "${jobs// /}" ]]; then
      log "cancelling test jobs: $jobs"
      # shellcheck disable=SC2086  # word splitting wanted: a list of job ids
      scancel $jobs 2>/dev/null || true
      for ((i = 0; i < 60; i++)); do
        [[ -z "$(squeue -h -o '%A' 2>/dev/null)" ]] && break
        sleep 0.5
      done
    fi
  fi
  for n in "${NODES[@]}"; do stop_pid "slurmd $n" "$STATE_DIR/slurmd-$n.pid"; done
  stop_pid slurmctld "$STATE_DIR/slurmctld.pid"
  # munged only when this script started it.
  if [[ -s "$STATE_DIR/munged.pid" ]]; then
    if [[ "$(read_pid "$STATE_DIR/munged.pid")" == "$(read_pid /run/munge/munged.pid)" ]]; then
      stop_pid munged "$STATE_DIR/munged.pid"
    fi
    rm -f "$STATE_DIR/munged.pid"
  fi
}

cmd_status() {
  local ok=0 n pid
  pid=$(read_pid "$STATE_DIR/munged.pid"); [[ -n "$pid" ]] || pid=$(read_pid /run/munge/munged.pid)
  if munge_ok; then echo "munged: up (pid ${pid:-?})"; else echo "munged: down"; ok=1; fi
  pid=$(ctld_pid)
  if pid_alive "$pid"; then echo "slurmctld: up (pid $pid)"; else echo "slurmctld: down"; ok=1; fi
  for n in "${NODES[@]}"; do
    pid=$(slurmd_pid "$n")
    if pid_alive "$pid"; then echo "slurmd $n: up (pid $pid)"; else echo "slurmd $n: down"; ok=1; fi
  done
  if ((ok == 0)); then
    sinfo -N -o '%N %P %t %c' || ok=1
    [[ $(nodes_state | grep -cE '^node[12] (idle|mix|alloc)$') -ge 2 ]] || { echo "nodes: not ready"; ok=1; }
  fi
  return "$ok"
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  restart) cmd_stop; cmd_start ;;
  env) echo "export SLURM_CONF=$CONF" ;;
  *) echo "usage: $0 start|stop|status|restart|env" >&2; exit 2 ;;
esac
