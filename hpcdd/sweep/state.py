"""Where a sweep stands: the run dirs first, the scheduler second.

Per run dir ``RUNS_DIR/<run_id>``:

* ``done`` (with a readable ``result.json``): the run is finished, whatever the scheduler says;
* ``job.json``: which job ran or runs it (written atomically at submission);
* no ``job.json``: it was never launched.

Only the runs that are not done and were submitted to Slurm are looked up, all in ONE ``squeue``
call (and, for those that left the queue, one ``sacct`` call that refines the failure reason), so
``status`` works without accounting. Per sweep, ``RUNS_DIR/.sweeps/<name>.json`` lists the run
ids of the grid's last launch (to find runs dropped from the grid).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from hpcdd.io import atomic_write_json, now_utc, try_load_json
from hpcdd.run import is_done
from hpcdd.sweep import scheduler

DONE, RUNNING, PENDING, FAILED, NOT_LAUNCHED = "done", "running", "pending", "failed", "not launched"
UNKNOWN = "unknown"
"""Submitted to Slurm, not done, and squeue cannot be asked: never resubmitted blindly."""
STATES = (DONE, RUNNING, PENDING, FAILED, NOT_LAUNCHED, UNKNOWN)
ACTIVE = frozenset({PENDING, RUNNING, UNKNOWN})
"""States in which a run may still be queued or running: never resubmitted."""
SUBMITIT_DIR = ".submitit"
SWEEPS_DIR = ".sweeps"
JOB_FILE = "job.json"


@dataclass(frozen=True)
class JobRecord:
    """The job that runs a run dir (``RUNS_DIR/<run_id>/job.json``)."""

    job_id: str
    """Scheduler id: ``<array job>_<task>`` on Slurm, the controller pid locally, DEBUG_... in-process."""
    cluster: str
    """Executor: slurm, local or debug."""
    sweep: str
    """Name of the sweep that submitted it."""
    submitted_at: str
    """UTC time of the submission (ISO 8601)."""
    array: int = 0
    """Index of the array (chunk) within that launch."""


@dataclass(frozen=True)
class RunState:
    """One row of ``sweep status``."""

    run_id: str
    """Identity (run dir name)."""
    state: str
    """done, running, pending, failed, not launched (or unknown: squeue unreachable)."""
    job_id: str = ""
    """Scheduler id from job.json (empty when never launched)."""
    detail: str = ""
    """Scheduler state behind ``state`` (e.g. TIMEOUT), or why a run counts as failed."""
    last_log: str = ""
    """Last line of the run's log.txt."""
    error: str = ""
    """For failed runs: last error line of the submitit stderr log, else of log.txt."""


# ----------------------------------------------------------------------------------------------
# files


def write_job(run_dir: Path, record: JobRecord) -> None:
    atomic_write_json(Path(run_dir) / JOB_FILE, record.__dict__)


def read_job(run_dir: Path) -> JobRecord | None:
    data = try_load_json(Path(run_dir) / JOB_FILE)
    if not isinstance(data, dict):
        return None
    try:
        return JobRecord(**data)
    except TypeError:
        return None


def manifest_path(runs_dir: Path, name: str) -> Path:
    return Path(runs_dir) / SWEEPS_DIR / f"{name}.json"


def read_manifest(runs_dir: Path, name: str) -> list[str]:
    """Run ids this sweep launched before: the last grid's, then dropped ones still queued."""
    data = try_load_json(manifest_path(runs_dir, name))
    if not isinstance(data, dict):
        return []
    ids = [i for key in ("run_ids", "dropped_queued") for i in (data.get(key) or [])
           if isinstance(i, str)]
    return list(dict.fromkeys(ids))


def write_manifest(runs_dir: Path, name: str, source: str, run_ids: list[str],
                   dropped_queued: Sequence[str] = ()) -> None:
    """Record the grid's run ids, plus dropped runs whose jobs are still queued or running
    (so a later ``--cancel-dropped`` still finds them)."""
    atomic_write_json(manifest_path(runs_dir, name), {
        "name": name, "grid": source, "run_ids": list(run_ids),
        "dropped_queued": list(dropped_queued), "updated_at": now_utc()})


