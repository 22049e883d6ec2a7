#!/usr/bin/env bash
# stop_cluster.sh - stop the single-node SLURM cluster started by
# start_cluster.sh.  Only the daemons whose PIDs were recorded in
# $CONTAM_SLURM_DIR/run/*.pid (and whose /proc/<pid>/comm still matches) are
# signalled; nothing is killed by name.
#
#   CONTAM_SLURM_DIR   state dir (default /tmp/contam-slurm)
#   --purge            additionally delete the whole state dir (config, DB,
#                      accounting history, logs). Without it, tests can still
#                      read $CONTAM_SLURM_DIR/log/* after stopping and a later
#                      start keeps job ids and sacct history.
set -euo pipefail

STATE=${CONTAM_SLURM_DIR:-/tmp/contam-slurm}
RUN=$STATE/run
PURGE=0
[ "${1:-}" = "--purge" ] && PURGE=1
export SLURM_CONF=$STATE/etc/slurm.conf

say() { echo "[contam-slurm] $*"; }
declare -A COMM=([munged]=munged [mariadbd]=mariadbd [slurmdbd]=slurmdbd
                 [slurmctld]=slurmctld [slurmd]=slurmd)

ours() {  # ours <name>: print the recorded PID if that process is still ours
    local f=$RUN/$1.pid pid
    [ -s "$f" ] || return 1
    pid=$(cat "$f")
    [ -r "/proc/$pid/comm" ] && [ "$(cat "/proc/$pid/comm")" = "${COMM[$1]}" ] || return 1
    # an exited daemon whose parent (e.g. a container's PID 1) does not reap it
    [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ] || return 1
    echo "$pid"
}

stop_one() {  # stop_one <name>: SIGTERM, wait up to 20 s, then SIGKILL
    local name=$1 pid i
    if pid=$(ours "$name"); then
        kill -TERM "$pid" 2>/dev/null || true
        for i in $(seq 1 100); do
            [ -d "/proc/$pid" ] || break
            # reap state: a zombie has comm but no longer runs
            [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" = Z ] && break
            sleep 0.2
        done
        if [ -d "/proc/$pid" ] && [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ]; then
            say "$name (pid $pid) did not stop after 20 s - SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            sleep 0.5
        fi
        say "stopped $name (pid $pid)"
    fi
    rm -f "$RUN/$name.pid" "$RUN/$name.daemon.pid"
}

if [ ! -d "$RUN" ]; then
    say "nothing to stop in $STATE"
else
    # cancel remaining jobs on OUR cluster first, so their slurmstepd processes
    # end cleanly (they are not children we could track by PID)
    if ours slurmctld >/dev/null && [ -r "$SLURM_CONF" ]; then
        jobs=$(squeue -h -o %i 2>/dev/null || true)
        if [ -n "$jobs" ]; then
            # shellcheck disable=SC2086
            scancel $jobs 2>/dev/null || true
            for _ in $(seq 1 50); do
                [ -z "$(squeue -h -t PD,R,CG,S -o %i 2>/dev/null)" ] && break
                sleep 0.2
            done
        fi
    fi
    for d in slurmd slurmctld slurmdbd mariadbd munged; do
        stop_one "$d"
    done
    rm -f "$STATE/munge/munge.socket" "$STATE/munge/munge.socket.lock" "$RUN/mysqld.sock"
fi

# Always remove our /etc/slurm/slurm.conf link: with it in place but no
# slurmctld, every SLURM client (and the executor plugin, which runs
# `scontrol show config` whenever Snakemake starts) retries for ~10 s.
# start_cluster.sh puts it back.
if [ -L /etc/slurm/slurm.conf ] && [ "$(readlink /etc/slurm/slurm.conf)" = "$STATE/etc/slurm.conf" ]; then
    rm -f /etc/slurm/slurm.conf
fi
if [ $PURGE = 1 ]; then
    rm -rf "$STATE"
    say "purged $STATE"
fi
