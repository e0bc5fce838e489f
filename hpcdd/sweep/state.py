"""Where a sweep stands: the run dirs first, the scheduler second.

A sweep is a small graph of *tasks*, each one job: ``prereq`` tasks (one per prerequisite
artefact, in the artefact root), ``run`` tasks (one per distillation, also running its
evaluations unless ``separate_evals``), and ``eval`` tasks (one per evaluation, with
``separate_evals``). A task's directory says whether it is finished (``done``) and which job ran it
(``job.json``, written atomically at submission). Only unfinished Slurm tasks are looked up, all in
ONE ``squeue`` call (and one ``sacct`` call for those that left the queue), so ``status`` works
without accounting. A task whose prerequisite (or distillation) failed is ``blocked``, not failed.
"""

from __future__ import annotations

import errno
import functools
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence, TypeVar

from hpcdd import rundir
from hpcdd.io import atomic_write_json, now_utc, try_load_json
from hpcdd.sweep import scheduler
from hpcdd.sweep.grid import Sweep, SweepPrereq, SweepRun

DONE, RUNNING, PENDING, FAILED, NOT_LAUNCHED = "done", "running", "pending", "failed", "not launched"
UNKNOWN = "unknown"
"""Submitted to Slurm, not done, and squeue cannot be asked: never resubmitted blindly."""
BLOCKED = "blocked"
"""Not done because a task it needs (a prerequisite, its distillation) failed or is blocked."""
STATES = (DONE, RUNNING, PENDING, FAILED, BLOCKED, NOT_LAUNCHED, UNKNOWN)
ACTIVE = frozenset({PENDING, RUNNING, UNKNOWN})
"""States in which a task may still be queued or running: never resubmitted."""
SUBMITIT_DIR = ".submitit"
SWEEPS_DIR = ".sweeps"
STAGES = ("prereq", "run", "eval")
IO_THREADS = 16
"""Threads reading a sweep's small files at once (:func:`map_io`): on a cold cache or a network
file system each read waits on the disk or the server, and the waits overlap."""
T, R = TypeVar("T"), TypeVar("R")


@dataclass(frozen=True)
class JobRecord:
    """The job that runs a task (``job.json`` in the task's directory)."""

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
    covers: tuple[str, ...] = ()
    """Run tasks: the evaluations the job runs after distilling (eval ids)."""


@dataclass(frozen=True)
class Task:
    """One job of a sweep."""

    key: str
    """``prereq:<kind>/<id>``, ``run:<run_id>`` or ``eval:<run_id>/<eval_id>``."""
    stage: str
    """prereq, run or eval (also the submission order)."""
    dir: Path
    """Its directory (job.json, done)."""
    needs: tuple[str, ...] = ()
    """Keys of the tasks that must finish first."""
    run: SweepRun | None = None
    """The distillation (run and eval tasks)."""
    prereq: SweepPrereq | None = None
    """The prerequisite (prereq tasks)."""
    eval_ids: tuple[str, ...] = ()
    """Run tasks: the evaluations they run inline; eval tasks: their one evaluation."""


@dataclass(frozen=True)
class TaskState:
    """One row of ``sweep status``."""

    key: str
    """The task's key."""
    state: str
    """done, running, pending, failed, blocked, not launched (or unknown: squeue unreachable)."""
    job_id: str = ""
    """Scheduler id from job.json (empty when never launched)."""
    detail: str = ""
    """Scheduler state behind ``state`` (e.g. TIMEOUT), or why a task is failed/blocked."""
    progress: str = ""
    """Where a running task is: 'iteration 40/100', 'eval model 2/5'."""
    error: str = ""
    """For failed tasks: last error line of the submitit stderr log, else of log.txt."""
    last_log: str = ""
    """Last line of the task's log.txt."""


# ----------------------------------------------------------------------------------------------
# the task graph


def build_tasks(sweep: Sweep, runs_dir: Path) -> list[Task]:
    """Every task of ``sweep`` in submission order (prerequisites, distillations, evaluations)."""
    runs_dir = Path(runs_dir)
    root = rundir.artefact_root(sweep.exec.artefact_root)
    tasks = [Task(f"prereq:{p.key}", "prereq", root / p.key, prereq=p) for p in sweep.prereqs]
    for run in sweep.runs:
        inline = () if sweep.separate_evals else run.eval_ids
        tasks.append(Task(f"run:{run.run_id}", "run", runs_dir / run.run_id,
                          tuple(f"prereq:{k}" for k in run.prereqs), run=run, eval_ids=inline))
    if sweep.separate_evals:
        for run in sweep.runs:
            for eid in run.eval_ids:
                tasks.append(Task(f"eval:{run.run_id}/{eid}", "eval", rundir.eval_dir(runs_dir / run.run_id, eid),
                                  (f"run:{run.run_id}",), run=run, eval_ids=(eid,)))
    return tasks


