#!/usr/bin/env bash
# Starts a one-node SLURM on this machine (munged, slurmctld, slurmd), for trying
# launch/slurm.sh without a cluster. Installs nothing: needs Debian's slurm-wlm and munge
# (apt-get install slurm-wlm munge) and root. Every file lives under STATE_DIR; no
# system configuration is touched.
#
# Usage: launch/local_slurm.sh start|stop
#   env: STATE_DIR (default /tmp/fixres_slurm), SLURMCTLD_PORT (default 6817),
#        SLURMD_PORT (default 6818)
#   then: export SLURM_CONF=$STATE_DIR/slurm.conf; GPUS_PER_NODE=0 NODES=1 TASKS_PER_NODE=2 \
#           CPUS_PER_TASK=1 launch/slurm.sh tests/tiny_config.py /tmp/run
set -euo pipefail

STATE_DIR="${STATE_DIR:-/tmp/fixres_slurm}"
export SLURM_CONF="$STATE_DIR/slurm.conf"

stop() {
  local name
  for name in slurmd slurmctld munged; do
    if [ -f "$STATE_DIR/$name.pid" ]; then
      kill "$(cat "$STATE_DIR/$name.pid")" 2>/dev/null || true
      rm -f "$STATE_DIR/$name.pid"
    fi
  done
}

write_config() {
  local host cpus memory
  host="$(hostname -s)"
  cpus="$(nproc)"
  memory="$(awk '/MemTotal/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)"
  # No systemd or cgroups needed: linuxproc tracking, no task plugin.
  cat > "$SLURM_CONF" <<EOF
ClusterName=fixres
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmctldPort=${SLURMCTLD_PORT:-6817}
SlurmdPort=${SLURMD_PORT:-6818}
AuthType=auth/munge
AuthInfo=socket=$STATE_DIR/munge.socket
CredType=cred/munge
StateSaveLocation=$STATE_DIR/ctld
SlurmdSpoolDir=$STATE_DIR/spool
SlurmctldPidFile=$STATE_DIR/slurmctld.pid
SlurmdPidFile=$STATE_DIR/slurmd.pid
SlurmctldLogFile=$STATE_DIR/slurmctld.log
SlurmdLogFile=$STATE_DIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
SchedulerParameters=sched_interval=2
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=local Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
}

start_munge() {
  if [ ! -f "$STATE_DIR/munge.key" ]; then
    head -c 1024 /dev/urandom > "$STATE_DIR/munge.key"
    chmod 400 "$STATE_DIR/munge.key"
  fi
  munged --force --key-file="$STATE_DIR/munge.key" --socket="$STATE_DIR/munge.socket" \
    --pid-file="$STATE_DIR/munged.pid" --log-file="$STATE_DIR/munged.log" \
    --seed-file="$STATE_DIR/munge.seed"
}

wait_for_idle_node() {
  local i
  for i in $(seq 60); do
    if sinfo -h -o '%t' 2>/dev/null | grep -qx 'idle'; then
      return 0
    fi
    sleep 1
  done
  echo "error: the node did not come up; see $STATE_DIR/slurmctld.log and slurmd.log" >&2
  return 1
}

start() {
  for tool in munged slurmctld slurmd sinfo; do
    if ! command -v "$tool" >/dev/null; then
      echo "error: $tool not found: apt-get install slurm-wlm munge" >&2
      exit 1
    fi
  done
  stop
  mkdir -p "$STATE_DIR/ctld" "$STATE_DIR/spool"
  chmod 700 "$STATE_DIR"
  write_config
  start_munge
  slurmctld -f "$SLURM_CONF"
  slurmd -f "$SLURM_CONF"
  wait_for_idle_node
  echo "SLURM is up: export SLURM_CONF=$SLURM_CONF"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  *) sed -n '2,/^$/s/^# \{0,1\}//p' "$0"; exit 2 ;;
esac
