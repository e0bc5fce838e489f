# shellcheck shell=bash
# Shared helpers for slurm/start.sh, slurm/stop.sh and slurm/status.sh.
# Source it after setting nothing; it defines the layout of the state dir $B.
#
# Everything of the local cluster lives under ONE directory $B:
#   $B/etc/slurm.conf, $B/etc/slurmdbd.conf      generated configs
#   $B/munge/{munge.key,munge.socket.2,...}      munge key + socket (dir mode 755)
#   $B/mysql/data, $B/mysql/mysqld.sock          mariadb datadir (for slurmdbd)
#   $B/spool/{ctld,d}                            slurmctld state, slurmd spool
#   $B/run/*.pid                                 pid files of the 5 daemons
#   $B/log/*.log                                 daemon logs + start.log
#   $B/env.sh                                    "export SLURM_CONF=..."

export PATH="$PATH:/usr/sbin:/sbin"

# Resolve the state dir: argument 1, else $HPCDD_SLURM_DIR, else ~/.hpcdd-slurm.
hpcdd_slurm_dir() {
    local d="${1:-${HPCDD_SLURM_DIR:-$HOME/.hpcdd-slurm}}"
    mkdir -p "$d"
    (cd "$d" && pwd -P)
}

hpcdd_slurm_layout() {
    B="$1"
    ETC="$B/etc"; MUNGE_DIR="$B/munge"; MYSQL_DIR="$B/mysql"; SPOOL="$B/spool"
    RUN="$B/run"; LOG="$B/log"
    CONF="$ETC/slurm.conf"; DBDCONF="$ETC/slurmdbd.conf"
    MUNGE_SOCK="$MUNGE_DIR/munge.socket.2"; MUNGE_KEY="$MUNGE_DIR/munge.key"
    MYSQL_SOCK="$MYSQL_DIR/mysqld.sock"
    # daemon name == /proc/PID/comm, in start order
    DAEMONS=(munged mariadbd slurmdbd slurmctld slurmd)
}

pidfile_of() { echo "$RUN/$1.pid"; }

# Print the pid of daemon $1 if its pid file names a live process with the
# right name that belongs to this state dir; return 1 otherwise.
daemon_pid() {
    local name="$1" f pid
    f="$(pidfile_of "$name")"
    [ -s "$f" ] || return 1
    pid="$(tr -dc '0-9' <"$f")"
    [ -n "$pid" ] || return 1
    proc_running "$pid" "$name" || return 1
    # Guard against pid reuse by a same-named daemon of another state dir:
    # ours carry $B on their command line or SLURM_CONF=$B/... in their env.
    if ! grep -qF "$B/" "/proc/$pid/cmdline" 2>/dev/null &&
        ! grep -qF "SLURM_CONF=$CONF" "/proc/$pid/environ" 2>/dev/null; then
        return 1
    fi
    echo "$pid"
}

daemon_up() { daemon_pid "$1" >/dev/null; }

# proc_running PID NAME: PID is a live (not zombie) process called NAME.
# A daemon's zombie can linger for seconds until PID 1 reaps it; it counts
# as stopped.
proc_running() {
    local stat
    [ "$(cat "/proc/$1/comm" 2>/dev/null)" = "$2" ] || return 1
    stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
    stat="${stat##*) }"
    [ "${stat%% *}" != Z ]
}

# Is something listening on 127.0.0.1:$1 ?
port_busy() { timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }

ts() { date +%H:%M:%S; }

# stop_group NAME...: SIGTERM the named daemons together, wait, then SIGKILL.
stop_group() {
    local name pid pids=() names=() end i alive
    for name in "$@"; do
        if pid="$(daemon_pid "$name")"; then
            echo "[hpcdd-slurm $(ts)] stopping $name (pid $pid)" >&2
            kill -TERM "$pid" 2>/dev/null || true
            pids+=("$pid")
            names+=("$name")
        else
            rm -f "$(pidfile_of "$name")"
        fi
    done
    [ "${#pids[@]}" -gt 0 ] || return 0
    end=$((SECONDS + ${HPCDD_SLURM_STOP_TIMEOUT:-30}))
    while :; do
        alive=0
        for i in "${!pids[@]}"; do
            proc_running "${pids[$i]}" "${names[$i]}" && alive=1
        done
        [ "$alive" = 0 ] && break
        if [ "$SECONDS" -ge "$end" ]; then
            for i in "${!pids[@]}"; do
                if proc_running "${pids[$i]}" "${names[$i]}"; then
                    echo "[hpcdd-slurm $(ts)] ${names[$i]} (pid ${pids[$i]}) ignored SIGTERM for ${HPCDD_SLURM_STOP_TIMEOUT:-30}s; SIGKILL" >&2
                    kill -KILL "${pids[$i]}" 2>/dev/null || true
                fi
            done
            sleep 0.5
            break
        fi
        sleep 0.1
    done
    for name in "${names[@]}"; do rm -f "$(pidfile_of "$name")"; done
}
