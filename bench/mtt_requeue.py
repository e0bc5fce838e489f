"""Issue 20's requeue acceptance on a real Slurm cluster: an MTT grid's expert killed mid-run
with ``scontrol requeue`` resumes at its last finished epoch, with no missing or duplicate epoch
file, and a relaunch submits nothing.

Steps: (1) ``sweep launch`` the grid (experts first, the distillations after them with
``afterok``); (2) wait until expert ``--expert`` has saved ``--after-epochs`` epochs (and is not
done), then ``scontrol requeue`` its array task (SIGTERM, then SIGKILL after KillWait: the epoch in
progress is lost unless it ends first); (3) wait for the whole sweep; (4) check every expert's
``epochs/`` holds exactly ``epoch-0000.pt`` .. ``epoch-<epochs>.pt`` and nothing else, that the
requeued one logged ``resumed at iteration N`` with N >= the epochs it had, and that every task is
done; (5) plan a relaunch: it must submit nothing. Prints a report (also ``--report FILE``) and
exits 1 if a check fails. Run under ``flock -o /tmp/hpcdd-slurm.lock`` on a shared cluster.

Usage: python bench/mtt_requeue.py GRID --out RUNS_DIR [--expert 0] [--after-epochs 2]
       [--timeout-s 7200] [--report results/mtt_requeue.txt]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from hpcdd.distill.mtt_experts import EPOCHS_DIR, epoch_files
from hpcdd.io import atomic_write_text, try_load_json
from hpcdd.rundir import DONE, JOB, LOG
from hpcdd.sweep.grid import Sweep, load_grid
from hpcdd.sweep.launch import execute, plan_launch, wait_for
from hpcdd.sweep.state import build_tasks


def expert_dirs(sweep: Sweep) -> list[Path]:
    """The task dirs of the sweep's experts, by index."""
    from hpcdd.rundir import artefact_root

    root = artefact_root(sweep.exec.artefact_root)
    experts = sorted((p for p in sweep.prereqs if p.ref.kind == "mtt_expert"), key=lambda p: p.ref.config.index)
    return [root / p.key for p in experts]


def requeue_when(expert: Path, after_epochs: int, timeout_s: float, poll_s: float = 0.5,
                 say: Callable[[str], None] = print) -> tuple[str, int]:
    """``scontrol requeue`` the expert's job once it has saved ``after_epochs`` epochs; returns
    (job id, epochs it had saved)."""
    deadline = time.monotonic() + timeout_s
    while True:
        saved = max(epoch_files(expert), default=-1)
        if (expert / DONE).exists():
            raise SystemExit(f"{expert} finished before it could be requeued (lower --after-epochs)")
        job = try_load_json(expert / JOB)
        if saved >= after_epochs and isinstance(job, dict):
            proc = subprocess.run(["scontrol", "requeue", job["job_id"]], capture_output=True, text=True, timeout=60)
            if proc.returncode != 0:
                raise SystemExit(f"scontrol requeue {job['job_id']}: {proc.stderr.strip()}")
            say(f"requeued expert {expert.name} (job {job['job_id']}) after epoch {saved}")
            return job["job_id"], saved
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {expert} to save {after_epochs} epochs (has {saved})")
        time.sleep(poll_s)


def check_epochs(expert: Path, epochs: int) -> list[str]:
    """Problems with an expert's epoch files: anything but exactly epoch 0..``epochs``, once each."""
    names = sorted(p.name for p in (expert / EPOCHS_DIR).iterdir()) if (expert / EPOCHS_DIR).is_dir() else []
    want = [f"epoch-{e:04d}.pt" for e in range(epochs + 1)]
    problems = []
    missing = sorted(set(want) - set(names))
    extra = sorted(set(names) - set(want))
    if missing:
        problems.append(f"{expert.name}: missing {', '.join(missing)}")
    if extra:
        problems.append(f"{expert.name}: unexpected files {', '.join(extra)}")
    if epoch_files(expert) != list(range(epochs + 1)):
        problems.append(f"{expert.name}: epochs {epoch_files(expert)}")
    return problems


def resumed_at(expert: Path) -> list[int]:
    log = (expert / LOG).read_text() if (expert / LOG).exists() else ""
    return [int(line.rsplit(" ", 1)[1]) for line in log.splitlines() if "resumed at iteration" in line]


def run(grid: str, out: Path, expert: int, after_epochs: int, timeout_s: float, poll_s: float = 5.0) -> list[str]:
    """The whole acceptance; returns the report lines (the last says PASS or FAIL)."""
    lines: list[str] = []

    def say(msg: str) -> None:
        lines.append(msg)
        print(msg, flush=True)

    sweep = load_grid(grid)
    t0 = time.monotonic()
    report = execute(plan_launch(sweep, out, "slurm"), echo=say)
    say(f"launched {len(report.submitted)} task(s): {sum(k.startswith('prereq:') for k in report.submitted)} "
        f"expert(s), then {sum(k.startswith('run:') for k in report.submitted)} distillation(s)")
    dirs = expert_dirs(sweep)
    job, had = requeue_when(dirs[expert], after_epochs, timeout_s, say=say)
    states = wait_for(out, build_tasks(sweep, out), poll_s=poll_s, timeout_s=timeout_s)
    say(f"sweep settled after {time.monotonic() - t0:.0f} s: "
        + ", ".join(f"{s} {sum(v.state == s for v in states.values())}" for s in sorted({v.state for v in states.values()})))
    problems = [f"{k}: {s.state} ({s.detail})" for k, s in states.items() if s.state != "done"]
    for d in dirs:
        epochs = json.loads((d / "expert.json").read_text())["epochs"] if (d / "expert.json").exists() else None
        problems += check_epochs(d, epochs) if epochs is not None else [f"{d.name}: no expert.json"]
    resumed = resumed_at(dirs[expert])
    say(f"expert {dirs[expert].name}: requeued after epoch {had}; resumed at iteration(s) {resumed}")
    if not resumed or min(resumed) < had:
        problems.append(f"expert {dirs[expert].name} did not resume at its last epoch ({had}): {resumed}")
    again = plan_launch(load_grid(grid), out, "slurm").to_submit()
    say(f"relaunch would submit {len(again)} task(s)")
    if again:
        problems.append(f"a relaunch would submit {[t.key for t in again]}")
    for p in problems:
        say(f"FAIL: {p}")
    say("PASS" if not problems else f"FAIL ({len(problems)} problem(s))")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("grid")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--expert", type=int, default=0, help="which expert (index) to requeue")
    ap.add_argument("--after-epochs", type=int, default=2, help="requeue once it has saved this many epochs")
    ap.add_argument("--timeout-s", type=float, default=7200)
    ap.add_argument("--poll-s", type=float, default=5.0)
    ap.add_argument("--report", type=Path, help="also write the report lines here")
    args = ap.parse_args(argv)
    lines = run(args.grid, args.out, args.expert, args.after_epochs, args.timeout_s, args.poll_s)
    if args.report:
        atomic_write_text(args.report, "\n".join(lines) + "\n")
    return 0 if lines[-1] == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
