"""What a killed ``sweep launch`` had submitted, found again so that no task is submitted twice.

Slurm submission is not atomic with hpcdd's records: between ``sbatch`` accepting an array and
each task's ``job.json`` being written, a launcher killed there leaves queued jobs that no task
dir knows about, and a relaunch would submit them again. So every submission is written down
first and marked in the scheduler:

1. before ``sbatch``, :func:`record_intent` writes ``RUNS_DIR/.sweeps/<name>.submitting/<token>.json``
   (durably): the tasks of the array, in order, and a random token;
2. the array is submitted with ``--comment=hpcdd-intent:<token>`` (the comment is also in its
   submission script in submitit's folder);
3. once every task's ``job.json`` is written and synced, :func:`drop_intent` removes the record.

A relaunch (:func:`reconcile`, before it plans anything) looks at each record left behind and
asks where its array went: one ``squeue`` call for the sweep's jobs and their comments, and
submitit's folder (its submission scripts carry the token; a script still under its temporary
name was never acknowledged). For an array that exists, each task's pickled job is put where the
job reads it if the kill came before submitit moved it (a job waits 60 s for it), and its
``job.json`` is written: the task is queued (or ran), and is not submitted again. A task whose
job cannot run (its pickle is gone, its job left the queue without it) is cancelled if still
queued and counts as never launched. Then the record is removed.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from hpcdd.errors import HpcddError
from hpcdd.io import atomic_write_json, try_load_json
from hpcdd.sweep import scheduler
from hpcdd.sweep.state import JobRecord, SUBMITIT_DIR, SWEEPS_DIR, Task, read_job, write_job

COMMENT_PREFIX = "hpcdd-intent:"
"""The Slurm comment of an array submitted by ``sweep launch``: this, then the record's token."""


def intent_dir(runs_dir: Path, sweep: str) -> Path:
    return Path(runs_dir) / SWEEPS_DIR / f"{sweep}.submitting"


@contextlib.contextmanager
def launching(runs_dir: Path, sweep: str) -> Iterator[None]:
    """Held while a launch submits into ``runs_dir`` or settles records: two launches of one
    sweep never interleave (a live launch's record is not taken for a crashed one's)."""
    path = Path(runs_dir) / SWEEPS_DIR / f"{sweep}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise HpcddError(f"another 'sweep launch' of {sweep} into {runs_dir} is running; "
                             "let it finish first") from None
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def new_token() -> str:
    """A random token naming one submission (not a seed: nothing computed depends on it)."""
    return uuid.uuid4().hex[:16]


def comment(token: str, user: str | None = None) -> str:
    """The ``--comment`` of the array (after the grid's own ``additional: {comment: ...}``)."""
    return f"{user};{COMMENT_PREFIX}{token}" if user else f"{COMMENT_PREFIX}{token}"


def record_intent(runs_dir: Path, sweep: str, token: str, array: int, tasks: Sequence[Task],
                  submitted_at: str) -> Path:
    """Write (durably) what is about to be submitted: the tasks of one array, in order."""
    path = intent_dir(runs_dir, sweep) / f"{token}.json"
    atomic_write_json(path, {"token": token, "sweep": sweep, "array": array, "submitted_at": submitted_at,
                             "tasks": [{"key": t.key, "dir": str(t.dir.absolute()), "covers": list(t.eval_ids)}
                                       for t in tasks]})
    return path


def drop_intent(path: Path) -> None:
    """The array's job.json files are durable: its record is no longer needed."""
    path.unlink(missing_ok=True)


def pending_intents(runs_dir: Path, sweep: str) -> list[Path]:
    """The records that interrupted launches of ``sweep`` left behind."""
    root = intent_dir(runs_dir, sweep)
    return sorted(root.glob("*.json")) if root.is_dir() else []


@dataclass(frozen=True)
class _Intent:
    path: Path
    token: str
    array: int
    submitted_at: str
    tasks: tuple[dict[str, Any], ...]


def _read(path: Path) -> _Intent | None:
    data = try_load_json(path)
    try:
        return _Intent(path, str(data["token"]), int(data["array"]), str(data["submitted_at"]),
                       tuple(dict(t) for t in data["tasks"]))
    except (TypeError, KeyError, ValueError):
        return None  # torn by a kill before its atomic rename: nothing was submitted after it