def last_line(path: Path, skip_prefixes: tuple[str, ...] = (),
              skip_containing: tuple[str, ...] = ()) -> str:
    """The last non-empty line of a text file that is not skipped; '' if none."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return ""
    for line in reversed(lines):
        line = line.strip()
        if line and not line.startswith(skip_prefixes) and not any(s in line for s in skip_containing):
            return line
    return ""


def submitit_stderr(runs_dir: Path, job_id: str) -> Path:
    """submitit's stderr log of a task (folder ``RUNS_DIR/.submitit/%j``, rank 0)."""
    return Path(runs_dir) / SUBMITIT_DIR / job_id / f"{job_id}_0_log.err"


def error_line(runs_dir: Path, run_dir: Path, job_id: str) -> str:
    """The most telling error line: the exception in submitit's stderr, else log.txt's last line."""
    err = submitit_stderr(runs_dir, job_id) if job_id else None
    if err is not None:
        line = last_line(err, skip_prefixes=("srun:", "submitit", "Traceback", "File ", "^", "~"),
                         skip_containing=("%|",))  # tqdm bars
        if line:
            return line
    return last_line(run_dir / "log.txt")


# ----------------------------------------------------------------------------------------------
# states


def collect_states(runs_dir: Path, run_ids: Iterable[str]) -> dict[str, RunState]:
    """The state of every run, with at most one squeue and one sacct call in all."""
    runs_dir = Path(runs_dir)
    run_ids = list(run_ids)
    records = {rid: read_job(runs_dir / rid) for rid in run_ids}
    done = {rid for rid in run_ids if is_done(runs_dir / rid)}
    slurm_ids = [r.job_id for rid, r in records.items() if r and r.cluster == "slurm" and rid not in done]
    queue = scheduler.queue_states(slurm_ids) if slurm_ids else {}
    gone = [j for j in slurm_ids if queue is not None and j not in queue]
    acct = (scheduler.accounting_states(gone) or {}) if gone else {}
    out = {}
    for rid in run_ids:
        out[rid] = _state_of(runs_dir, rid, records[rid], rid in done, queue, acct)
    return out


def _state_of(runs_dir: Path, rid: str, record: JobRecord | None, done: bool,
              queue: dict[str, str] | None, acct: dict[str, str]) -> RunState:
    run_dir = runs_dir / rid
    log = last_line(run_dir / "log.txt")
    job_id = record.job_id if record else ""
    if done:
        return RunState(rid, DONE, job_id, "", log)
    if record is None:
        return RunState(rid, NOT_LAUNCHED, "", "", log)
    state, detail = _live_state(record, queue, acct)
    error = error_line(runs_dir, run_dir, job_id) if state == FAILED else ""
    return RunState(rid, state, job_id, detail, log, error)


def _live_state(record: JobRecord, queue: dict[str, str] | None,
                acct: dict[str, str]) -> tuple[str, str]:
    """(state, detail) of a launched run that is not done."""
    if record.cluster == "local":
        return (RUNNING, "process alive") if _pid_alive(record.job_id) else (FAILED, "process ended")
    if record.cluster != "slurm":
        return FAILED, f"{record.cluster} job ended without 'done'"
    if queue is None:
        return UNKNOWN, "squeue unavailable"
    sched = queue.get(record.job_id)
    if sched in scheduler.RUNNING:
        return RUNNING, sched
    if sched in scheduler.QUEUED:
        return PENDING, sched
    if sched is not None:  # listed, but ended (TIMEOUT, FAILED, CANCELLED, ...) without 'done'
        return FAILED, f"{sched} without 'done'"
    acct_state = acct.get(record.job_id)
    if acct_state in scheduler.QUEUED:  # squeue forgot it but accounting has it queued
        return PENDING, acct_state
    if acct_state in scheduler.RUNNING:
        return RUNNING, acct_state
    return FAILED, f"{acct_state or 'left the queue'} without 'done'"


def _pid_alive(job_id: str) -> bool:
    try:
        pid = int(job_id)
    except ValueError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    try:
        running = stat.read_text().split(") ", 1)[1][0] not in "ZX"
        # a reused PID belongs to some other program: only a submitit job process counts
        return running and b"submitit" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, IndexError):
        return False


__all__ = [
    "JobRecord", "RunState", "collect_states", "read_job", "write_job", "read_manifest",
    "write_manifest", "STATES", "DONE", "RUNNING", "PENDING", "FAILED", "NOT_LAUNCHED", "UNKNOWN",
]