def cell_task(sweep: Sweep, run_id: str, eval_id: str) -> str:
    """The key of the task whose state a (run, evaluation) cell shows once the run is distilled."""
    return f"eval:{run_id}/{eval_id}" if sweep.separate_evals else f"run:{run_id}"


# ----------------------------------------------------------------------------------------------
# files


def write_job(task_dir: Path, record: JobRecord, *, sync: bool = True) -> None:
    """Write ``job.json``; ``sync=False`` leaves durability to one later ``sync_filesystem``."""
    data = {**record.__dict__, "covers": list(record.covers)}
    atomic_write_json(Path(task_dir) / rundir.JOB, data, sync=sync)


def read_job(task_dir: Path) -> JobRecord | None:
    data = _load_json(_join(os.fspath(task_dir), rundir.JOB))
    if not isinstance(data, dict):
        return None
    try:
        return JobRecord(**{**data, "covers": tuple(data.get("covers") or ())})
    except TypeError:
        return None


def _load_json(path: str) -> object | None:
    """:func:`hpcdd.io.try_load_json` (UTF-8, ``None`` for anything unreadable) without a text-mode
    file object, the larger part of reading thousands of small job.json files. (Its newline
    translation never changes a parse: a CR is JSON whitespace, or invalid inside a string.)"""
    try:
        with open(path, "rb") as f:
            return json.loads(f.read().decode("utf-8"))
    except (OSError, ValueError):
        return None


def _join(directory: str, *names: str) -> str:
    """``os.path.join`` for names that are plain relative parts (file names, ids), without its
    general-case work (thousands of calls per status)."""
    sep = "" if not directory or directory.endswith("/") else "/"
    return directory + sep + "/".join(names)


def _exists(path: str) -> bool:
    """``Path(path).exists()`` on a plain string (no Path object per file in a big sweep)."""
    try:
        os.stat(path)
    except OSError as e:
        if e.errno not in (errno.ENOENT, errno.ENOTDIR, errno.EBADF, errno.ELOOP):
            raise
        return False
    except ValueError:
        return False
    return True


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


