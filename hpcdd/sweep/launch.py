"""``sweep launch``: plan what to submit from the task dirs' state, then submit it stage by stage.

Planning is separate from submitting so ``--dry-run`` shows exactly what a launch would do:

* done tasks, and tasks whose job is still queued or running, are never resubmitted;
* never-launched tasks are submitted; failed or blocked ones only with ``--retry``;
* tasks go out in waves: first everything that waits for nothing (prerequisites, deduplicated: one
  job per artefact, and runs that need none), then what needs those, and so on. On Slurm each
  (stage, dependency) group is submitted as arrays of at most ``MaxArraySize`` tasks that wait for
  what they need with ``--dependency=afterok:<jobs>`` (and ``--kill-on-invalid-dep=yes``: if a
  prerequisite fails, its dependants leave the queue and show as blocked); ``local`` (submitit's
  LocalExecutor) runs a pool of ``array_parallelism`` slots (at most one per CPU) that starts a task
  as soon as what it needs has finished, ``debug`` runs them one by one in this process; both skip
  the dependants of a failed task and report progress.

Before anything is submitted every task dir is checked (never another run's, never foreign files);
on Slurm each array's tasks are written down before ``sbatch`` and the array carries the record's
token as its comment, so a relaunch after a launcher killed at any point finds what it submitted
(:mod:`hpcdd.sweep.reconcile`); after each array is submitted, each of its tasks gets a
``job.json``, made durable by one ``syncfs`` for the whole array instead of fsyncs per file (see
:func:`_durable`), and the record is dropped. The submitit folder is ``RUNS_DIR/.submitit/%j``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from hpcdd import rundir
from hpcdd.catalog import prereq_id
from hpcdd.config import to_dict
from hpcdd.errors import HpcddError
from hpcdd.io import now_utc, sync_filesystem
from hpcdd.sweep import reconcile, scheduler
from hpcdd.sweep.grid import Sweep
from hpcdd.sweep.state import (
    ACTIVE, BLOCKED, DONE, FAILED, NOT_LAUNCHED, PENDING, RUNNING, STAGES, SUBMITIT_DIR, UNKNOWN, JobRecord,
    Task, TaskState, build_tasks, collect_states, read_manifest, write_job, write_manifest,
)

CLUSTERS = ("slurm", "local", "debug")
SUBMIT, SKIP = "submit", "skip"


@dataclass(frozen=True)
class Plan:
    """What a launch would do, decided from the task dirs and one scheduler query."""

    sweep: Sweep
    """The expanded grid."""
    runs_dir: Path
    """Where run dirs live (``RUNS_DIR/<run_id>``)."""
    cluster: str
    """slurm, local or debug."""
    tasks: list[Task]
    """Every task, in submission order."""
    states: dict[str, TaskState]
    """State of every task, by key."""
    actions: dict[str, str]
    """'submit' or 'skip (why)' per task key."""
    max_array: int
    """Largest array (Slurm) or wave (local) size."""
    dropped: dict[str, TaskState] = field(default_factory=dict)
    """Run tasks of this sweep's previous launch that are not in the grid any more."""

    def to_submit(self, stage: str | None = None) -> list[Task]:
        return [t for t in self.tasks if self.actions[t.key] == SUBMIT and (stage is None or t.stage == stage)]

    def arrays(self, stage: str) -> tuple[int, ...]:
        return array_sizes(len(self.to_submit(stage)), self.max_array)


@dataclass
class LaunchReport:
    """What a launch did."""

    submitted: list[str] = field(default_factory=list)
    """Task keys submitted, in order."""
    job_ids: dict[str, str] = field(default_factory=dict)
    """Scheduler job id per submitted task key."""
    cancelled: list[str] = field(default_factory=list)
    """Job ids of dropped runs that were cancelled."""
    failed: dict[str, str] = field(default_factory=dict)
    """Local/debug tasks that raised: task key -> one-line error."""
    skipped: list[str] = field(default_factory=list)
    """Local/debug tasks not run because a task they need failed."""


# ----------------------------------------------------------------------------------------------
# planning


