#!/usr/bin/env bash
# Start a single-node Slurm cluster (with accounting) for hpcdd development/tests.
#
#   slurm/start.sh [STATE_DIR]          # default: $HPCDD_SLURM_DIR or ~/.hpcdd-slurm
#   eval "$(slurm/start.sh)"            # stdout is exactly one "export SLURM_CONF=..." line
#   slurm/start.sh --print-conf [DIR]   # print the slurm.conf it would use; start nothing
#                                       # (no root, no packages; for checks and tests)
#
# Idempotent: installs the Debian packages if missing, starts only the daemons
# that are not running yet (munged, mariadbd, slurmdbd, slurmctld, slurmd, all
# as root, no systemd, everything under STATE_DIR), then waits until the node
# is idle and sacct works. If the cluster is already up it exits 0 at once.
# All progress goes to stderr and STATE_DIR/log/start.log.
#
# Environment knobs (read at every start; if slurm.conf changes, a running
# slurmctld/slurmd pair is restarted to apply it):
#   HPCDD_SLURM_MAX_ARRAY   MaxArraySize (default 1001; array indices 0..N-1)
#   HPCDD_SLURM_CPUS        CPUs the node advertises (default: what the machine has,
#                           from slurmd -C, else nproc); a larger value oversubscribes
#                           the machine on purpose (explicit opt-in only)
#   HPCDD_SLURM_GPUS        fake GPUs (gres/gpu with no device files) the node
#                           advertises, so --gpus=1 jobs can be scheduled (default 0)
#   HPCDD_SLURM_START_TIMEOUT  seconds to wait for readiness (default 120)
#   HPCDD_SLURM_PORT_BASE   slurmctld port; slurmd=+1, slurmdbd=+2 (default 6817)
#   HPCDD_SLURM_DB_PORT     mariadb port on 127.0.0.1 (default 13306)
#   (changing ports or the DB needs slurm/stop.sh first)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=lib.sh
. "$HERE/lib.sh"

PRINT_CONF=0
if [ "${1:-}" = --print-conf ]; then
    PRINT_CONF=1
    shift
fi

if [ "$PRINT_CONF" = 0 ] && [ "$(id -u)" != 0 ]; then
    echo "hpcdd-slurm: start.sh must run as root (the local cluster runs every daemon as root)" >&2
    exit 1
fi

B="$(hpcdd_slurm_dir "${1:-}")"
hpcdd_slurm_layout "$B"

CLUSTER=hpcdd
MAX_ARRAY="${HPCDD_SLURM_MAX_ARRAY:-1001}"
WANT_CPUS="${HPCDD_SLURM_CPUS:-}"
TIMEOUT="${HPCDD_SLURM_START_TIMEOUT:-120}"
P_CTLD="${HPCDD_SLURM_PORT_BASE:-6817}"
P_SLURMD=$((P_CTLD + 1))
P_DBD=$((P_CTLD + 2))
DB_PORT="${HPCDD_SLURM_DB_PORT:-13306}"
FAKE_GPUS="${HPCDD_SLURM_GPUS:-0}"
PKGS=(slurm-wlm munge slurmdbd mariadb-server)
T0=$SECONDS

mkdir -p "$ETC" "$MUNGE_DIR" "$MYSQL_DIR" "$SPOOL/ctld" "$SPOOL/d" "$RUN" "$LOG"
chmod 755 "$MUNGE_DIR" "$LOG" "$RUN"  # never chmod $B itself: it may be a shared dir
STARTLOG="$LOG/start.log"

log() { echo "[hpcdd-slurm $(ts)] $*" | tee -a "$STARTLOG" >&2; }

# die MESSAGE [daemon...]: print the error and the tails of the named logs.
die() {
    trap - ERR
    local msg="$1" d f
    shift
    {
        echo "[hpcdd-slurm $(ts)] ERROR: $msg"
        for d in "$@"; do
            for f in "$LOG/$d.log" "$LOG/$d.out"; do
                [ -s "$f" ] || continue
                echo "----- tail of $f -----"
                tail -n 25 "$f"
            done
        done
        echo "(state dir: $B; stop with: $HERE/stop.sh $B)"
    } | tee -a "$STARTLOG" >&2
    exit 1
}

# Any unexpected failure (set -e) still explains itself.
set -E
trap 'die "unexpected failure (exit $?) at start.sh line $LINENO: $BASH_COMMAND"' ERR

