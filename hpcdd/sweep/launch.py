"""``sweep launch``: plan what to submit from the run dirs' state, then submit it as job arrays.

Planning is separate from submitting so ``--dry-run`` shows exactly what a launch would do:

* done runs, and runs whose job is still queued or running, are never resubmitted;
* never-launched runs are submitted; failed or incomplete ones only with ``--retry``;
* on Slurm, the runs go out as arrays of at most ``MaxArraySize`` tasks (several arrays for a
  larger grid), each honouring ``array_parallelism``;
* ``local`` (submitit's LocalExecutor, subprocesses, ``array_parallelism`` at a time, at most
  one per CPU) and ``debug`` (DebugExecutor, in this process) wait for the runs to finish.

Each submitted run dir gets its config (``prepare_run_dir``) before submission and its
``job.json`` right after. The submitit folder is ``RUNS_DIR/.submitit/%j``.
"""

from __future__ import annotations

import dataclasses

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import submitit
from tqdm.auto import tqdm

from hpcdd.config import to_dict
from hpcdd.errors import HpcddError
from hpcdd.run import prepare_run_dir
from hpcdd.sweep import scheduler
from hpcdd.sweep.grid import Sweep, SweepRun
from hpcdd.sweep.job import SweepJob
from hpcdd.io import now_utc
from hpcdd.sweep.state import (
    ACTIVE, DONE, FAILED, NOT_LAUNCHED, PENDING, SUBMITIT_DIR, UNKNOWN, JobRecord, RunState,
    collect_states, read_manifest, write_job, write_manifest,
)

CLUSTERS = ("slurm", "local", "debug")
SUBMIT, SKIP = "submit", "skip"


@dataclass(frozen=True)
class Plan:
    """What a launch would do, decided from the run dirs and one scheduler query."""

    sweep: Sweep
    """The expanded grid."""
    runs_dir: Path
    """Where run dirs live (``RUNS_DIR/<run_id>``)."""
    cluster: str
    """slurm, local or debug."""
    states: dict[str, RunState]
    """State of every run of the grid, by run id."""
    actions: dict[str, str]
    """'submit' or 'skip (why)' per run id."""
    arrays: tuple[int, ...]
    """Sizes of the job arrays to submit (Slurm), or of the waves (local)."""
    dropped: dict[str, RunState] = field(default_factory=dict)
    """Runs of this sweep's previous launch that are not in the grid any more."""

    def to_submit(self) -> list[SweepRun]:
        return [r for r in self.sweep.runs if self.actions[r.run_id] == SUBMIT]


@dataclass
class LaunchReport:
    """What a launch did."""

    submitted: list[str] = field(default_factory=list)
    """Run ids submitted, in grid order."""
    job_ids: dict[str, str] = field(default_factory=dict)
    """Scheduler job id per submitted run id."""
    cancelled: list[str] = field(default_factory=list)
    """Job ids of dropped runs that were cancelled."""
    failed: dict[str, str] = field(default_factory=dict)
    """Local/debug runs that raised: run id -> one-line error."""


# ----------------------------------------------------------------------------------------------
# planning


def _action(state: RunState, retry: bool) -> str:
    if state.state == NOT_LAUNCHED:
        return SUBMIT
    if state.state == FAILED:
        return SUBMIT if retry else f"{SKIP} (failed; --retry resubmits)"
    if state.state == UNKNOWN:
        return f"{SKIP} (unknown: {state.detail})"
    return f"{SKIP} ({state.state})"


def array_sizes(n: int, max_size: int) -> tuple[int, ...]:
    """Split ``n`` tasks into arrays of at most ``max_size`` (indices 0..size-1 < MaxArraySize)."""
    if max_size < 1:
        raise ValueError(f"max_size must be >= 1, got {max_size}")
    return tuple(min(max_size, n - start) for start in range(0, n, max_size))


