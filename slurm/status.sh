#!/usr/bin/env bash
# Show whether each daemon of the local Slurm cluster is up.
#
#   slurm/status.sh [STATE_DIR]     # exit 0 if all five daemons are up, else 1
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=lib.sh
. "$HERE/lib.sh"

B="$(hpcdd_slurm_dir "${1:-}")"
hpcdd_slurm_layout "$B"
export SLURM_CONF="$CONF"

echo "state dir: $B"
rc=0
for d in "${DAEMONS[@]}"; do
    if pid="$(daemon_pid "$d")"; then
        printf '  %-10s up    (pid %s)\n' "$d" "$pid"
    else
        printf '  %-10s down\n' "$d"
        rc=1
    fi
done
if daemon_up slurmctld && command -v sinfo >/dev/null; then
    echo "export SLURM_CONF=$CONF"
    timeout 10 sinfo -o '  %P %a %D %T %c' 2>&1
fi
exit "$rc"