# Single start.sh per state dir at a time (e.g. parallel pytest workers).
# Every daemon is started with "9>&-": a daemon that inherited fd 9 would hold
# the lock for as long as it lives and block every later start.sh.
exec 9>"$B/.start.lock"
flock -w 600 9 || die "could not lock $B/.start.lock"

# Unix socket paths are limited to 107 bytes.
if [ "${#MUNGE_SOCK}" -gt 100 ] || [ "${#MYSQL_SOCK}" -gt 100 ]; then
    die "state dir path too long for unix sockets: $B (use a shorter HPCDD_SLURM_DIR)"
fi

# --------------------------------------------------------------------------
# 1. packages
# --------------------------------------------------------------------------
packages_missing() {
    local c
    for c in slurmctld slurmd slurmdbd munged munge mariadbd mariadb-install-db mariadb mariadb-admin \
        sinfo sbatch sacct sacctmgr scontrol; do
        command -v "$c" >/dev/null 2>&1 || return 0
    done
    [ -n "$(find /usr/lib -name accounting_storage_mysql.so -print -quit 2>/dev/null)" ] || return 0
    return 1
}

install_packages() {
    export DEBIAN_FRONTEND=noninteractive
    command -v apt-get >/dev/null || die "Slurm is not installed and apt-get is missing (need: ${PKGS[*]})"
    # Keep apt from starting the system munge/mariadb services (we run our own).
    local policy=/usr/sbin/policy-rc.d made_policy=0 updated=0 rc=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && made_policy=1
    fi
    if ! compgen -G "/var/lib/apt/lists/*_Packages*" >/dev/null; then
        log "apt-get update"
        apt-get update -q >>"$STARTLOG" 2>&1 || rc=$?
        updated=1
    fi
    log "apt-get install ${PKGS[*]}"
    if ! apt-get install -y -q --no-install-recommends "${PKGS[@]}" >>"$STARTLOG" 2>&1; then
        if [ "$updated" = 0 ]; then
            log "install failed; apt-get update and retry"
            apt-get update -q >>"$STARTLOG" 2>&1 || true
            apt-get install -y -q --no-install-recommends "${PKGS[@]}" >>"$STARTLOG" 2>&1 || rc=$?
        else
            rc=1
        fi
    fi
    [ "$made_policy" = 1 ] && rm -f "$policy"
    [ "$rc" = 0 ] || die "apt-get install ${PKGS[*]} failed (see $STARTLOG)"
    packages_missing && die "packages installed but a Slurm/munge/mariadb binary is still missing"
    log "packages installed after $((SECONDS - T0)) s"
}

if [ "$PRINT_CONF" = 0 ] && packages_missing; then
    install_packages
fi

# --------------------------------------------------------------------------
# 2. configuration (regenerated every time; compared with the running one)
# --------------------------------------------------------------------------
if [ "$PRINT_CONF" = 0 ]; then
    [ -s "$MUNGE_KEY" ] || {
        log "creating munge key"
        (umask 077 && head -c 1024 /dev/urandom >"$MUNGE_KEY")
    }
    chmod 400 "$MUNGE_KEY"

    DBPASS_FILE="$MYSQL_DIR/slurm.pass"
    [ -s "$DBPASS_FILE" ] || (umask 077 && head -c 32 /dev/urandom | od -An -tx1 | tr -dc 0-9a-f >"$DBPASS_FILE")
    DBPASS="$(cat "$DBPASS_FILE")"
fi

# Hardware as slurmd sees it. The node advertises exactly the machine's CPUs,
# so the scheduler never runs more tasks at once than there are cores; only an
# explicit HPCDD_SLURM_CPUS advertises another number.
HW="$(slurmd -C 2>/dev/null | head -1)" || true
HW_CPUS="$(sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' <<<"$HW")"
HW_MEM="$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$HW")"
[ -n "$HW_CPUS" ] || HW_CPUS="$(nproc)"
[ -n "$HW_MEM" ] || HW_MEM=1024
if [ -z "$WANT_CPUS" ]; then
    NCPUS="$HW_CPUS"
elif [[ "$WANT_CPUS" =~ ^[1-9][0-9]{0,4}$ ]]; then
    NCPUS="$WANT_CPUS"
    [ "$NCPUS" -le "$HW_CPUS" ] ||
        log "HPCDD_SLURM_CPUS=$NCPUS: advertising more CPUs than the $HW_CPUS this machine has"