def plan_launch(sweep: Sweep, runs_dir: str | Path, cluster: str = "slurm", *, retry: bool = False,
                dry_run: bool = False, max_array: int | None = None) -> Plan:
    """Decide what to submit. Checks the partition first when the cluster is Slurm."""
    if cluster not in CLUSTERS:
        raise HpcddError(f"unknown cluster {cluster!r}; choose one of: {', '.join(CLUSTERS)}")
    runs_dir = Path(runs_dir)
    slurm_ok = cluster == "slurm" and _check_partition(sweep, dry_run)
    ids = sweep.run_ids()
    in_grid = set(ids)
    dropped_ids = [i for i in read_manifest(runs_dir, sweep.name) if i not in in_grid]
    states = collect_states(runs_dir, ids + dropped_ids)
    actions = {rid: _action(states[rid], retry) for rid in ids}
    n = sum(a == SUBMIT for a in actions.values())
    if cluster == "slurm":
        if max_array is None and n:
            max_array = scheduler.max_array_size() if slurm_ok else n
        arrays = array_sizes(n, max_array or max(n, 1))
    else:
        arrays = array_sizes(n, local_parallelism(sweep) if cluster == "local" else max(n, 1))
    return Plan(sweep, runs_dir, cluster, {i: states[i] for i in ids}, actions, arrays,
                {i: states[i] for i in dropped_ids})


def _check_partition(sweep: Sweep, dry_run: bool) -> bool:
    """Ask the cluster whether the partition exists; a dry run goes on without a cluster."""
    try:
        scheduler.check_partition(sweep.slurm.partition)
    except scheduler.SlurmUnavailable as e:
        if not dry_run:
            raise
        print(f"hpcdd: warning: {e}; partition and MaxArraySize not checked", file=sys.stderr)
        return False
    return True


def local_parallelism(sweep: Sweep) -> int:
    return max(1, min(sweep.slurm.array_parallelism, os.cpu_count() or 1))


# ----------------------------------------------------------------------------------------------
# executing


def make_executor(cluster: str, runs_dir: Path, sweep: Sweep) -> submitit.AutoExecutor:
    """An AutoExecutor for ``cluster`` with the grid's ``slurm:`` resources."""
    spec = sweep.slurm
    folder = runs_dir / SUBMITIT_DIR / "%j"
    extra = {f"{cluster}_max_num_timeout": spec.max_timeouts} if cluster != "debug" else {}
    executor = submitit.AutoExecutor(folder=folder, cluster=cluster, **extra)
    params: dict[str, Any] = dict(name=f"hpcdd-{sweep.name}", timeout_min=spec.time_min)
    if cluster == "slurm":
        params.update(
            cpus_per_task=spec.cpus_per_task, mem_gb=spec.mem_gb, slurm_partition=spec.partition,
            slurm_gpus_per_task=spec.gpus_per_task, slurm_qos=spec.qos, slurm_account=spec.account,
            slurm_array_parallelism=spec.array_parallelism, slurm_signal_delay_s=spec.signal_delay_s,
            slurm_additional_parameters=dict(spec.additional) or None,
        )
    executor.update_parameters(**params)
    return executor


