#!/usr/bin/env bash
# A throw-away single-node SLURM 22.05 cluster with accounting, for the test suite and for trying
# `--profile slurm` on one machine. Everything lives in one folder; the daemons (munged, MariaDB,
# slurmdbd, slurmctld, slurmd) are started in the foreground in the background, their pids written
# to DIR/run/*.pid, and `down` stops exactly those pids. Nothing outside DIR is written (the Debian
# packages are installed by `install` only when a command is missing; that needs root).
#
#   tests/slurm/cluster.sh install            # apt-get the Debian packages if needed (root)
#   tests/slurm/cluster.sh up DIR             # start; prints the `export ...` line to use
#   export SLURM_CONF=DIR/etc/slurm.conf PATH=DIR/bin:$PATH   # then sbatch/sacct/snakemake --profile slurm use it
#   tests/slurm/cluster.sh down DIR           # cancel its jobs, stop its daemons by pid
#
# DIR/bin holds wrappers of the client commands (srun, sbatch, sacct, ...) that set SLURM_CONF: inside a
# job, Snakemake's jobstep plugin starts each step with `srun` after removing SLURM_* variables, and a
# real cluster's /etc/slurm/slurm.conf is exactly what this private cluster must not write.
#
# The node advertises one GPU through gres (`Gres=gpu:1`, backed by an empty stand-in file
# DIR/dev/nvidia0: nothing is bound), so `--gpus=1` requests schedule as on a GPU cluster; jobs run as the calling user.
set -euo pipefail

PACKAGES=(slurm-wlm slurmdbd munge mariadb-server mariadb-client)
COMMANDS=(slurmctld slurmd slurmdbd sbatch sacct sacctmgr munged mungekey mariadbd mariadb-install-db mariadb)

missing() {
    local c
    for c in "${COMMANDS[@]}"; do
        command -v "$c" >/dev/null 2>&1 || [ -x "/usr/sbin/$c" ] || { echo "$c"; return 0; }
    done
    return 1
}

install() {
    if ! missing >/dev/null; then echo "SLURM, munge and MariaDB are installed."; return 0; fi
    [ "$(id -u)" = 0 ] || { echo "Installing ${PACKAGES[*]} needs root (apt-get)." >&2; exit 1; }
    # Package scripts must not start the system's own daemons: we start ours below.
    export DEBIAN_FRONTEND=noninteractive RUNLEVEL=1
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
    local what=$2 end=$((SECONDS + $1)); shift 2
    while [ $SECONDS -lt $end ]; do timeout 10 "$@" >/dev/null 2>&1 && return 0; sleep 0.25; done
    echo "cluster.sh: $what did not come up in time; see $D/log/" >&2
    return 1
}

start() {  # start NAME COMMAND...: run in the foreground of a background shell, record its pid
    local name=$1; shift
    "$@" >>"$D/log/$name.out" 2>&1 &
    echo $! >"$D/run/$name.pid"
}

