#!/usr/bin/env bash
# A single-node Slurm for tests and local trials, on a machine without systemd.
#
#   scripts/slurm-local.sh up   [DIR]   install (Debian's slurm-wlm, munge) if needed, start
#                                       munged, slurmctld and slurmd; print the SLURM_CONF line
#   scripts/slurm-local.sh down [DIR]   stop exactly the daemons `up` started (by recorded pid)
#   scripts/slurm-local.sh env  [DIR]   print `export SLURM_CONF=...` for a running one
#
# DIR (default /tmp/cfpipe-slurm) holds the configuration, state, spool, logs and pid files.
# The node advertises 8 CPUs (more than exist: jobs of tests are small), 128 GiB and two fake
# GPUs (character devices copied from /dev/null), so resource requests such as `--gres=gpu:1`
# and `--mem=32G` are scheduled as on a cluster. There is no accounting database: finished jobs
# stay visible to `squeue -t all` and `scontrol show job` for an hour (MinJobAge), and
# `sacct -c` reads the job completion file. The facts behind each setting are in
# ../shared/notes/slurm-single-node.md.
set -euo pipefail

cmd=${1:-}
dir=${2:-/tmp/cfpipe-slurm}
node=cfpipe-node

die() { echo "slurm-local: $*" >&2; exit 1; }

pid_alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }

install_packages() {
  if command -v slurmctld >/dev/null 2>&1 && command -v slurmd >/dev/null 2>&1 \
     && command -v sbatch >/dev/null 2>&1 && command -v munged >/dev/null 2>&1; then
    return
  fi
  [ "$(id -u)" = 0 ] || die "slurm-wlm and munge are not installed, and installing them needs root"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
}

write_config() {
  mkdir -p "$dir"/{state,spool,log,dev}
  # Fake GPUs: the scheduler only needs one device file per GPU.
  for i in 0 1; do
    [ -e "$dir/dev/gpu$i" ] || mknod "$dir/dev/gpu$i" c 1 3
  done
  cat >"$dir/gres.conf" <<EOF
NodeName=$node Name=gpu File=$dir/dev/gpu[0-1]
EOF
  cat >"$dir/slurm.conf" <<EOF
ClusterName=cfpipe-test
SlurmctldHost=$(hostname)(127.0.0.1)
SlurmUser=root
SlurmctldPort=6817
SlurmdPort=6818
AuthType=auth/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=$dir/log/jobcomp.txt
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
SlurmdParameters=config_overrides
MinJobAge=3600
MailProg=/bin/true
ReturnToService=2
GresTypes=gpu
NodeName=$node NodeHostname=$(hostname) NodeAddr=127.0.0.1 CPUs=8 RealMemory=131072 Gres=gpu:2 State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP
EOF
}

start_munge() {
  # A munged that is already running (the machine's own) serves us too; only one we start is
  # ours to stop.
  if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    return
  fi
  mkdir -p /run/munge
  chown munge:munge /run/munge 2>/dev/null || true
  chmod 0755 /run/munge
  runuser -u munge -- /usr/sbin/munged
  for _ in $(seq 50); do
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
      cat /run/munge/munged.pid >"$dir/munged.ours"
      return
    fi
    sleep 0.1
  done
  die "munged did not start"
}

up() {
  install_packages
  if [ -f "$dir/slurmctld.pid" ] && pid_alive "$(cat "$dir/slurmctld.pid")"; then
    echo "slurm-local: already running in $dir" >&2
    env_line
    return
  fi
  write_config
  start_munge
  export SLURM_CONF="$dir/slurm.conf"
  slurmctld -c -f "$SLURM_CONF"
  slurmd -N "$node" -f "$SLURM_CONF"
  for _ in $(seq 150); do
    state=$(sinfo -h -o %T 2>/dev/null || true)
    if [ "$state" = idle ]; then
      env_line
      return
    fi
    sleep 0.1
  done
  echo "slurm-local: the node did not become idle (state: ${state:-none}); logs in $dir/log" >&2
  tail -5 "$dir/log/slurmctld.log" "$dir/log/slurmd.log" >&2 || true
  down
  exit 1
}

down() {
  # Only what `up` started, by its recorded pid: never by process name, which could hit a
  # cluster's own daemons.
  for f in slurmd.pid slurmctld.pid munged.ours; do
    [ -f "$dir/$f" ] || continue
    pid=$(cat "$dir/$f")
    if pid_alive "$pid"; then
      kill "$pid"
      for _ in $(seq 50); do pid_alive "$pid" || break; sleep 0.1; done
      pid_alive "$pid" && kill -9 "$pid"
    fi
    rm -f "$dir/$f"
  done
}

env_line() { echo "export SLURM_CONF=$dir/slurm.conf"; }

case "$cmd" in
  up) up ;;
  down) down ;;
  env) env_line ;;
  *) die "usage: $0 up|down|env [DIR]" ;;
esac