def last_line(path: str | Path, skip_prefixes: tuple[str, ...] = (),
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


def error_line(runs_dir: Path, log_dir: Path, job_id: str) -> str:
    """The most telling error line: the exception in submitit's stderr, else log.txt's last line."""
    err = submitit_stderr(runs_dir, job_id) if job_id else None
    if err is not None:
        line = last_line(err, skip_prefixes=("srun:", "submitit", "Traceback", "File ", "^", "~"),
                         skip_containing=("%|",))  # tqdm bars
        if line:
            return line
    return last_line(log_dir / rundir.LOG)


# ----------------------------------------------------------------------------------------------
# states


def task_done(task: Task) -> bool:
    """Finished: the artefact (prereq), the distillation and its inline evaluations (run), or the
    evaluation (eval). ``done`` markers are written last, so their presence is enough."""
    d = os.fspath(task.dir)
    if not _exists(_join(d, rundir.DONE)):
        return False
    return task.stage == "eval" or all(_exists(_join(d, rundir.EVALS, e, rundir.DONE)) for e in task.eval_ids)


def collect_states(runs_dir: Path, tasks: Iterable[Task], *, details: bool = True) -> dict[str, TaskState]:
    """The state of every task, with at most one squeue and one sacct call in all.

    ``details`` adds each unfinished task's progress, last log line and error (``status``).
    The task dirs' files are read by :func:`map_io` (a few threads), so a cold cache or a
    network file system does not cost one round trip per file in turn.
    """
    runs_dir = Path(runs_dir)
    tasks = list(tasks)
    probes = map_io(functools.partial(_probe, details=details), tasks)
    done = {t.key for t, (finished, _job, _log) in zip(tasks, probes) if finished}
    records = {t.key: job for t, (finished, job, _log) in zip(tasks, probes) if not finished}
    slurm_ids = [r.job_id for r in records.values() if r and r.cluster == "slurm"]
    queue = scheduler.queue_states(slurm_ids) if slurm_ids else {}
    gone = [j for j in slurm_ids if queue is not None and j not in queue]
    acct = (scheduler.accounting_states(gone) or {}) if gone else {}
    out: dict[str, TaskState] = {}
    for t, (finished, job, log) in zip(tasks, probes):  # in stage order: needs are decided first
        if finished:
            out[t.key] = TaskState(t.key, DONE, (job or _NO_JOB).job_id, last_log=log) if details \
                else TaskState(t.key, DONE)
            continue
        out[t.key] = _state_of(t, records[t.key], queue, acct, out)
    if details:
        unfinished = [t for t in tasks if t.key not in done]
        for t, state in zip(unfinished, map_io(lambda t: _with_details(runs_dir, t, out[t.key]), unfinished)):
            out[t.key] = state
    return out


_NO_JOB = JobRecord("", "", "", "")


def _probe(task: Task, details: bool) -> tuple[bool, JobRecord | None, str]:
    """(done, its job.json, last log line) of a task: every file read :func:`collect_states` needs
    before asking the scheduler (a done task's job and log only with ``details``)."""
    if task_done(task):
        if not details:
            return True, None, ""
        log_dir = task.dir if task.stage != "eval" else task.dir.parent.parent
        return True, read_job(task.dir), last_line(_join(os.fspath(log_dir), rundir.LOG))
    return False, read_job(task.dir), ""


def _state_of(task: Task, record: JobRecord | None, queue: dict[str, str] | None,
              acct: dict[str, str], decided: dict[str, TaskState]) -> TaskState:
    bad_needs = [k for k in task.needs if decided.get(k) and decided[k].state in (FAILED, BLOCKED)]
    job_id = record.job_id if record else ""
    if record is None:
        state, detail = (BLOCKED, f"{bad_needs[0]} failed") if bad_needs else (NOT_LAUNCHED, "")
    else:
        state, detail = _live_state(record, queue, acct)
        if state == FAILED and bad_needs:
            state, detail = BLOCKED, f"{bad_needs[0]} failed"
        elif state == FAILED and task.stage == "run" and rundir.is_done(task.dir):
            new = [e for e in task.eval_ids if e not in record.covers
                   and not (rundir.eval_dir(task.dir, e) / rundir.DONE).exists()]
            if new:  # evaluations added to the grid after the job ran: never launched
                state, detail = NOT_LAUNCHED, f"{len(new)} new evaluation(s)"
    return TaskState(task.key, state, job_id, detail)


def _with_details(runs_dir: Path, task: Task, s: TaskState) -> TaskState:
    """``s`` with the progress, error and last log line of an unfinished task."""
    log_dir = task.dir if task.stage != "eval" else task.dir.parent.parent
    error = error_line(runs_dir, log_dir, s.job_id) if s.state == FAILED else ""
    progress = task_progress(task) if s.state in (RUNNING, FAILED, UNKNOWN) else ""
    return TaskState(task.key, s.state, s.job_id, s.detail, progress, error, last_line(log_dir / rundir.LOG))


def map_io(fn: Callable[[T], R], items: Sequence[T], threads: int = IO_THREADS) -> list[R]:
    """``[fn(x) for x in items]`` with the calls spread over ``threads`` threads in contiguous
    chunks: same results in the same order, the first exception (in item order) raised. For
    functions that mostly wait on file reads (the GIL is released while they wait)."""
    items = list(items)
    if len(items) < 4 * threads:
        return [fn(x) for x in items]
    size = -(-len(items) // (4 * threads))
    chunks = [items[i : i + size] for i in range(0, len(items), size)]
    with ThreadPoolExecutor(threads) as pool:
        parts = list(pool.map(lambda chunk: [fn(x) for x in chunk], chunks))
    return [y for part in parts for y in part]


def task_progress(task: Task) -> str:
    """'iteration i/N' while distilling (or building), 'eval model j/n' while evaluating."""
    if task.stage == "eval" or (task.stage == "run" and rundir.is_done(task.dir)):
        run_dir = task.dir.parent.parent if task.stage == "eval" else task.dir
        total = done = 0
        for eid in task.eval_ids:
            ev = dict(zip(task.run.eval_ids, task.run.evals)).get(eid) if task.run else None
            if ev is not None:
                total += len(ev.models) * ev.n
            models = rundir.eval_dir(run_dir, eid) / rundir.MODELS
            done += len(list(models.glob("*.json"))) if models.is_dir() else 0
        return f"eval model {done}/{total}" if total else ""
    line = last_line(task.dir / rundir.METRICS)
    try:
        it = int(json.loads(line)["it"]) + 1 if line else 0
    except (ValueError, KeyError, TypeError):
        return ""
    total = task.run.config.iterations if task.run is not None else None
    return f"iteration {it}/{total}" if total else f"iteration {it}"


def _live_state(record: JobRecord, queue: dict[str, str] | None,
                acct: dict[str, str]) -> tuple[str, str]:
    """(state, detail) of a launched task that is not done."""
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
    "JobRecord", "Task", "TaskState", "build_tasks", "collect_states", "read_job",
    "write_job", "read_manifest", "write_manifest", "task_done", "STATES", "DONE", "RUNNING",
    "PENDING", "FAILED", "BLOCKED", "NOT_LAUNCHED", "UNKNOWN", "ACTIVE", "STAGES",
]