up() {
    export PATH="$PATH:/usr/sbin:/sbin"
    if m=$(missing); then echo "cluster.sh: '$m' is missing; run '$0 install' first (root)." >&2; exit 1; fi
    mkdir -p "$D"/{etc,run,log,state,spool,munge,db,bin}
    chmod 700 "$D/munge" "$D/etc"
    local host user mem ctld_port slurmd_port dbd_port db_port
    host=$(hostname -s); user=$(id -un)
    mem=$(awk '/MemTotal/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)
    ctld_port=$(free_port); slurmd_port=$(free_port); dbd_port=$(free_port); db_port=$(free_port)

    # munge: a private key and socket
    mungekey --create --keyfile="$D/munge/munge.key" --force
    chmod 400 "$D/munge/munge.key"
    local sock="$D/munge/munge.socket"
    start munged munged --foreground --force --socket="$sock" --key-file="$D/munge/munge.key" \
        --pid-file="$D/run/munged.daemon.pid" --log-file="$D/log/munged.log" --seed-file="$D/munge/seed"
    wait_for 20 munged test -S "$sock"

    # MariaDB in a private datadir, TCP on 127.0.0.1 only
    mariadb-install-db --no-defaults --datadir="$D/db" --user="$user" --auth-root-authentication-method=normal \
        --skip-test-db >"$D/log/mariadb-install.log" 2>&1
    start mariadbd mariadbd --no-defaults --datadir="$D/db" --socket="$D/run/mysql.sock" --port="$db_port" \
        --bind-address=127.0.0.1 --skip-name-resolve --pid-file="$D/run/mariadb.daemon.pid" --user="$user" \
        --log-error="$D/log/mariadb.log" --innodb-buffer-pool-size=64M --innodb-lock-wait-timeout=900
    wait_for 60 MariaDB mariadb --no-defaults --socket="$D/run/mysql.sock" -uroot -e 'select 1'
    mariadb --no-defaults --socket="$D/run/mysql.sock" -uroot -e \
        "CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm'; GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"

    cat >"$D/etc/slurmdbd.conf" <<CONF
AuthType=auth/munge
AuthInfo=socket=$sock
DbdHost=localhost
DbdPort=$dbd_port
SlurmUser=$user
PidFile=$D/run/slurmdbd.daemon.pid
LogFile=$D/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$db_port
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
CONF
    chmod 600 "$D/etc/slurmdbd.conf"

    cat >"$D/etc/slurm.conf" <<CONF
ClusterName=declip-ci
SlurmctldHost=$host(127.0.0.1)
SlurmUser=$user
SlurmdUser=$user
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
AuthType=auth/munge
AuthInfo=socket=$sock
CredType=cred/munge
StateSaveLocation=$D/state
SlurmdSpoolDir=$D/spool
SlurmctldPidFile=$D/run/slurmctld.daemon.pid
SlurmdPidFile=$D/run/slurmd.daemon.pid
SlurmctldLogFile=$D/log/slurmctld.log
SlurmdLogFile=$D/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
MailProg=/bin/true
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
ReturnToService=2
GresTypes=gpu
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$dbd_port
AccountingStoragePass=$sock
AccountingStorageTRES=gres/gpu
AccountingStoreFlags=job_comment
NodeName=$host NodeAddr=127.0.0.1 CPUs=$(nproc) RealMemory=$mem Gres=gpu:1 State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
    # gres/gpu counts the device files it is given; an empty file stands in for /dev/nvidia0.
    mkdir -p "$D/dev"; : >"$D/dev/nvidia0"
    echo "NodeName=$host Name=gpu File=$D/dev/nvidia0" >"$D/etc/gres.conf"
    export SLURM_CONF="$D/etc/slurm.conf"
    local c real
    for c in srun sbatch salloc sacct sacctmgr squeue scancel scontrol sinfo sstat; do
        real=$(command -v "$c") || continue
        printf '#!/bin/sh\nSLURM_CONF=%s exec %s "$@"\n' "$SLURM_CONF" "$real" >"$D/bin/$c"
        chmod +x "$D/bin/$c"
    done

    start slurmdbd slurmdbd -D
    wait_for 60 slurmdbd sacctmgr -n list cluster
    sacctmgr -i add cluster declip-ci >/dev/null
    sacctmgr -i add account ci Description=ci Organization=ci >/dev/null
    sacctmgr -i add user "$user" Account=ci DefaultAccount=ci >/dev/null
    start slurmctld slurmctld -D -i
    wait_for 60 slurmctld scontrol ping
    start slurmd slurmd -D -N "$host"
    wait_for 60 "the node" sh -c "sinfo -h -N -o %t | grep -qE '^(idle|mix|alloc)'"
    echo "export SLURM_CONF=$SLURM_CONF PATH=$D/bin:\$PATH"
}

down() {
    export PATH="$PATH:/usr/sbin:/sbin" SLURM_CONF="$D/etc/slurm.conf"
    [ -f "$D/run/slurmctld.pid" ] && scancel --user="$(id -un)" >/dev/null 2>&1 || true
    local name pid
    for name in slurmd slurmctld slurmdbd mariadbd munged; do
        [ -f "$D/run/$name.pid" ] || continue
        pid=$(cat "$D/run/$name.pid")
        if kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid"
            for _ in $(seq 80); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
            kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
        fi
        rm -f "$D/run/$name.pid"
    done
}

cmd=${1:-}; D=${2:-}
case "$cmd" in
    install) install ;;
    up|down)
        [ -n "$D" ] || { echo "usage: $0 $cmd DIR" >&2; exit 2; }
        D=$(mkdir -p "$D" && cd "$D" && pwd)
        "$cmd" ;;
    *) echo "usage: $0 install | up DIR | down DIR" >&2; exit 2 ;;
esac
