"""The ``sweep`` subcommands of the ``hpcdd`` CLI: launch, status, retry, cancel, logs.

``register(subparsers)`` adds them to the main parser; each handler returns an exit code. Errors
are raised as :class:`~hpcdd.errors.HpcddError` (``ConfigError`` for a bad grid), which the main
CLI prints as one line with exit code 2. Parsing imports nothing heavy: ``status`` and a dry run
import neither torch nor submitit nor any method.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections import Counter
from pathlib import Path

from hpcdd.errors import ConfigError
from hpcdd.sweep.grid import MAX_POINTS, load_grid

_GRID_HELP = "grid file (YAML: name, base, grid, zip, seeds, evals, exec, slurm); see launch/*.yaml"
_OUT_HELP = "runs directory; each run goes to RUNS_DIR/<run_id>"


def plan_summary(plan) -> list[str]:
    """Human-readable lines: how many tasks, in which states, and what would be submitted."""
    from hpcdd.sweep.launch import SUBMIT
    from hpcdd.sweep.state import BLOCKED, FAILED, PENDING, RUNNING
    from hpcdd.sweep.tables import state_counts

    sweep = plan.sweep
    lines = [f"sweep {sweep.name}: {len(sweep.cells)} cells, {len(sweep.runs)} distillations"
             + (f", {len(sweep.prereqs)} prerequisites" if sweep.prereqs else "")
             + f" ({state_counts(plan.states)})"]
    todo = plan.to_submit()
    spec = sweep.slurm
    if not todo:
        lines.append("nothing to submit")
    for stage in ("prereq", "run", "eval"):
        n = len(plan.to_submit(stage))
        if not n:
            continue
        what = {"prereq": "prerequisite", "run": "distillation", "eval": "evaluation"}[stage]
        if plan.cluster == "slurm":
            sizes = " + ".join(map(str, plan.arrays(stage)))
            where = f"partition {spec.partition}" if spec.partition else "the default partition"
            after = "" if stage == "prereq" or not _needs_wait(plan, stage) else ", after what they need"
            lines.append(f"submit {n} {what} task(s) as {len(plan.arrays(stage))} array(s) of {sizes} "
                         f"(at most {spec.array_parallelism} running per array) on {where}, "
                         f"{spec.time_min} min per task{after}")
        elif plan.cluster == "local":
            lines.append(f"run {n} {what} task(s) locally, {plan.max_array} at a time")
        else:
            lines.append(f"run {n} {what} task(s) in this process, one after the other")
    failed = [k for k, s in plan.states.items() if s.state in (FAILED, BLOCKED) and plan.actions[k] != SUBMIT]
    if failed:
        lines.append(f"{len(failed)} failed or blocked task(s) skipped; 'hpcdd sweep retry' resubmits them")
    queued = [s for s in plan.dropped.values() if s.state in (PENDING, RUNNING)]
    if queued:
        lines.append(f"{len(queued)} run(s) dropped from the grid are still queued or running "
                     "(--cancel-dropped cancels the queued ones)")
    return lines


def _needs_wait(plan, stage: str) -> bool:
    return any(t.needs for t in plan.to_submit(stage))


def _load(args: argparse.Namespace):
    return load_grid(args.grid, max_points=getattr(args, "max_runs", MAX_POINTS))


def cmd_launch(args: argparse.Namespace) -> int:
    from hpcdd.sweep.launch import execute, plan_launch, wait_for
    from hpcdd.sweep.tables import plan_table, state_counts

    sweep = _load(args)
    if args.data_root is not None:  # where the data is on this machine: not part of identity
        sweep = dataclasses.replace(sweep, exec=dataclasses.replace(sweep.exec, data_root=args.data_root))
    runs_dir = Path(args.out)
    plan = plan_launch(sweep, runs_dir, args.cluster, retry=args.retry, dry_run=args.dry_run)
    if args.dry_run:
        print(plan_table(sweep, plan.states, plan.actions))
        print("\n".join(plan_summary(plan)))
        print("dry run: nothing submitted")
        return 0
    print("\n".join(plan_summary(plan)))
    if not plan.to_submit() and not args.cancel_dropped:
        return 0
    report = execute(plan, cancel_dropped=args.cancel_dropped)
    if report.submitted:
        arrays = _job_span(report.job_ids.values()) if args.cluster == "slurm" else ""
        print(f"submitted {len(report.submitted)} task(s)" + (f" (job {arrays})" if arrays else ""))
    if args.cluster == "slurm" and args.wait and report.submitted:
        from hpcdd.sweep.state import FAILED, BLOCKED

        states = wait_for(runs_dir, plan.tasks, poll_s=args.poll_s, timeout_s=args.wait_timeout)
        print(f"sweep {sweep.name}: {state_counts(states)}")
        return 1 if any(s.state in (FAILED, BLOCKED) for s in states.values()) else 0
    if report.failed or report.skipped:
        print(f"{len(report.failed)} task(s) failed, {len(report.skipped)} not run because a task they "
              f"need failed; see 'hpcdd sweep status {args.grid} --out {args.out}'", file=sys.stderr)
        return 1
    return 0


def _job_span(job_ids) -> str:
    from hpcdd.sweep import scheduler

    arrays = scheduler.base_ids(list(job_ids))
    return ", ".join(arrays) if len(arrays) <= 4 else f"{arrays[0]} .. {arrays[-1]}"


def cmd_retry(args: argparse.Namespace) -> int:
    args.retry = True
    return cmd_launch(args)


def cmd_status(args: argparse.Namespace) -> int:
    from hpcdd.sweep.state import STATES, build_tasks, collect_states
    from hpcdd.sweep.tables import cell_state_map, state_counts, status_records, status_table

    sweep = _load(args)
    runs_dir = Path(args.out)
    states = collect_states(runs_dir, build_tasks(sweep, runs_dir))
    cells = cell_state_map(sweep, states)
    prereqs = {k: s for k, s in states.items() if k.startswith("prereq:")}
    if args.json:
        counts = {"cells": _counts(cells.values(), STATES), "prerequisites": _counts(prereqs.values(), STATES)}
        doc = {"sweep": sweep.name, "grid": sweep.source, "runs_dir": str(runs_dir), "axes": list(sweep.axes),
               "counts": counts, "state_filter": args.state, "tasks": status_records(sweep, states, args.state)}
        print(json.dumps(doc, indent=1))
        return 0
    print(status_table(sweep, states, args.state))
    extra = f"; prerequisites: {state_counts(prereqs)}" if prereqs else ""
    shown = f" (showing {args.state})" if args.state else ""
    print(f"sweep {sweep.name}: {len(cells)} cells: {state_counts(cells)}{extra}{shown}")
    _note_interrupted(runs_dir, sweep.name)
    return 0


def _note_interrupted(runs_dir: Path, name: str) -> None:
    from hpcdd.sweep.reconcile import pending_intents

    n = len(pending_intents(runs_dir, name))
    if n:
        print(f"hpcdd: note: an interrupted launch left {n} submission record(s): tasks shown as "
              "'not launched' may be queued; 'hpcdd sweep launch' reconciles them first", file=sys.stderr)


def _counts(states, order) -> dict[str, int]:
    found = Counter(s.state for s in states)
    return {k: found[k] for k in order if found[k]}


def _state_name(text: str) -> str:
    """``--state``: a state of ``sweep status`` (``not_launched``/``not-launched`` for the one with a space)."""
    from hpcdd.sweep.state import STATES

    name = " ".join(text.replace("_", " ").replace("-", " ").split()).lower()
    if name not in STATES:
        raise argparse.ArgumentTypeError(f"unknown state {text!r} (choose one of: {', '.join(STATES)})")
    return name


def cmd_cancel(args: argparse.Namespace) -> int:
    """scancel every queued or running Slurm job of the grid's tasks (one call)."""
    from hpcdd.sweep import reconcile, scheduler
    from hpcdd.sweep.state import ACTIVE, build_tasks, collect_states

    sweep = _load(args)
    runs_dir = Path(args.out)
    if not args.dry_run and reconcile.pending_intents(runs_dir, sweep.name):
        reconcile.reconcile(runs_dir, sweep.name)  # what a killed launch submitted: cancel it too
    states = collect_states(runs_dir, build_tasks(sweep, runs_dir), details=False)
    ids = sorted({s.job_id for s in states.values() if s.state in ACTIVE and s.job_id
                  and not s.job_id.startswith("DEBUG")})
    local = [i for i in ids if i.isdigit()]
    slurm_ids = [i for i in ids if not i.isdigit()]
    if args.dry_run:
        print(f"would cancel {len(ids)} job(s): {' '.join(ids) or '-'}")
        return 0
    if slurm_ids:
        scheduler.cancel(slurm_ids)
    for pid in local:  # local executor: the submitit controller process
        import os
        import signal

        try:
            os.kill(int(pid), signal.SIGTERM)
        except ProcessLookupError:
            pass
    print(f"cancelled {len(ids)} job(s)" + (f": {' '.join(ids)}" if ids else ""))
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    """Print where a run's logs are and their last lines."""
    from hpcdd import rundir
    from hpcdd.sweep.state import read_job, submitit_stderr

    runs_dir = Path(args.out)
    matches = sorted(p for p in runs_dir.glob(f"{args.run}*") if p.is_dir()) if args.run else []
    if len(matches) != 1:
        found = "no run" if not matches else f"{len(matches)} runs"
        raise ConfigError(f"{found} under {runs_dir} match {args.run!r}; give more of the run id")
    run_dir = matches[0]
    record = read_job(run_dir)
    files = [run_dir / rundir.LOG]
    if record and record.cluster != "debug":
        err = submitit_stderr(runs_dir, record.job_id)
        files += [err.with_suffix(".out"), err]
    for path in files:
        print(f"==> {path} <==")
        try:
            lines = path.read_text(errors="replace").splitlines()
        except OSError as e:
            print(f"(unreadable: {e.strerror})")
            continue
        print("\n".join(lines[-args.lines:]))
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("grid", metavar="GRID", help=_GRID_HELP)
    p.add_argument("--out", required=True, metavar="RUNS_DIR", help=_OUT_HELP)
    p.add_argument("--max-runs", type=int, default=MAX_POINTS, metavar="N",
                   help=f"refuse grids of more than N points (default {MAX_POINTS:,})")