else
    die "HPCDD_SLURM_CPUS must be a positive whole number, got '$WANT_CPUS'"
fi
MEM=$((HW_MEM * 9 / 10))
MAX_JOBS=$((MAX_ARRAY * 4 > 10000 ? MAX_ARRAY * 4 : 10000))

write_slurm_conf() {
    cat <<EOF
# Generated by hpcdd slurm/start.sh -- regenerated on every start, do not edit.
ClusterName=$CLUSTER
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=$P_CTLD
SlurmdPort=$P_SLURMD
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire=5: a requeued job may restart after ~6 s instead of ~120 s
AuthInfo=socket=$MUNGE_SOCK,cred_expire=5
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
StateSaveLocation=$SPOOL/ctld
SlurmdSpoolDir=$SPOOL/d
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
# CR_Core (not CR_Core_Memory): otherwise every job takes the whole node
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1,bf_interval=1
ReturnToService=2
JobRequeue=1
KillWait=5
MinJobAge=120
InactiveLimit=0
Waittime=0
MailProg=/bin/true
MaxArraySize=$MAX_ARRAY
MaxJobCount=$MAX_JOBS
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$P_DBD
# for auth/munge this is the munge socket; without it: "Protocol authentication error"
AccountingStoragePass=$MUNGE_SOCK
# the node line below is used as written (CPUs=$NCPUS; RealMemory 90% of the
# machine's) instead of slurmd's own count, which would drain a node that
# advertises more than the hardware (HPCDD_SLURM_CPUS) or a mismatched layout
SlurmdParameters=config_overrides
$([ "$FAKE_GPUS" -gt 0 ] && echo "GresTypes=gpu")
NodeName=localhost NodeAddr=127.0.0.1 NodeHostname=localhost CPUs=$NCPUS RealMemory=$MEM $([ "$FAKE_GPUS" -gt 0 ] && echo "Gres=gpu:$FAKE_GPUS ")State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
PartitionName=cpu Nodes=localhost Default=NO MaxTime=INFINITE State=UP
EOF
}

if [ "$PRINT_CONF" = 1 ]; then
    write_slurm_conf
    exit 0
fi

write_dbd_conf() {
    cat <<EOF
# Generated by hpcdd slurm/start.sh -- regenerated on every start, do not edit.
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCK
DbdAddr=127.0.0.1
DbdHost=localhost
DbdPort=$P_DBD
SlurmUser=root
DebugLevel=info
LogFile=$LOG/slurmdbd.log
PidFile=$RUN/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$DBPASS
StorageLoc=slurm_acct_db
EOF
}

CONF_CHANGED=0
if [ "$FAKE_GPUS" -gt 0 ]; then
    mkdir -p "$B/dev"
    for ((i = 0; i < FAKE_GPUS; i++)); do : >"$B/dev/fakegpu$i"; done
    echo "NodeName=localhost Name=gpu File=$B/dev/fakegpu[0-$((FAKE_GPUS - 1))]" >"$ETC/gres.conf"
else
    rm -f "$ETC/gres.conf"
fi
write_slurm_conf >"$CONF.new"
if [ -f "$CONF" ] && cmp -s "$CONF" "$CONF.new"; then
    rm -f "$CONF.new"
else
    mv -f "$CONF.new" "$CONF"
fi
# What slurmctld/slurmd were started with is recorded in $RUN/conf.sig; a
# different config (or an unknown one) means they must be restarted.
conf_sig() { { cat "$CONF" && cat "$ETC/gres.conf" 2>/dev/null || true; } | cksum | cut -d' ' -f1; }
CONF_SIG="$(conf_sig)"
[ "$(cat "$RUN/conf.sig" 2>/dev/null || true)" = "$CONF_SIG" ] || CONF_CHANGED=1
(umask 077 && write_dbd_conf >"$DBDCONF.new")
if [ -f "$DBDCONF" ] && cmp -s "$DBDCONF" "$DBDCONF.new"; then
    rm -f "$DBDCONF.new"
else
    mv -f "$DBDCONF.new" "$DBDCONF"
fi
chmod 600 "$DBDCONF"
chmod 644 "$CONF"

export SLURM_CONF="$CONF"
echo "export SLURM_CONF=$CONF" >"$B/env.sh"

