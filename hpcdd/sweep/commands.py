"""The ``sweep`` subcommands of the ``hpcdd`` CLI: launch, status, retry.

``register(subparsers)`` adds them to the main parser; each handler returns an exit code. Errors
are raised as :class:`~hpcdd.errors.HpcddError` (``ConfigError`` for a bad grid), which the main
CLI prints as one line with exit code 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from hpcdd.sweep import scheduler
from hpcdd.sweep.grid import load_grid
from hpcdd.sweep.launch import CLUSTERS, SUBMIT, Plan, execute, plan_launch, wait_for
from hpcdd.sweep.state import FAILED, PENDING, RUNNING, collect_states
from hpcdd.sweep.tables import plan_table, state_counts, status_table

_GRID_HELP = "grid file (YAML: name, base, grid, zip, seeds, exec, slurm); see launch/*.yaml"
_OUT_HELP = "runs directory; each run goes to RUNS_DIR/<run_id>"


def plan_summary(plan: Plan) -> list[str]:
    """Human-readable lines: how many runs, in which states, and what would be submitted."""
    n_submit = sum(a == SUBMIT for a in plan.actions.values())
    lines = [f"sweep {plan.sweep.name}: {len(plan.sweep.runs)} runs ({state_counts(plan.states)})"]
    spec = plan.sweep.slurm
    if not n_submit:
        lines.append("nothing to submit")
    elif plan.cluster == "slurm":
        sizes = " + ".join(map(str, plan.arrays))
        where = f"partition {spec.partition}" if spec.partition else "the default partition"
        lines.append(f"submit {n_submit} runs as {len(plan.arrays)} array(s) of {sizes} tasks "
                     f"(at most {spec.array_parallelism} running per array) on {where}, "
                     f"{spec.time_min} min per task")
    elif plan.cluster == "local":
        lines.append(f"run {n_submit} runs locally, {max(plan.arrays)} at a time")
    else:
        lines.append(f"run {n_submit} runs in this process, one after the other")
    failed = [rid for rid, s in plan.states.items() if s.state == FAILED and plan.actions[rid] != SUBMIT]
    if failed:
        lines.append(f"{len(failed)} failed run(s) skipped; 'hpcdd sweep retry' resubmits them")
    queued = [s for s in plan.dropped.values() if s.state in (PENDING, RUNNING)]
    if queued:
        lines.append(f"{len(queued)} run(s) dropped from the grid are still queued or running "
                     "(--cancel-dropped cancels the queued ones)")
    return lines


def cmd_launch(args: argparse.Namespace) -> int:
    sweep = load_grid(args.grid)
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
    report = execute(plan, cancel_dropped=args.cancel_dropped)
    arrays = _job_span(report.job_ids.values()) if report.submitted and args.cluster == "slurm" else ""
    print(f"submitted {len(report.submitted)} run(s)" + (f" (job {arrays})" if arrays else ""))
    if args.cluster == "slurm" and args.wait and report.submitted:
        states = wait_for(runs_dir, sweep.run_ids(), poll_s=args.poll_s, timeout_s=args.wait_timeout)
        print(f"sweep {sweep.name}: {state_counts(states)}")
        return 1 if any(s.state == FAILED for s in states.values()) else 0
    if report.failed:
        print(f"{len(report.failed)} run(s) failed; see 'hpcdd sweep status {args.grid} --out {args.out}'",
              file=sys.stderr)
        return 1
    return 0


def _job_span(job_ids) -> str:
    arrays = scheduler.base_ids(list(job_ids))
    return ", ".join(arrays) if len(arrays) <= 4 else f"{arrays[0]} .. {arrays[-1]}"


def cmd_retry(args: argparse.Namespace) -> int:
    args.retry = True
    return cmd_launch(args)


def cmd_status(args: argparse.Namespace) -> int:
    sweep = load_grid(args.grid)
    states = collect_states(Path(args.out), sweep.run_ids())
    print(status_table(sweep, states))
    print(f"sweep {sweep.name}: {state_counts(states)}")
    return 0


def _launch_flags(p: argparse.ArgumentParser, retry_flag: bool) -> None:
    p.add_argument("grid", metavar="GRID", help=_GRID_HELP)
    p.add_argument("--out", required=True, metavar="RUNS_DIR", help=_OUT_HELP)
    p.add_argument("--cluster", choices=CLUSTERS, default="slurm",
                   help="slurm: submit job arrays and return (default); local: submitit's "
                   "LocalExecutor, subprocesses, waits; debug: in this process, waits")
    p.add_argument("--dry-run", action="store_true",
                   help="print the runs and what would be submitted; submit nothing")
    if retry_flag:
        p.add_argument("--retry", action="store_true",
                       help="also resubmit failed or incomplete runs "
                       "(no 'done', job no longer queued/running)")
    p.add_argument("--cancel-dropped", action="store_true",
                   help="scancel queued jobs of runs that this sweep launched before "
                   "but the grid no longer holds")
    p.add_argument("--data-root", default=None,
                   help="dataset directory for every run (overrides the grid's exec.data_root)")
    p.add_argument("--wait", action="store_true", help="slurm: wait until every run is done or failed")
    p.add_argument("--poll-s", type=float, default=10.0, help="seconds between scheduler polls with --wait")
    p.add_argument("--wait-timeout", type=float, default=None, help="give up --wait after this many seconds")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``sweep {launch,status,retry}`` to the main parser."""
    s = subparsers.add_parser(
        "sweep", help="expand a grid file and run it as Slurm job arrays (or locally); status, retry",
        description="Sweeps: a grid file names a base config and what varies; every point is one "
        "run dir RUNS_DIR/<run_id>. 'launch' submits the runs that are not done or queued, "
        "'status' shows where each run stands, 'retry' resubmits failed runs.")
    sub = s.add_subparsers(dest="sweep_command", metavar="SWEEP_COMMAND", required=True)
    launch = sub.add_parser("launch", help="submit the grid's runs that are not done, queued or running",
                            description="Submit every run of GRID that is not done and not queued or "
                            "running, as job arrays split to the cluster's MaxArraySize. Idempotent.")
    _launch_flags(launch, retry_flag=True)
    launch.set_defaults(func=cmd_launch, retry=False)
    status = sub.add_parser("status", help="table of the grid's runs: state, job, last log line, error",
                            description="Show each run's state (done / running / pending / failed / not "
                            "launched), its Slurm job id, the last line of its log.txt, and the error of "
                            "failed runs. Reads the run dirs first and the scheduler second (one squeue call).")
    status.add_argument("grid", metavar="GRID", help=_GRID_HELP)
    status.add_argument("--out", required=True, metavar="RUNS_DIR", help=_OUT_HELP)
    status.set_defaults(func=cmd_status)
    retry = sub.add_parser("retry", help="resubmit failed or incomplete runs (= launch --retry)",
                           description="Same as 'sweep launch --retry': resubmit runs with no 'done' "
                           "whose job is no longer queued or running, and submit never-launched runs.")
    _launch_flags(retry, retry_flag=False)
    retry.set_defaults(func=cmd_retry)


__all__ = ["register", "cmd_launch", "cmd_status", "cmd_retry", "plan_summary"]