def job_threads(cluster: str, sweep: Sweep) -> int | None:
    """CPU threads per run unless the grid's exec block sets them: Slurm's cpus_per_task, or the
    cores shared between parallel local runs (oversubscribed OpenMP threads spin-wait and run
    tens of times slower). Debug runs in this process keep its setting."""
    if sweep.exec.threads is not None or cluster == "debug":
        return sweep.exec.threads
    if cluster == "slurm":
        return sweep.slurm.cpus_per_task
    return max(1, (os.cpu_count() or 1) // local_parallelism(sweep))


def make_job(run: SweepRun, runs_dir: Path, sweep: Sweep, cluster: str) -> SweepJob:
    exe = dataclasses.replace(sweep.exec, threads=job_threads(cluster, sweep))
    return SweepJob(to_dict(run.config), str((runs_dir / run.run_id).absolute()), to_dict(exe))


def execute(plan: Plan, *, cancel_dropped: bool = False,
            echo: Callable[[str], None] = print) -> LaunchReport:
    """Submit what ``plan`` says (nothing is submitted if a run dir cannot be prepared)."""
    report = LaunchReport()
    runs = plan.to_submit()
    for run in runs:  # writes config.yaml; refuses a dir that holds another run
        prepare_run_dir(run.config, plan.runs_dir / run.run_id)
    if cancel_dropped:
        report.cancelled = cancel_dropped_runs(plan, echo)
    still = [rid for rid, s in plan.dropped.items()
             if s.state in ACTIVE and s.job_id not in report.cancelled]
    write_manifest(plan.runs_dir, plan.sweep.name, plan.sweep.source, plan.sweep.run_ids(), still)
    if not runs:
        return report
    executor = make_executor(plan.cluster, plan.runs_dir, plan.sweep)
    start = 0
    for k, size in enumerate(plan.arrays):
        chunk = runs[start : start + size]
        start += size
        jobs = _submit_chunk(executor, plan, chunk, k, report)
        if plan.cluster != "slurm":
            _wait_in_process(plan, chunk, jobs, report, echo)
    return report


def _submit_chunk(executor: submitit.AutoExecutor, plan: Plan, chunk: list[SweepRun], k: int,
                  report: LaunchReport) -> list[submitit.Job]:
    try:
        with executor.batch():
            jobs = [executor.submit(make_job(r, plan.runs_dir, plan.sweep, plan.cluster)) for r in chunk]
    except Exception as e:  # sbatch refused, submitit could not parse its answer, ...
        before = f"{len(report.submitted)} runs were submitted before" if report.submitted else "nothing submitted"
        msg = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise scheduler.SchedulerError(
            f"submitting array {k + 1} of {len(plan.arrays)} failed ({before}): {msg}") from None
    stamp = now_utc()
    for run, job in zip(chunk, jobs):
        record = JobRecord(str(job.job_id), plan.cluster, plan.sweep.name, stamp, k)
        write_job(plan.runs_dir / run.run_id, record)
        report.submitted.append(run.run_id)
        report.job_ids[run.run_id] = str(job.job_id)
    return jobs


def _wait_in_process(plan: Plan, chunk: list[SweepRun], jobs: list[submitit.Job], report: LaunchReport,
                     echo: Callable[[str], None]) -> None:
    """Wait for local/debug jobs (debug ones run here, one after the other; like submitit's
    DebugExecutor, a failing debug run opens pdb when stdin is a terminal)."""
    bar = tqdm(total=len(jobs), desc=f"{plan.cluster} runs", unit="run", disable=not sys.stderr.isatty())
    for run, job in zip(chunk, jobs):
        try:
            job.result()
        except Exception as e:  # noqa: BLE001 - a failed run is reported, the others go on
            text = str(e).strip().splitlines()
            report.failed[run.run_id] = text[-1] if text else type(e).__name__
            echo(f"run {run.run_id} failed: {report.failed[run.run_id]}")
        bar.update(1)
    bar.close()


def cancel_dropped_runs(plan: Plan, echo: Callable[[str], None] = print) -> list[str]:
    """``scancel`` (one call) the still-pending Slurm jobs of runs dropped from the grid."""
    ids = [s.job_id for s in plan.dropped.values() if s.state == PENDING and s.job_id]
    if ids:
        scheduler.cancel(ids)
        echo(f"cancelled {len(ids)} queued job(s) of runs dropped from the grid: {' '.join(ids)}")
    return ids


# ----------------------------------------------------------------------------------------------
# waiting (slurm --wait)


def wait_for(runs_dir: Path, run_ids: list[str], *, poll_s: float = 10.0,
             timeout_s: float | None = None) -> dict[str, RunState]:
    """Poll (one squeue call per poll) until no run is pending or running; return the last states.

    Unless every run is done, the sweep must look settled on two polls in a row, so a task in the
    middle of a requeue is not mistaken for a failed one.
    """
    t0 = time.monotonic()
    bar = tqdm(total=len(run_ids), desc="runs done", unit="run", disable=not sys.stderr.isatty())
    settled_before = False
    while True:
        states = collect_states(runs_dir, run_ids)
        bar.n = sum(s.state == DONE for s in states.values())
        bar.refresh()
        settled = not any(s.state in ACTIVE for s in states.values())
        if settled and (settled_before or bar.n == len(run_ids)):
            bar.close()
            return states
        settled_before = settled
        if timeout_s is not None and time.monotonic() - t0 > timeout_s:
            bar.close()
            busy = sum(s.state in ACTIVE for s in states.values())
            raise HpcddError(f"gave up waiting after {timeout_s:.0f}s: {busy} run(s) still pending, "
                             "running or unknown")
        time.sleep(poll_s)


__all__ = ["Plan", "LaunchReport", "plan_launch", "execute", "wait_for", "array_sizes", "make_executor",
           "make_job", "CLUSTERS", "SUBMIT"]