def reconcile(runs_dir: Path, sweep: str, echo: Callable[[str], None] = print) -> int:
    """Settle every record an interrupted launch of ``sweep`` left (see the module docstring);
    returns how many tasks were found submitted. Only called where Slurm can be asked."""
    paths = pending_intents(runs_dir, sweep)
    if not paths:
        return 0
    queue = scheduler.jobs_with_comments([f"hpcdd-{sweep}", f"hpcdd-{sweep}-prereq", f"hpcdd-{sweep}-eval"])
    if queue is None:
        raise scheduler.SchedulerError("an interrupted launch left submission records, and squeue cannot be "
                                       "asked where they went; try again when Slurm answers")
    folder = Path(runs_dir) / SUBMITIT_DIR
    found = 0
    with launching(runs_dir, sweep):
        scripts = _scripts_by_token(folder)
        for path in pending_intents(runs_dir, sweep):
            intent = _read(path)
            if intent is not None:
                found += _settle(intent, sweep, folder, queue, scripts)
            drop_intent(path)
    echo(f"reconciled an interrupted launch: {found} task(s) found submitted, not submitted again")
    return found


def _scripts_by_token(folder: Path) -> dict[str, str | None]:
    """token -> array job id from submitit's submission scripts (``None``: the script still has
    its temporary name, so sbatch's answer never came back)."""
    out: dict[str, str | None] = {}
    if not folder.is_dir():
        return out
    for entry in os.scandir(folder):
        if not (entry.name.startswith(".submission_file_") and entry.name.endswith(".sh")):
            continue
        try:
            text = Path(entry.path).read_text(errors="replace")
        except OSError:
            continue
        token = next((line.split(COMMENT_PREFIX, 1)[1].split()[0] for line in text.splitlines()
                      if line.startswith("#SBATCH --comment=") and COMMENT_PREFIX in line), None)
        if token is None:
            continue
        target = Path(os.path.realpath(entry.path)) if entry.is_symlink() else None
        out[token] = target.parent.name if target is not None and target.name.endswith("_submission.sh") else None
    return out


def _settle(intent: _Intent, sweep: str, folder: Path, queue: dict[str, tuple[str, str]],
            scripts: dict[str, str | None]) -> int:
    """Find the array of one record; adopt each of its tasks that can run, cancel those that cannot."""
    mine = [jid for jid, (text, _state) in queue.items() if f"{COMMENT_PREFIX}{intent.token}" in text]
    array = scheduler.base_ids(mine)[0] if mine else scripts.get(intent.token)
    if array is None:
        return 0  # never accepted, or accepted without its pickles and gone: the tasks never ran
    single = len(intent.tasks) == 1
    temps = _temp_pickles(folder, {t["dir"] for t in intent.tasks})
    found, stale = 0, []
    for i, task in enumerate(intent.tasks):
        job_id = array if single else f"{array}_{i}"
        pickle = _submitted_pickle(folder, job_id)
        if not pickle.exists():
            if job_id not in queue or task["dir"] not in temps:
                stale += [job_id] if job_id in queue else []  # it can never run: never launched
                continue
            pickle.parent.mkdir(parents=True, exist_ok=True)
            os.replace(temps.pop(task["dir"]), pickle)  # where the waiting job looks for it
        old = read_job(Path(task["dir"]))
        if old is None or old.job_id != job_id:
            write_job(Path(task["dir"]), JobRecord(job_id, "slurm", sweep, intent.submitted_at, intent.array,
                                                   tuple(task["covers"])))
        found += 1
    if stale:
        scheduler.cancel(stale)  # queued without a job to run: it would fail after 60 s anyway
    for path in temps.values():
        Path(path).unlink(missing_ok=True)
    return found


def _submitted_pickle(folder: Path, job_id: str) -> Path:
    from submitit.core.utils import JobPaths

    return JobPaths(folder / "%j", job_id=job_id).submitted_pickle


def _temp_pickles(folder: Path, dirs: set[str]) -> dict[str, str]:
    """task dir -> path of a job pickle submitit wrote but had not moved into its job's folder."""
    from submitit.core.utils import DelayedSubmission

    out: dict[str, str] = {}
    if not folder.is_dir():
        return out
    for entry in os.scandir(folder):
        if not (entry.name.endswith(".pkl") and len(entry.name) == 36 and entry.is_file()):
            continue
        try:
            job = DelayedSubmission.load(entry.path).function
        except Exception:  # noqa: BLE001 - torn or foreign: not ours to move
            continue
        task_dir = getattr(job, "task_dir", None)
        if task_dir in dirs:
            out[task_dir] = entry.path
    return out


__all__ = ["reconcile", "launching", "record_intent", "drop_intent", "pending_intents", "new_token", "comment",
           "COMMENT_PREFIX"]