# --------------------------------------------------------------------------
# 3. readiness probes
# --------------------------------------------------------------------------
munge_ok() { munge -n -S "$MUNGE_SOCK" 2>/dev/null | unmunge -S "$MUNGE_SOCK" >/dev/null 2>&1; }
mysql_ok() { mariadb-admin --no-defaults -S "$MYSQL_SOCK" -u root ping >/dev/null 2>&1; }
dbd_ok() { timeout 10 sacctmgr -n -P show cluster format=cluster >/dev/null 2>&1; }
ctld_ok() { timeout 10 scontrol ping 2>/dev/null | grep -q 'is UP'; }
node_state() { timeout 10 sinfo -h -N -n localhost -o %T 2>/dev/null | head -1; }
node_ok() { case "$(node_state)" in idle | mixed | allocated | completing) return 0 ;; esac; return 1; }
acct_ok() {
    timeout 10 sacctmgr -n -P show cluster format=cluster 2>/dev/null | grep -qx "$CLUSTER" &&
        timeout 10 sacct -n -X -S now-1hours -o jobid >/dev/null 2>&1
}
all_up() {
    local d
    for d in "${DAEMONS[@]}"; do daemon_up "$d" || return 1; done
}

DEADLINE=$((SECONDS + TIMEOUT))
# wait_until DESCRIPTION COMMAND... : poll until the command succeeds or the deadline passes
wait_until() {
    local desc="$1"
    shift
    until "$@"; do
        [ "$SECONDS" -lt "$DEADLINE" ] || return 1
        sleep 0.2
    done
}

# A changed slurm.conf (e.g. another HPCDD_SLURM_MAX_ARRAY) needs a restart of
# slurmctld and slurmd: "scontrol reconfigure" shows the new MaxArraySize but
# slurmctld 22.05 keeps validating arrays against the old one. Running jobs
# survive this (their slurmstepd keeps running).
if [ "$CONF_CHANGED" = 1 ] && { daemon_up slurmctld || daemon_up slurmd; }; then
    log "slurm.conf changed; restarting slurmctld and slurmd"
    stop_group slurmd slurmctld 2>>"$STARTLOG"
fi

# Fast path: everything already up.
if all_up && node_ok && acct_ok; then
    echo "[hpcdd-slurm $(ts)] cluster under $B already up" >&2
    echo "export SLURM_CONF=$CONF"
    exit 0
fi

log "starting cluster under $B"

# check_port PORT DAEMON: die if someone else (not our daemon) listens there.
check_port() {
    if port_busy "$1"; then
        die "port 127.0.0.1:$1 needed by $2 is already in use by another process (another cluster?). Stop it, or set HPCDD_SLURM_PORT_BASE / HPCDD_SLURM_DB_PORT."
    fi
}

# --------------------------------------------------------------------------
# 4. daemons
# --------------------------------------------------------------------------
# munged
if daemon_up munged && munge_ok; then
    :
else
    daemon_up munged && kill "$(daemon_pid munged)" 2>/dev/null && sleep 1
    chmod 755 "$MUNGE_DIR"
    rm -f "$MUNGE_SOCK" "$MUNGE_SOCK.lock"
    log "starting munged"
    # --force: $HOME (/root) is usually mode 700 and munged insists that every
    # directory above its socket is world-executable; only root uses it here.
    munged --force --socket="$MUNGE_SOCK" --key-file="$MUNGE_KEY" --pid-file="$RUN/munged.pid" \
        --log-file="$LOG/munged.log" --seed-file="$MUNGE_DIR/munged.seed" \
        >>"$LOG/munged.out" 2>&1 9>&- || die "munged failed to start" munged
    wait_until "munge" munge_ok || die "munged does not answer on $MUNGE_SOCK" munged
fi

