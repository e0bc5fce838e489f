"""The few Slurm client calls the sweep layer makes, batched, each an argument list with a timeout.

Nothing here is called once per run: ``queue_states`` and ``accounting_states`` take every job id
of a sweep in ONE ``squeue`` / ``sacct`` call. A missing or failing client is not fatal for
status queries (the run dirs are the source of truth); it returns ``None`` instead.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from typing import Sequence

from hpcdd.errors import ConfigError, HpcddError

TIMEOUT_S = 30
"""Seconds any single Slurm client call may take."""

QUEUED = frozenset({"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED",
                    "RESV_DEL_HOLD", "SUSPENDED", "RESIZING", "SPECIAL_EXIT", "SIGNALING"})
"""Scheduler states of a task that will still run: pending."""
RUNNING = frozenset({"RUNNING", "COMPLETING", "STAGE_OUT"})
"""Scheduler states of a task that is running now."""


class SchedulerError(HpcddError):
    """A Slurm client call failed where its answer is required (submission, cancel)."""


class SlurmUnavailable(ConfigError):
    """The Slurm clients are missing or cannot reach a controller."""


def _run(args: list[str]) -> subprocess.CompletedProcess | None:
    """Run a client; ``None`` when it is not installed or did not answer in time."""
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return None


def partitions() -> list[str]:
    """Partition names from ``sinfo -h -o %R``; ``ConfigError`` if Slurm cannot be asked."""
    if shutil.which("sinfo") is None:
        raise SlurmUnavailable("--cluster slurm needs the Slurm client tools, but sinfo is not on PATH "
                          "(use --cluster local or --cluster debug on a machine without Slurm)")
    proc = _run(["sinfo", "-h", "-o", "%R"])
    if proc is None or proc.returncode != 0:
        why = "timed out" if proc is None else (proc.stderr.strip().splitlines() or ["failed"])[-1]
        raise SlurmUnavailable(f"cannot list Slurm partitions (sinfo -h -o %R: {why}); is SLURM_CONF set?")
    return sorted({line.strip() for line in proc.stdout.splitlines() if line.strip()})


def check_partition(partition: str | None) -> None:
    """Raise ``ConfigError`` unless ``partition`` (None: the default) exists on this cluster."""
    names = partitions()
    if partition is not None and partition not in names:
        raise ConfigError(f"unknown Slurm partition {partition!r}; this cluster has: {', '.join(names)}")


def max_array_size() -> int:
    """``MaxArraySize`` from ``scontrol show config`` (array indices must be below it)."""
    proc = _run(["scontrol", "show", "config"])
    if proc is None or proc.returncode != 0:
        raise SchedulerError("cannot read MaxArraySize (scontrol show config failed)")
    m = re.search(r"^MaxArraySize\s*=\s*(\d+)", proc.stdout, re.MULTILINE)
    if not m:
        raise SchedulerError("scontrol show config printed no MaxArraySize")
    return int(m.group(1))


def base_ids(job_ids: Sequence[str]) -> list[str]:
    """Unique array job ids of task ids like ``123_4`` (asking for 123 returns all its tasks)."""
    return sorted({j.split("_")[0] for j in job_ids}, key=lambda s: (len(s), s))


def queue_states(job_ids: Sequence[str]) -> dict[str, str] | None:
    """``{task id: state}`` of every listed job still in the queue (one ``squeue`` call).

    Tasks not in the answer have left the queue. ``None``: squeue is unavailable.
    """
    ids = base_ids(job_ids)
    if not ids:
        return {}
    proc = _run(["squeue", "-h", "-r", "-o", "%i|%T", "-j", ",".join(ids)])
    if proc is None:
        return None
    if proc.returncode != 0:
        if "Invalid job id" in proc.stderr:  # every listed job left squeue's memory
            return {}
        return None
    return _parse_lines(proc.stdout)


def jobs_with_comments(names: Sequence[str]) -> dict[str, tuple[str, str]] | None:
    """``{task id: (comment, state)}`` of every queued or running job with one of these job names
    (one ``squeue`` call); ``None``: squeue is unavailable."""
    proc = _run(["squeue", "-h", "-r", "-o", "%i|%T|%k", "-n", ",".join(names)])
    if proc is None or proc.returncode != 0:
        return None
    out: dict[str, tuple[str, str]] = {}
    for line in proc.stdout.splitlines():
        parts = line.strip().split("|", 2)
        if len(parts) == 3 and parts[0]:
            for task in expand_task_ids(parts[0]):
                out[task] = (parts[2], parts[1])
    return out


def accounting_states(job_ids: Sequence[str]) -> dict[str, str] | None:
    """``{task id: state}`` from accounting (one ``sacct`` call); ``None`` when sacct fails."""
    ids = base_ids(job_ids)
    if not ids:
        return {}
    proc = _run(["sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j", ",".join(ids)])
    if proc is None or proc.returncode != 0:
        return None
    return _parse_lines(proc.stdout)


def _parse_lines(text: str) -> dict[str, str]:
    """``JOBID|STATE`` lines; array ranges like ``12_[3-5,8%2]`` expand to one entry per task."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) < 2 or not parts[0]:
            continue
        state = parts[1].split()[0] if parts[1].split() else "UNKNOWN"  # "CANCELLED by 0"
        for task in expand_task_ids(parts[0]):
            out[task] = state
    return out


def expand_task_ids(job_id: str) -> list[str]:
    """``12_[3-5,8%2]`` -> ``[12_3, 12_4, 12_5, 12_8]``; anything else is returned as is."""
    m = re.fullmatch(r"(\d+)_\[([\d,\-]+)(?:%\d+)?\]", job_id)
    if not m:
        return [job_id]
    out = []
    for part in m.group(2).split(","):
        lo, _, hi = part.partition("-")
        out += [f"{m.group(1)}_{i}" for i in range(int(lo), int(hi or lo) + 1)]
    return out


def cancel(job_ids: Sequence[str]) -> None:
    """``scancel`` the given task ids in one call."""
    if not job_ids:
        return
    proc = _run(["scancel", *job_ids])
    if proc is None or proc.returncode != 0:
        why = "timed out or missing" if proc is None else proc.stderr.strip()
        raise SchedulerError(f"scancel {' '.join(job_ids)} failed: {why}")


__all__ = [
    "partitions", "check_partition", "max_array_size", "queue_states", "accounting_states", "jobs_with_comments",
    "cancel", "expand_task_ids", "SchedulerError", "SlurmUnavailable", "QUEUED", "RUNNING",
]