def _action(task: Task, state: TaskState, retry: bool, states: dict[str, TaskState], actions: dict[str, str]) -> str:
    if state.state == NOT_LAUNCHED:
        return SUBMIT
    if state.state == FAILED:
        return SUBMIT if retry else f"{SKIP} (failed; --retry resubmits)"
    if state.state == BLOCKED:
        if retry and all(actions.get(k) == SUBMIT or states[k].state in (DONE, *ACTIVE) for k in task.needs):
            return SUBMIT
        return f"{SKIP} (blocked: {state.detail}; --retry resubmits it with what it needs)"
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
    if cluster == "slurm" and reconcile.pending_intents(runs_dir, sweep.name):
        if dry_run:
            print("hpcdd: warning: an interrupted launch left submission records; the next launch "
                  "reconciles them with the queue first (tasks shown as 'submit' may be queued)", file=sys.stderr)
        elif slurm_ok:
            reconcile.reconcile(runs_dir, sweep.name)
    tasks = build_tasks(sweep, runs_dir)
    in_grid = set(sweep.run_ids())
    dropped_ids = [i for i in read_manifest(runs_dir, sweep.name) if i not in in_grid]
    dropped_tasks = [Task(f"run:{i}", "run", runs_dir / i) for i in dropped_ids]
    states = collect_states(runs_dir, tasks + dropped_tasks, details=False)
    actions: dict[str, str] = {}
    for t in tasks:  # in stage order, so a task sees whether what it needs is submitted
        actions[t.key] = _action(t, states[t.key], retry, states, actions)
    n = max((sum(1 for t in tasks if actions[t.key] == SUBMIT and t.stage == s) for s in STAGES), default=0)
    if cluster == "slurm":
        if max_array is None:
            max_array = scheduler.max_array_size() if slurm_ok and n else max(n, 1)
    else:
        max_array = local_parallelism(sweep) if cluster == "local" else max(n, 1)
    return Plan(sweep, runs_dir, cluster, tasks, {t.key: states[t.key] for t in tasks}, actions,
                max_array, {t.key: states[t.key] for t in dropped_tasks})


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


def make_executor(cluster: str, runs_dir: Path, sweep: Sweep, stage: str = "run",
                  dependency: str | None = None) -> Any:
    """An AutoExecutor for ``cluster`` with the grid's ``slurm:`` resources."""
    import submitit

    spec = sweep.slurm
    folder = runs_dir / SUBMITIT_DIR / "%j"
    extra = {f"{cluster}_max_num_timeout": spec.max_timeouts} if cluster != "debug" else {}
    executor = submitit.AutoExecutor(folder=folder, cluster=cluster, **extra)
    name = f"hpcdd-{sweep.name}" if stage == "run" else f"hpcdd-{sweep.name}-{stage}"
    params: dict[str, Any] = dict(name=name, timeout_min=spec.time_min)
    if cluster == "slurm":
        additional = {k: v for k, v in spec.additional.items() if k != "comment"}  # see _submit_chunk
        if dependency:
            additional.update(dependency=dependency, kill_on_invalid_dep="yes")
        params.update(
            cpus_per_task=spec.cpus_per_task, mem_gb=spec.mem_gb, slurm_partition=spec.partition,
            slurm_gpus_per_task=spec.gpus_per_task, slurm_qos=spec.qos, slurm_account=spec.account,
            gpus_per_node=spec.gpus_per_node,  # a multi-process run (one task per GPU): README
            tasks_per_node=spec.tasks_per_node if spec.tasks_per_node > 1 else None,
            nodes=spec.nodes if spec.nodes > 1 else None,
            slurm_array_parallelism=spec.array_parallelism, slurm_signal_delay_s=spec.signal_delay_s,
            slurm_additional_parameters=additional or None,
        )
    executor.update_parameters(**params)
    return executor


