"""``hpcdd ARGS...`` that SIGKILLs itself at one point of a sweep launch (test_sweep_slurm.py).

    python crash_launch.py POINT N ARGS...

kills the process (as ``kill -9`` would: no handler, no cleanup) at the N-th time the launch
reaches POINT:

* ``record``: before a submission is written down (between two arrays when N > 1);
* ``sbatch-before``: the submission is written down, sbatch not called yet;
* ``sbatch-after``: sbatch accepted the array, its answer not read yet;
* ``pickle``: the array's id is known and its script moved, the tasks' pickles not moved yet;
* ``job-json``: before the N-th task's job.json;
* ``drop``: every job.json of the array written and synced, the submission record not dropped.
"""

from __future__ import annotations

import os
import signal
import sys

import submitit.core.utils as sutils

import hpcdd.sweep.launch as launch

POINT, N = sys.argv[1], int(sys.argv[2])
calls = {"n": 0}


def reached() -> None:
    calls["n"] += 1
    if calls["n"] == N:
        os.kill(os.getpid(), signal.SIGKILL)


def before(fn):
    def wrapped(*args, **kwargs):
        reached()
        return fn(*args, **kwargs)
    return wrapped


if POINT in ("record", "drop"):
    import hpcdd.sweep.reconcile as reconcile

    if POINT == "record":
        reconcile.record_intent = before(reconcile.record_intent)
    else:
        reconcile.drop_intent = before(reconcile.drop_intent)
elif POINT == "sbatch-before":
    sutils.CommandFunction.__call__ = before(sutils.CommandFunction.__call__)
elif POINT == "sbatch-after":
    call = sutils.CommandFunction.__call__

    def after(self, *args, **kwargs):
        out = call(self, *args, **kwargs)
        reached()
        return out

    sutils.CommandFunction.__call__ = after
elif POINT == "pickle":
    move = sutils.JobPaths.move_temporary_file

    def moving(self, tmp_path, name, *args, **kwargs):
        if name == "submitted_pickle":
            reached()
        return move(self, tmp_path, name, *args, **kwargs)

    sutils.JobPaths.move_temporary_file = moving
elif POINT == "job-json":
    launch.write_job = before(launch.write_job)
else:
    raise SystemExit(f"unknown point {POINT}")

from hpcdd.cli import main  # noqa: E402

sys.exit(main(sys.argv[3:]))