# mariadbd (accounting storage for slurmdbd)
if ! daemon_up mariadbd; then
    check_port "$DB_PORT" mariadbd
    if [ ! -d "$MYSQL_DIR/data/mysql" ]; then
        log "initialising mariadb datadir"
        rm -rf "$MYSQL_DIR/data" "$MYSQL_DIR/.slurm_user"
        mkdir -p "$MYSQL_DIR/data"
        mariadb-install-db --no-defaults --datadir="$MYSQL_DIR/data" --user=root \
            --skip-test-db --auth-root-authentication-method=socket \
            >>"$LOG/mariadb-install.log" 2>&1 || die "mariadb-install-db failed" mariadb-install
    fi
    rm -f "$MYSQL_SOCK"
    log "starting mariadbd on 127.0.0.1:$DB_PORT"
    setsid mariadbd --no-defaults --datadir="$MYSQL_DIR/data" --socket="$MYSQL_SOCK" \
        --port="$DB_PORT" --bind-address=127.0.0.1 --user=root --skip-log-bin \
        --skip-name-resolve --pid-file="$RUN/mariadbd.pid" --log-error="$LOG/mariadbd.log" \
        --innodb-buffer-pool-size=128M --innodb-lock-wait-timeout=900 \
        </dev/null >>"$LOG/mariadbd.out" 2>&1 9>&- &
fi
wait_until "mariadb" mysql_ok || die "mariadbd did not come up" mariadbd
wait_until "mariadb pid" daemon_up mariadbd || die "mariadbd pid file missing" mariadbd
if [ ! -f "$MYSQL_DIR/.slurm_user" ]; then
    log "creating mariadb user for slurmdbd"
    mariadb --no-defaults -S "$MYSQL_SOCK" -u root >>"$STARTLOG" 2>&1 <<EOF || die "could not create the slurm DB user" mariadbd
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$DBPASS';
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DBPASS';
ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$DBPASS';
ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$DBPASS';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
FLUSH PRIVILEGES;
EOF
    touch "$MYSQL_DIR/.slurm_user"
fi

# slurmdbd
if ! daemon_up slurmdbd; then
    check_port "$P_DBD" slurmdbd
    log "starting slurmdbd on 127.0.0.1:$P_DBD"
    slurmdbd >>"$LOG/slurmdbd.out" 2>&1 9>&- || die "slurmdbd failed to start" slurmdbd
fi
wait_until "slurmdbd" dbd_ok || die "slurmdbd does not answer (sacctmgr)" slurmdbd mariadbd
if ! timeout 10 sacctmgr -n -P show cluster format=cluster 2>/dev/null | grep -qx "$CLUSTER"; then
    log "registering cluster '$CLUSTER' in slurmdbd"
    timeout 20 sacctmgr -i add cluster "$CLUSTER" >>"$STARTLOG" 2>&1 || die "sacctmgr add cluster failed" slurmdbd
fi

# slurmctld
if ! daemon_up slurmctld; then
    check_port "$P_CTLD" slurmctld
    log "starting slurmctld on 127.0.0.1:$P_CTLD"
    slurmctld -i >>"$LOG/slurmctld.out" 2>&1 9>&- || die "slurmctld failed to start" slurmctld
fi
echo "$CONF_SIG" >"$RUN/conf.sig"
wait_until "slurmctld" ctld_ok || die "slurmctld does not answer (scontrol ping)" slurmctld

# slurmd
if ! daemon_up slurmd; then
    check_port "$P_SLURMD" slurmd
    log "starting slurmd (node localhost, CPUs=$NCPUS)"
    slurmd -N localhost >>"$LOG/slurmd.out" 2>&1 9>&- || die "slurmd failed to start" slurmd
fi
RESUME_AT=$((SECONDS + 5))
node_ready_or_resume() {
    node_ok && return 0
    if [ "$(node_state)" = inval ]; then
        die "slurmctld rejected node 'localhost': $(scontrol show node localhost | grep -o 'Reason=.*')" slurmd slurmctld
    fi
    # ReturnToService=2 should bring it back; resume a drained/down node once.
    if [ "$SECONDS" -ge "$RESUME_AT" ] && [ "$RESUME_AT" -gt 0 ]; then
        case "$(node_state)" in
        down* | drain* | fail*)
            log "node state '$(node_state)'; scontrol update state=resume"
            scontrol update nodename=localhost state=resume >>"$STARTLOG" 2>&1 || true
            ;;
        esac
        RESUME_AT=0
    fi
    return 1
}
wait_until "node idle" node_ready_or_resume ||
    die "node 'localhost' not idle (state: '$(node_state)')" slurmd slurmctld
wait_until "accounting" acct_ok || die "sacct/sacctmgr does not work" slurmdbd slurmctld

all_up || die "a daemon died during start-up" munged mariadbd slurmdbd slurmctld slurmd
log "cluster ready after $((SECONDS - T0)) s (SLURM_CONF=$CONF)"
echo "export SLURM_CONF=$CONF"