def _launch_flags(p: argparse.ArgumentParser, retry_flag: bool) -> None:
    _common(p)
    p.add_argument("--cluster", choices=("slurm", "local", "debug"), default="slurm",
                   help="slurm: submit job arrays and return (default); local: submitit's "
                   "LocalExecutor, subprocesses, waits; debug: in this process, waits")
    p.add_argument("--dry-run", action="store_true",
                   help="print the tasks and what would be submitted; submit nothing")
    if retry_flag:
        p.add_argument("--retry", action="store_true",
                       help="also resubmit failed, blocked or incomplete tasks "
                       "(no 'done', job no longer queued/running)")
    p.add_argument("--cancel-dropped", action="store_true",
                   help="scancel queued jobs of runs that this sweep launched before "
                   "but the grid no longer holds")
    p.add_argument("--data-root", default=None,
                   help="dataset directory for every run (overrides the grid's exec.data_root)")
    p.add_argument("--wait", action="store_true", help="slurm: wait until every task is done or failed")
    p.add_argument("--poll-s", type=float, default=10.0, help="seconds between scheduler polls with --wait")
    p.add_argument("--wait-timeout", type=float, default=None, help="give up --wait after this many seconds")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``sweep {launch,status,retry,cancel,logs}`` to the main parser."""
    s = subparsers.add_parser(
        "sweep", help="expand a grid file and run it as Slurm job arrays (or locally); status, retry",
        description="Sweeps: a grid file names a base config and what varies; every point is one "
        "(distillation, evaluation) cell, each distillation one run dir RUNS_DIR/<run_id>, each "
        "prerequisite (a pretrained GAN, expert trajectories) one artefact built once. 'launch' "
        "submits what is not done or queued, 'status' shows where each cell stands, 'retry' "
        "resubmits failed tasks, 'cancel' cancels queued/running ones, 'logs' shows a run's logs.")
    sub = s.add_subparsers(dest="sweep_command", metavar="SWEEP_COMMAND", required=True)
    launch = sub.add_parser("launch", help="submit the grid's tasks that are not done, queued or running",
                            description="Submit every task of GRID that is not done and not queued or "
                            "running: prerequisites first, then distillations (and evaluations) that "
                            "wait for them, as job arrays split to the cluster's MaxArraySize. Idempotent.")
    _launch_flags(launch, retry_flag=True)
    launch.set_defaults(func=cmd_launch, retry=False)
    status = sub.add_parser("status", help="table of the grid's cells: state, job, progress, error",
                            description="Show each prerequisite's and each (run, evaluation) cell's state "
                            "(done / running / pending / failed / blocked / not launched), its job id, the "
                            "progress of running ones (iteration i/N, eval model j/n), the last line of its "
                            "log.txt and the error of failed ones. Reads the run dirs first and the "
                            "scheduler second (one squeue and one sacct call).")
    _common(status)
    status.add_argument("--json", action="store_true",
                        help="print one JSON document (sweep, counts, one record per prerequisite and cell: "
                        "task, id, point, state, detail, job, progress, last_log, error) instead of the table")
    status.add_argument("--state", type=_state_name, default=None, metavar="STATE",
                        help="show only the prerequisites and cells in this state: done, running, pending, "
                        "failed, blocked, not_launched, unknown (the summary line still counts all)")
    status.set_defaults(func=cmd_status)
    retry = sub.add_parser("retry", help="resubmit failed, blocked or incomplete tasks (= launch --retry)",
                           description="Same as 'sweep launch --retry': resubmit tasks with no 'done' whose "
                           "job is no longer queued or running, and submit never-launched ones.")
    _launch_flags(retry, retry_flag=False)
    retry.set_defaults(func=cmd_retry)
    cancel = sub.add_parser("cancel", help="cancel the grid's queued and running jobs",
                            description="scancel (one call) every queued or running Slurm job of GRID's "
                            "tasks (local runs: stop their process). Checkpoints stay: a later launch "
                            "resumes them.")
    _common(cancel)
    cancel.add_argument("--dry-run", action="store_true", help="list the jobs; cancel nothing")
    cancel.set_defaults(func=cmd_cancel)
    logs = sub.add_parser("logs", help="print a run's log.txt and its job's stdout/stderr",
                          description="Print the last lines of RUN's log.txt and of the submitit stdout "
                          "and stderr of its job (which live under RUNS_DIR/.submitit/<job id>/).")
    logs.add_argument("run", metavar="RUN", help="a run id (a unique prefix is enough)")
    logs.add_argument("--out", required=True, metavar="RUNS_DIR", help=_OUT_HELP)
    logs.add_argument("-n", "--lines", type=int, default=20, help="lines per file (default 20)")
    logs.set_defaults(func=cmd_logs)


__all__ = ["register", "cmd_launch", "cmd_status", "cmd_retry", "cmd_cancel", "cmd_logs", "plan_summary"]