def job_threads(cluster: str, sweep: Sweep) -> int | None:
    """CPU threads per task unless the grid's exec block sets them: Slurm's cpus_per_task, or the
    cores shared between parallel local tasks (oversubscribed OpenMP threads spin-wait and run
    tens of times slower). Debug runs in this process keep its setting."""
    if sweep.exec.threads is not None or cluster == "debug":
        return sweep.exec.threads
    if cluster == "slurm":
        return sweep.slurm.cpus_per_task
    return max(1, (os.cpu_count() or 1) // local_parallelism(sweep))


def make_job(task: Task, sweep: Sweep, exec_dict: dict[str, Any]) -> Any:
    """The pickled callable of one task (plain dicts only)."""
    from hpcdd.sweep.job import SweepJob

    if task.stage == "prereq":
        payload = {"kind": task.prereq.ref.kind, "config": to_dict(task.prereq.ref.config)}
    elif task.stage == "eval":
        ev = dict(zip(task.run.eval_ids, task.run.evals))[task.eval_ids[0]]
        payload = {"eval": to_dict(ev)}
    else:
        evals = dict(zip(task.run.eval_ids, task.run.evals))
        payload = {"config": to_dict(task.run.config), "evals": [to_dict(evals[e]) for e in task.eval_ids]}
    return SweepJob(task.stage, payload, str(task.dir.absolute()), exec_dict)


def execute(plan: Plan, *, cancel_dropped: bool = False,
            echo: Callable[[str], None] = print) -> LaunchReport:
    """Submit what ``plan`` says, stage by stage (nothing is submitted if a dir cannot be prepared)."""
    report = LaunchReport()
    todo = plan.to_submit()
    _prepare_dirs(plan, todo)
    if cancel_dropped:
        report.cancelled = cancel_dropped_runs(plan, echo)
    still = [key.split(":", 1)[1] for key, s in plan.dropped.items()
             if s.state in ACTIVE and s.job_id not in report.cancelled]
    write_manifest(plan.runs_dir, plan.sweep.name, plan.sweep.source, plan.sweep.run_ids(), still)
    if not todo:
        return report
    exec_dict = to_dict(dataclasses.replace(plan.sweep.exec, threads=job_threads(plan.cluster, plan.sweep)))
    if plan.cluster != "slurm":
        try:
            _run_here(plan, todo, exec_dict, report, echo)
        finally:  # submitit's local controller creates its folder with '%j' unexpanded: empty
            with contextlib.suppress(OSError):
                (plan.runs_dir / SUBMITIT_DIR / "%j").rmdir()
        return report
    with reconcile.launching(plan.runs_dir, plan.sweep.name):
        _submit_waves(plan, todo, exec_dict, report)
    return report


def _submit_waves(plan: Plan, todo: list[Task], exec_dict: dict[str, Any], report: LaunchReport) -> None:
    """Slurm: one array per (stage, dependency) group and MaxArraySize chunk, wave after wave."""
    for wave in _waves(todo):
        for group in _by_dependency(plan, wave, report):
            dependency = _dependency(plan, group, report)
            executor = make_executor(plan.cluster, plan.runs_dir, plan.sweep, group[0].stage, dependency)
            start = 0
            for k, size in enumerate(array_sizes(len(group), plan.max_array)):
                chunk = group[start : start + size]
                start += size
                _submit_chunk(executor, plan, chunk, k, exec_dict, report)


def _waves(tasks: list[Task]) -> list[list[Task]]:
    """Tasks grouped by how many submitted tasks they wait for in a chain: wave 0 needs nothing
    submitted now (prerequisites, and runs without any, go together), wave 1 needs wave 0, ..."""
    depth: dict[str, int] = {}
    for t in tasks:  # in stage order: what a task needs comes before it
        depth[t.key] = max((depth[k] + 1 for k in t.needs if k in depth), default=0)
    return [[t for t in tasks if depth[t.key] == d] for d in sorted(set(depth.values()))]


def _by_dependency(plan: Plan, wave: list[Task], report: LaunchReport) -> list[list[Task]]:
    """One Slurm array per stage and set of jobs waited for (an array has one dependency)."""
    groups: dict[tuple[str, str | None], list[Task]] = {}
    for t in wave:
        groups.setdefault((t.stage, _dependency(plan, [t], report)), []).append(t)
    return list(groups.values())


def _prepare_dirs(plan: Plan, tasks: list[Task]) -> None:
    """Refuse a task dir that holds another run (or foreign files) before anything is submitted.

    Launch writes nothing into a run dir but its ``job.json``: the job writes the identity files
    (run.json, config.yaml) when it starts, durably, under the run-dir lock.
    """
    for t in tasks:
        if t.stage == "run":
            rundir.check_free(t.dir, t.run.run_id, clear_now=False)
        elif t.stage == "prereq":
            rundir.check_free(t.dir, prereq_id(t.prereq.ref), kind=rundir.PREREQ_KIND, clear_now=False)


def _durable(plan: Plan, tasks: list[Task]) -> None:
    """One ``syncfs`` per file system for every ``job.json`` just written, instead of two fsyncs
    per file. Atomic renames mean no reader ever sees a torn ``job.json``; a crash before this
    sync can lose some of them, which makes those tasks look 'not launched': a relaunch resubmits
    them, and the run-dir lock (and ``done``) keeps a duplicate job from running twice."""
    roots = {plan.runs_dir, *(t.dir.parent for t in tasks if t.stage == "prereq")}
    for root in roots:
        if root.exists():
            sync_filesystem(root)


def _dependency(plan: Plan, tasks: list[Task], report: LaunchReport) -> str | None:
    """``afterok:<array ids>`` of the unfinished jobs the tasks need (submitted now or queued)."""
    ids = []
    for t in tasks:
        for key in t.needs:
            if key in report.job_ids:
                ids.append(report.job_ids[key])
            elif plan.states[key].state in ACTIVE and plan.states[key].job_id:
                ids.append(plan.states[key].job_id)
    arrays = scheduler.base_ids(ids)
    return "afterok:" + ":".join(arrays) if arrays else None


def _submit_chunk(executor: Any, plan: Plan, chunk: list[Task], k: int, exec_dict: dict[str, Any],
                  report: LaunchReport) -> list[Any]:
    """Submit one array. On Slurm its tasks are written down first and the array carries the
    record's token as its comment (:mod:`hpcdd.sweep.reconcile`), so a launcher killed anywhere
    in here leaves what a relaunch needs to find the array instead of submitting it again."""
    stamp = now_utc()
    intent = None
    if plan.cluster == "slurm":
        token = reconcile.new_token()
        intent = reconcile.record_intent(plan.runs_dir, plan.sweep.name, token, k, chunk, stamp)
        executor.update_parameters(slurm_comment=reconcile.comment(token, plan.sweep.slurm.additional.get("comment")))
    try:
        with executor.batch():
            jobs = [executor.submit(make_job(t, plan.sweep, exec_dict)) for t in chunk]
    except Exception as e:  # sbatch refused, submitit could not parse its answer, ...
        before = f"{len(report.submitted)} tasks were submitted before" if report.submitted else "nothing submitted"
        msg = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise scheduler.SchedulerError(f"submitting a {chunk[0].stage} array failed ({before}): {msg}") from None
    for task, job in zip(chunk, jobs):
        record = JobRecord(str(job.job_id), plan.cluster, plan.sweep.name, stamp, k, tuple(task.eval_ids))
        write_job(task.dir, record, sync=False)
        report.submitted.append(task.key)
        report.job_ids[task.key] = str(job.job_id)
    _durable(plan, chunk)
    if intent is not None:
        reconcile.drop_intent(intent)
    return jobs


def _run_here(plan: Plan, todo: list[Task], exec_dict: dict[str, Any], report: LaunchReport,
              echo: Callable[[str], None]) -> None:
    """Local and debug: a pool of ``plan.max_array`` slots (debug: one, in this process). A task
    starts as soon as a slot is free and every task it needs has finished; the dependants of a
    failed task are not run (they show as blocked). Progress goes to stderr: a bar on a terminal,
    else a line every 30 s."""
    executor = make_executor(plan.cluster, plan.runs_dir, plan.sweep, "run")
    keys = {t.key for t in todo}
    width = plan.max_array if plan.cluster == "local" else 1
    waiting, running, ok = list(todo), [], set()
    progress = _Progress(plan.cluster, len(todo))
    while waiting or running:
        for t in list(waiting):
            needs = [k for k in t.needs if k in keys]
            bad = [k for k in needs if k in report.failed or k in report.skipped]
            if bad:
                waiting.remove(t)
                report.skipped.append(t.key)
                echo(f"{t.key} not run: {bad[0]} failed")
            elif len(running) < width and all(k in ok for k in needs):
                waiting.remove(t)
                running.append((t, _submit_chunk(executor, plan, [t], 0, exec_dict, report)[0]))
        finished = [(t, job) for t, job in running if plan.cluster == "debug" or job.done()]
        for t, job in finished:
            running.remove((t, job))
            try:
                job.result()
                ok.add(t.key)
            except Exception as e:  # noqa: BLE001 - a failed task is reported, the others go on
                text = str(e).strip().splitlines()
                report.failed[t.key] = text[-1] if text else type(e).__name__
                echo(f"{t.key} failed: {report.failed[t.key]}")
        progress.update(len(ok), len(running), len(report.failed) + len(report.skipped))
        if not finished and running:
            time.sleep(1.0)
    progress.close()


class _Progress:
    """'local: 3/11 done, 2 running, 0 failed, 85 s': a tqdm bar on a terminal, else a line every
    ``every`` seconds (so a sweep in a log file or CI shows it is alive)."""

    def __init__(self, cluster: str, total: int, every: float = 30.0) -> None:
        from tqdm.auto import tqdm

        self.cluster, self.total, self.every = cluster, total, every
        self.t0 = time.monotonic()
        self.last = self.t0 - every  # the first line at once
        self.tty = sys.stderr.isatty()
        self.bar = tqdm(total=total, desc=f"{cluster} tasks", unit="task", file=sys.stderr) if self.tty else None
        self.line = ""

    def update(self, done: int, running: int, failed: int) -> None:
        elapsed = time.monotonic() - self.t0
        self.line = (f"{self.cluster}: {done}/{self.total} done, {running} running, {failed} failed, "
                     f"{elapsed:.0f} s")
        if self.bar is not None:
            self.bar.n = done + failed
            self.bar.set_postfix(running=running, failed=failed)
        elif time.monotonic() - self.last >= self.every:
            print(self.line, file=sys.stderr, flush=True)
            self.last = time.monotonic()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.line:
            print(self.line, file=sys.stderr, flush=True)


def cancel_dropped_runs(plan: Plan, echo: Callable[[str], None] = print) -> list[str]:
    """``scancel`` (one call) the still-pending Slurm jobs of runs dropped from the grid."""
    ids = [s.job_id for s in plan.dropped.values() if s.state == PENDING and s.job_id]
    if ids:
        scheduler.cancel(ids)
        echo(f"cancelled {len(ids)} queued job(s) of runs dropped from the grid: {' '.join(ids)}")
    return ids


# ----------------------------------------------------------------------------------------------
# waiting (slurm --wait)


def wait_for(runs_dir: Path, tasks: list[Task], *, poll_s: float = 10.0,
             timeout_s: float | None = None) -> dict[str, TaskState]:
    """Poll (one squeue call per poll) until no task is pending or running; return the last states.

    Unless every task is done, the sweep must look settled on two polls in a row, so a task in the
    middle of a requeue is not mistaken for a failed one.
    """
    t0 = time.monotonic()
    progress = _Progress("slurm", len(tasks))
    settled_before = False
    while True:
        states = collect_states(runs_dir, tasks, details=False)
        counts = Counter(s.state for s in states.values())
        progress.update(counts[DONE], counts[RUNNING], counts[FAILED] + counts[BLOCKED])
        settled = not any(s.state in ACTIVE for s in states.values())
        if settled and (settled_before or counts[DONE] == len(tasks)):
            progress.close()
            return states
        settled_before = settled
        if timeout_s is not None and time.monotonic() - t0 > timeout_s:
            progress.close()
            busy = sum(s.state in ACTIVE for s in states.values())
            raise HpcddError(f"gave up waiting after {timeout_s:.0f}s: {busy} task(s) still pending, "
                             "running or unknown")
        time.sleep(poll_s)


__all__ = ["Plan", "LaunchReport", "plan_launch", "execute", "wait_for", "array_sizes", "make_executor",
           "make_job", "CLUSTERS", "SUBMIT", "job_threads", "local_parallelism"]
