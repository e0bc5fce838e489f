"""A 2-task Slurm job (issue 21): ``slurm: {tasks_per_node: 2}`` starts one run as two processes
(submitit's TorchDistributedEnvironment, gloo), an outside ``scontrol requeue`` stops both at the
same step after a checkpoint, both resume, and rank 0 alone writes one set of run-dir files whose
images equal one process's. Run under ``flock -o /tmp/hpcdd-slurm.lock``."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
import torch

from hpcdd.config import ExecConfig
from hpcdd.io import read_jsonl
from hpcdd.run import run_one
from hpcdd.sweep.grid import load_grid
from hpcdd.sweep.launch import execute, plan_launch, wait_for
from hpcdd.sweep.state import build_tasks

from helpers import synset, write_grid
from slurm_fixture import slurm_env  # noqa: F401 (a fixture)

pytestmark = pytest.mark.slurm

BASE = {"dataset": "digits", "method": "dm", "ipc": 1, "iterations": 600, "batch_real": 4, "net": "mlp", "seed": 3,
        "eval_epochs": 2, "eval_n": 2}


def _log(run_dir: Path) -> str:
    return (run_dir / "log.txt").read_text() if (run_dir / "log.txt").exists() else ""


def test_a_two_task_job_survives_a_requeue_and_writes_one_set_of_files(slurm_env, tmp_path):
    data = {"name": "sl-dist", "base": BASE, "slurm": {"time_min": 20, "tasks_per_node": 2},
            "exec": {"checkpoint_every": 100000, "checkpoint_minutes": 0.02, "progress": False, "threads": 1}}
    grid, runs = write_grid(tmp_path / "grid.yaml", data), tmp_path / "runs"
    sweep = load_grid(grid)
    report = execute(plan_launch(sweep, runs, "slurm"))
    [(key, jid)] = report.job_ids.items()
    run_dir = runs / key.split(":", 1)[1]
    deadline = time.monotonic() + 180
    while "checkpoint at iteration" not in _log(run_dir):
        assert time.monotonic() < deadline, f"no checkpoint within 180 s:\n{_log(run_dir)}"
        time.sleep(0.5)
    assert subprocess.run(["scontrol", "requeue", jid], capture_output=True).returncode == 0
    states = wait_for(runs, build_tasks(sweep, runs), poll_s=1, timeout_s=300)
    assert {s.state for s in states.values()} == {"done"}, states
    log = _log(run_dir).splitlines()
    resumed = [int(line.rsplit(" ", 1)[1]) for line in log if "resumed at iteration" in line]
    assert len(resumed) == 1 and resumed[0] > 0, log
    assert sum("start run" in line for line in log) == 1
    assert sum("distillation finished" in line for line in log) == 1
    its = [r["it"] for r in read_jsonl(run_dir / "metrics.jsonl") if "loss" in r]
    assert its == list(range(BASE["iterations"]))  # each row once: rank 1 wrote none
    task_logs = sorted(p.name for p in (runs / ".submitit" / jid).glob("*_log.out"))
    assert task_logs == [f"{jid}_0_log.out", f"{jid}_1_log.out"]  # two tasks
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_one(sweep.runs[0].config, tmp_path / "ref", ExecConfig(progress=False), evaluate=False)
    finally:
        torch.set_num_threads(threads)
    assert (synset(run_dir)["images"] - synset(tmp_path / "ref")["images"]).abs().max() <= 1e-5
