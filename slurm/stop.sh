#!/usr/bin/env bash
# Stop the local Slurm cluster started by slurm/start.sh.
#
#   slurm/stop.sh [STATE_DIR]       # default: $HPCDD_SLURM_DIR or ~/.hpcdd-slurm
#
# Only the daemons named by the pid files under STATE_DIR/run are signalled
# (and only if the pid still is that daemon of this state dir); nothing else
# is touched. Idempotent: exits 0 when nothing is running. State (job
# records, accounting DB, munge key) is kept, so the next start is fast;
# delete STATE_DIR after stopping for a clean slate.
# Job processes (slurmstepd and its children) of jobs still running are not
# killed; cancel jobs first (scancel -u root) if you want them gone.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=lib.sh
. "$HERE/lib.sh"

B="$(hpcdd_slurm_dir "${1:-}")"
hpcdd_slurm_layout "$B"
T0=$SECONDS

# Reverse start order; munged last (the slurm daemons talk through it while exiting).
stop_group slurmd slurmctld
stop_group slurmdbd
stop_group mariadbd
stop_group munged
echo "[hpcdd-slurm $(ts)] stopped (state kept in $B) after $((SECONDS - T0)) s" >&2
