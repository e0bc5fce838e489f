"""Sweeps on the REAL local Slurm cluster (slurm/start.sh via tests/slurm_fixture.py); no mocks.

* an 8-run grid goes out as job arrays split at the cluster's MaxArraySize and completes;
* relaunching a finished grid submits nothing; ``retry`` resubmits exactly the incomplete run;
* queued runs are not resubmitted, and ``--cancel-dropped`` cancels the dropped ones;
* every task of a 4-task array is preempted mid-distillation (``scancel --signal=USR2`` or
  ``scontrol requeue``, whose SIGTERM sets the same stop flag), resumes from the checkpoint written
  at the signal, and ends bit-identical to an uninterrupted run;
* an outside requeue of a run shorter than ``checkpoint_every`` resumes from a time-floor checkpoint;
* a prerequisite shared by a grid is submitted once; its dependants wait on it with
  ``afterok`` (Slurm shows the dependency) and start only after it finished; a failing one leaves
  them blocked;
* bad grids raise ConfigError and submit nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from hpcdd.config import ExecConfig
from hpcdd.errors import ConfigError
from hpcdd.io import read_jsonl
from hpcdd.run import run_one
from hpcdd.sweep.grid import load_grid
from hpcdd.sweep.launch import execute, make_executor, plan_launch, wait_for
from hpcdd.sweep.scheduler import max_array_size
from hpcdd.sweep.state import build_tasks

from helpers import sweep_cli, synset, write_grid
from slurm_fixture import ensure_cluster, slurm_env  # noqa: F401 (slurm_env: a fixture)

pytestmark = pytest.mark.slurm

TINY = {"dataset": "digits", "method": "dm", "ipc": 1, "iterations": 6, "batch_real": 16, "net": "mlp",
        "eval_epochs": 2, "eval_n": 1}
QUIET = {"checkpoint_every": 5, "progress": False}


def sh(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)


def jobs_named(name: str) -> list[str]:
    return sh("squeue", "-h", "-r", "-n", f"hpcdd-{name}", "-o", "%i").stdout.split()


def wait_until(pred, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}\nsqueue:\n{sh('squeue').stdout}",
                        pytrace=False)
        time.sleep(0.5)


def job_ids(runs: Path, run_ids: list[str]) -> dict[str, str]:
    return {rid: json.loads((runs / rid / "job.json").read_text())["job_id"] for rid in run_ids}


# ----------------------------------------------------------------------------------------------
# an 8-run array, chunked at MaxArraySize, then relaunch / retry


@pytest.fixture(scope="module")
def finished(slurm_env, tmp_path_factory):
    """8 tiny runs launched with MaxArraySize 5 (so: arrays of 5 + 3 tasks), waited for."""
    root = tmp_path_factory.mktemp("slurm-sweep")
    grid = write_grid(root / "grid.yaml", {
        "name": "sl-array", "base": TINY, "grid": {"method": ["dm", "random"]}, "seeds": 4,
        "exec": QUIET, "slurm": {"time_min": 20, "array_parallelism": 4, "partition": "debug"}})
    runs = root / "runs"
    t0 = time.perf_counter()
    try:
        ensure_cluster(max_array_size=5)
        assert max_array_size() == 5
        assert sweep_cli("launch", grid, "--out", str(runs), "--wait", "--poll-s", "1", "--wait-timeout", "180") == 0
    finally:
        ensure_cluster()  # back to the default MaxArraySize
    print(f"8-run array sweep: {time.perf_counter() - t0:.1f}s")
    wait_until(lambda: not jobs_named("sl-array"), 60, "the finished tasks to leave squeue")
    return grid, runs, load_grid(grid)


def test_grid_runs_as_chunked_arrays_and_status_reports_done(finished, capsys):
    grid, runs, sweep = finished
    ids = job_ids(runs, sweep.run_ids())
    arrays: dict[str, list[int]] = {}
    for jid in ids.values():
        array, _, task = jid.partition("_")
        arrays.setdefault(array, []).append(int(task))
    assert sorted(sorted(t) for t in arrays.values()) == [[0, 1, 2], [0, 1, 2, 3, 4]]
    scripts = sorted((runs / ".submitit" / a / f"{a}_submission.sh").read_text() for a in arrays)
    flags = sorted(line.split("=", 1)[1] for text in scripts for line in text.splitlines()
                   if line.startswith("#SBATCH --array="))
    assert flags == ["0-2%3", "0-4%4"]  # array_parallelism 4 per array
    assert all((runs / rid / "done").exists() for rid in sweep.run_ids())
    capsys.readouterr()
    assert sweep_cli("status", grid, "--out", str(runs)) == 0
    out = capsys.readouterr().out
    assert "sweep sl-array: 8 cells: 8 done" in out
    for rid, jid in ids.items():
        row = next(line for line in out.splitlines() if f" {rid}/" in line)
        assert " done " in row and jid in row and "done: dc2 acc" in row


def test_relaunch_submits_nothing_and_retry_submits_exactly_one(finished, capsys):
    grid, runs, sweep = finished
    before = job_ids(runs, sweep.run_ids())
    capsys.readouterr()
    assert sweep_cli("launch", grid, "--out", str(runs)) == 0
    assert "nothing to submit" in capsys.readouterr().out
    assert job_ids(runs, sweep.run_ids()) == before and jobs_named("sl-array") == []

    rid = sweep.run_ids()[0]
    (runs / rid / "done").unlink()
    assert sweep_cli("launch", grid, "--out", str(runs)) == 0  # without --retry: left alone
    out = capsys.readouterr().out
    assert "submitted" not in out and "1 failed or blocked task(s) skipped" in out
    assert sweep_cli("retry", grid, "--out", str(runs)) == 0
    assert "submitted 1 task(s)" in capsys.readouterr().out
    after = job_ids(runs, sweep.run_ids())
    assert [r for r in after if after[r] != before[r]] == [rid]
    tasks = [t for t in build_tasks(sweep, runs) if t.key == f"run:{rid}"]
    states = wait_for(runs, tasks, poll_s=1, timeout_s=90)
    assert states[f"run:{rid}"].state == "done"


def test_queued_runs_are_not_resubmitted_and_dropped_ones_are_cancelled(slurm_env, tmp_path, capsys):
    """Runs held back by --begin stay PENDING: a relaunch skips them; shrinking the grid and
    passing --cancel-dropped scancels exactly the dropped ones."""
    data = {"name": "sl-drop", "base": {**TINY, "method": "random"}, "seeds": 3, "exec": QUIET,
            "slurm": {"time_min": 20, "additional": {"begin": "now+1hour"}}}
    grid, runs = write_grid(tmp_path / "grid.yaml", data), tmp_path / "runs"
    try:
        assert sweep_cli("launch", grid, "--out", str(runs)) == 0
        ids = job_ids(runs, load_grid(grid).run_ids())
        assert sorted(jobs_named("sl-drop")) == sorted(ids.values())
        capsys.readouterr()
        assert sweep_cli("launch", grid, "--out", str(runs)) == 0
        out = capsys.readouterr().out
        assert "3 cells, 3 distillations (3 pending)" in out and "submitted" not in out

        small = write_grid(tmp_path / "grid.yaml", {**data, "seeds": [0]})
        kept = load_grid(small).run_ids()
        assert sweep_cli("launch", small, "--out", str(runs)) == 0
        assert "2 run(s) dropped from the grid are still queued" in capsys.readouterr().out
        assert sweep_cli("launch", small, "--out", str(runs), "--cancel-dropped") == 0
        assert "cancelled 2 queued job(s)" in capsys.readouterr().out
        assert jobs_named("sl-drop") == [ids[kept[0]]]
    finally:
        sh("scancel", "-n", "hpcdd-sl-drop")


# ----------------------------------------------------------------------------------------------
# preemption: USR2 (submitit's checkpoint + requeue) and scontrol requeue (killed, resumes)


CKPT_EVERY = 25
PREEMPT = {
    "name": "sl-preempt",
    "base": {**TINY, "batch_real": 4},
    # ~6-15 ms per iteration. USR2 and a requeue's SIGTERM both stop at the next step; the requeued
    # runs are longer anyway, so they cannot finish between the TERM and the kill.
    "zip": {"seed": [0, 1, 2, 3], "iterations": [300, 300, 2000, 2000]},
    "exec": {"checkpoint_every": CKPT_EVERY, "progress": False},
    "slurm": {"time_min": 20, "array_parallelism": 4},  # > 10 min: USR2 counts as preemption
}
HOW = ["usr2", "usr2", "requeue", "requeue"]


def _last_it(run_dir: Path) -> int:
    rows = [r for r in read_jsonl(run_dir / "metrics.jsonl") if "loss" in r]
    return int(rows[-1]["it"]) if rows else -1


def _preempt_each_once(runs: Path, ids: dict[str, str], how: dict[str, str], timeout: float) -> dict[str, int]:
    """Signal each task once while it is mid-distillation (a periodic checkpoint exists)."""
    hit: dict[str, int] = {}
    deadline = time.monotonic() + timeout
    while len(hit) < len(ids):
        for rid, jid in ids.items():
            it = _last_it(runs / rid)
            if rid not in hit and CKPT_EVERY < it <= 8 * CKPT_EVERY:  # a checkpoint exists
                cmd = ["scancel", "--signal=USR2", jid] if how[rid] == "usr2" else ["scontrol", "requeue", jid]
                proc = sh(*cmd)
                assert proc.returncode == 0, f"{' '.join(cmd)}: {proc.stderr}"
                hit[rid] = it
        if time.monotonic() > deadline:
            progress = {rid: _last_it(runs / rid) for rid in ids}
            pytest.fail(f"could not catch every task mid-run within {timeout}s: signalled {hit}, "
                        f"iterations now {progress}\nsqueue:\n{sh('squeue').stdout}", pytrace=False)
        time.sleep(0.02)
    return hit


def _references(sweep, root: Path, out: dict) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the jobs (OMP_NUM_THREADS=1)
    try:
        for run in sweep.runs:  # uninterrupted, in this process
            run_one(run.config, root / run.run_id, ExecConfig(progress=False), evaluate=False)
            out[run.run_id] = synset(root / run.run_id)["images"]
    finally:
        torch.set_num_threads(threads)


def test_every_task_preempted_mid_run_resumes_bit_identical(slurm_env, tmp_path):
    grid, runs = write_grid(tmp_path / "grid.yaml", PREEMPT), tmp_path / "runs"
    sweep = load_grid(grid)
    how = dict(zip(sweep.run_ids(), HOW))
    t0 = time.perf_counter()
    report = execute(plan_launch(sweep, runs, "slurm"))
    assert len(report.submitted) == 4 and len({j.split("_")[0] for j in report.job_ids.values()}) == 1
    report.job_ids = {k.split(":", 1)[1]: v for k, v in report.job_ids.items()}
    refs: dict = {}
    ref_thread = threading.Thread(target=_references, args=(sweep, tmp_path / "ref", refs))
    ref_thread.start()  # overlaps the cluster's start-up and requeue delays
    hit = _preempt_each_once(runs, report.job_ids, how, timeout=90)
    states = wait_for(runs, build_tasks(sweep, runs), poll_s=1, timeout_s=180)
    ref_thread.join(timeout=180)
    print(f"preemption test: signalled at {hit}; {time.perf_counter() - t0:.1f}s")
    assert {s.state for s in states.values()} == {"done"}, states
    for rid, jid in report.job_ids.items():
        log = (runs / rid / "log.txt").read_text()
        resumed = [int(l.rsplit(" ", 1)[1]) for l in log.splitlines() if "resumed at iteration" in l]
        assert resumed and min(resumed) > 0, f"{rid} ({how[rid]}) did not resume from a checkpoint:\n{log}"
        if how[rid] == "usr2":
            assert "submitit requeues this task" in log
            out = (runs / ".submitit" / jid / f"{jid}_0_log.out").read_text()
            assert "this job is preempted" in out and "timed-out" not in out
        else:  # scontrol requeue: SIGTERM, KillWait seconds before SIGKILL, sets the same stop flag
            stopped = [int(l.split("stopping after iteration ")[1].split()[0]) for l in log.splitlines()
                       if "stopping after iteration" in l]
            assert stopped and stopped[0] == resumed[0], log  # from the checkpoint written at the TERM
            assert "submitit requeues this task" not in log  # Slurm requeued it, not submitit
        final = synset(runs / rid)["images"]
        assert torch.equal(final, refs[rid]), f"{rid} ({how[rid]}) differs from the uninterrupted run"


def test_outside_requeue_of_a_short_run_resumes_from_the_time_floor(slurm_env, tmp_path):
    """Fewer iterations than checkpoint_every: only the time floor (checkpoint_minutes) writes
    checkpoints. An outside ``scontrol requeue`` resumes from one, not from iteration 0, and the
    final images equal an uninterrupted run's."""
    data = {"name": "sl-floor", "base": {**TINY, "batch_real": 4, "iterations": 1500, "seed": 5},
            "exec": {"checkpoint_every": 100000, "checkpoint_minutes": 0.02, "progress": False},
            "slurm": {"time_min": 20}}
    grid, runs = write_grid(tmp_path / "grid.yaml", data), tmp_path / "runs"
    sweep = load_grid(grid)
    report = execute(plan_launch(sweep, runs, "slurm"))
    [(key, jid)] = report.job_ids.items()
    run_dir = runs / key.split(":", 1)[1]
    wait_until(lambda: "checkpoint at iteration" in ((run_dir / "log.txt").read_text()
                                                      if (run_dir / "log.txt").exists() else ""),
               120, "a time-floor checkpoint")
    assert sh("scontrol", "requeue", jid).returncode == 0
    states = wait_for(runs, build_tasks(sweep, runs), poll_s=1, timeout_s=240)
    assert {s.state for s in states.values()} == {"done"}, states
    log = (run_dir / "log.txt").read_text()
    resumed = [int(l.rsplit(" ", 1)[1]) for l in log.splitlines() if "resumed at iteration" in l]
    assert resumed and resumed[0] > 0, log
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the job (OMP_NUM_THREADS=1)
    try:
        run_one(sweep.runs[0].config, tmp_path / "ref", ExecConfig(progress=False), evaluate=False)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(synset(run_dir)["images"], synset(tmp_path / "ref")["images"])


def test_grid_resources_reach_sbatch(slurm_env, tmp_path):
    grid = write_grid(tmp_path / "grid.yaml", {
        "name": "sl-res", "base": TINY, "slurm": {
            "partition": "cpu", "cpus_per_task": 2, "mem_gb": 1, "time_min": 45, "array_parallelism": 3,
            "max_timeouts": 5, "signal_delay_s": 60, "qos": None, "additional": {"begin": "now+1hour"}}})
    executor = make_executor("slurm", tmp_path / "runs", load_grid(grid))
    assert executor._executor.max_num_timeout == 5  # timeouts requeue up to max_timeouts
    params = executor._executor.parameters
    assert params["partition"] == "cpu" and params["cpus_per_task"] == 2 and params["mem"] == "1GB"
    assert params["time"] == 45 and params["array_parallelism"] == 3 and params["signal_delay_s"] == 60
    assert params["additional_parameters"] == {"begin": "now+1hour"} and params["job_name"] == "hpcdd-sl-res"
    assert "qos" not in params


# ----------------------------------------------------------------------------------------------
# prerequisites: one job, dependants wait with afterok


TESTS = Path(__file__).resolve().parent


@pytest.fixture
def doubles(monkeypatch, tmp_path):
    """The test-only methods (tests/doubles.py) in this process and in every job (sbatch exports
    the submitting environment)."""
    monkeypatch.setenv("HPCDD_PLUGINS", "doubles")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    return tmp_path / "artefacts"


def _sacct(job: str, fields: str) -> list[list[str]]:
    out = sh("sacct", "-n", "-P", "-X", "-j", job, "-o", fields).stdout
    return [line.split("|") for line in out.splitlines() if line.strip()]


def test_dependants_wait_for_a_shared_prerequisite(slurm_env, doubles, tmp_path, capsys):
    data = {"name": "sl-prereq", "base": {**TINY, "method": "twostage", "prereq_steps": 3},
            "grid": {"ipc": [1, 2]}, "seeds": 2, "exec": {**QUIET, "artefact_root": str(doubles)},
            "slurm": {"time_min": 20, "array_parallelism": 4}}
    grid, runs = write_grid(tmp_path / "grid.yaml", data), tmp_path / "runs"
    sweep = load_grid(grid)
    assert len(sweep.cells) == 4 and len(sweep.prereqs) == 1
    assert sweep_cli("launch", grid, "--out", str(runs)) == 0
    out = capsys.readouterr().out
    assert "submit 1 prerequisite task(s)" in out and "submit 4 distillation task(s)" in out
    prereq_dir = doubles / sweep.prereqs[0].key
    prereq_job = json.loads((prereq_dir / "job.json").read_text())["job_id"]
    run_jobs = job_ids(runs, sweep.run_ids())
    array = next(iter(run_jobs.values())).split("_")[0]
    deps = sh("scontrol", "show", "job", array).stdout
    assert f"afterok:{prereq_job.split('_')[0]}" in deps.replace("_*", "")
    states = wait_for(runs, build_tasks(sweep, runs), poll_s=1, timeout_s=240)
    assert {s.state for s in states.values()} == {"done"}, states
    [[_, prereq_end]] = _sacct(prereq_job, "JobID,End")
    for jid in run_jobs.values():
        [[_, start]] = _sacct(jid, "JobID,Start")
        assert start >= prereq_end, f"{jid} started {start} before the prerequisite ended {prereq_end}"
    assert (prereq_dir / "log.txt").read_text().count("building toy_prereq") == 1
    capsys.readouterr()
    assert sweep_cli("launch", grid, "--out", str(runs)) == 0  # relaunch: nothing new
    assert "nothing to submit" in capsys.readouterr().out


def test_a_failing_prerequisite_leaves_its_dependants_blocked(slurm_env, doubles, tmp_path, capsys):
    data = {"name": "sl-prefail", "base": {**TINY, "method": "twostage", "prereq_fail": True},
            "seeds": 2, "exec": {**QUIET, "artefact_root": str(doubles)}, "slurm": {"time_min": 20}}
    grid, runs = write_grid(tmp_path / "grid.yaml", data), tmp_path / "runs"
    sweep = load_grid(grid)
    assert sweep_cli("launch", grid, "--out", str(runs)) == 0
    wait_for(runs, build_tasks(sweep, runs), poll_s=1, timeout_s=180)
    capsys.readouterr()
    assert sweep_cli("status", grid, "--out", str(runs)) == 0
    out = capsys.readouterr().out
    assert "2 cells: 2 blocked" in out and "prerequisites: 1 failed" in out, out
    assert jobs_named("sl-prefail") == []  # kill-on-invalid-dep: the dependants left the queue


# ----------------------------------------------------------------------------------------------
# bad grids: ConfigError, nothing submitted


BAD = {
    "unknown-key": ({"grid": {"ipc": [1]}, "sed": 1}, "unknown top-level key"),
    "unknown-slurm-key": ({"slurm": {"partiton": "debug"}}, "unknown slurm key"),
    "unknown-config-key": ({"grid": {"ipcs": [1, 2]}}, "unknown config key"),
    "empty-product": ({"grid": {"ipc": [1, 2], "seed": []}}, "empty list"),
    "type-error": ({"grid": {"ipc": [1, "two"]}}, "must be int or null"),
    "duplicate": ({"grid": {"seed": [0, 1, 0]}}, "resolve to the same run"),
    "zip-lengths": ({"zip": {"seed": [0, 1], "ipc": [1]}}, "equal lengths"),
    "unknown-partition": ({"grid": {"ipc": [1]}, "slurm": {"partition": "gpu"}},
                          "unknown Slurm partition 'gpu'; this cluster has: cpu, debug"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_grid_submits_nothing(slurm_env, tmp_path, case):
    extra, pattern = BAD[case]
    name = f"sl-bad-{case}"
    grid = write_grid(tmp_path / "grid.yaml", {"name": name, "base": TINY, "exec": QUIET, **extra})
    with pytest.raises(ConfigError, match=pattern) as e:
        sweep_cli("launch", grid, "--out", str(tmp_path / "runs"))
    assert "\n" not in str(e.value)
    assert not list(tmp_path.glob("runs/*/job.json")) and not (tmp_path / "runs").exists()
    assert jobs_named(name) == []


# ----------------------------------------------------------------------------------------------
# issue 22: separate evaluations from an empty runs dir; a launcher killed anywhere


def test_separate_evals_from_an_empty_runs_dir(slurm_env, tmp_path, capsys):
    """The launch writes RUN/eval/<id>/job.json before the run's own job starts: that run dir is
    still free for it, and the evaluations run as their own array after the distillations. Each
    run has two evaluations, and the four start side by side (each run's two used to collide on
    the run dir's lock: 'in use by another hpcdd process')."""
    data = {"name": "sl-sepeval", "base": {**TINY, "iterations": 2}, "seeds": 2, "separate_evals": True,
            "grid": [{"eval_epochs": [2, 3]}], "exec": QUIET, "slurm": {"time_min": 20, "array_parallelism": 4}}
    grid, runs = write_grid(tmp_path / "grid.yaml", data), tmp_path / "runs"
    sweep = load_grid(grid)
    assert sweep_cli("launch", grid, "--out", str(runs), "--wait", "--poll-s", "1", "--wait-timeout", "240") == 0
    states = wait_for(runs, build_tasks(sweep, runs), poll_s=1, timeout_s=60)
    assert [s.state for s in states.values()] == ["done"] * 6, states
    for run in sweep.runs:
        assert len(run.eval_ids) == 2
        run_job = json.loads((runs / run.run_id / "job.json").read_text())["job_id"]
        for eid in run.eval_ids:
            eval_job = json.loads((runs / run.run_id / "eval" / eid / "job.json").read_text())["job_id"]
            assert eval_job.split("_")[0] != run_job.split("_")[0]
            assert json.loads((runs / run.run_id / "eval" / eid / "result.json").read_text())["run_id"] == run.run_id
    capsys.readouterr()


CRASH = Path(__file__).resolve().parent / "crash_launch.py"
HELD = {"time_min": 20, "additional": {"begin": "now+1hour"}}


def _crash_grid(tmp_path: Path, name: str, slurm: dict) -> tuple[str, Path]:
    data = {"name": name, "base": {**TINY, "iterations": 2}, "seeds": 3, "separate_evals": True,
            "exec": QUIET, "slurm": slurm}
    return write_grid(tmp_path / "grid.yaml", data), tmp_path / "runs"


def _killed_launch(point: str, n: int, grid: str, runs: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(CRASH), point, str(n), "sweep", "launch", grid, "--out", str(runs)],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == -9, f"not killed at {point} #{n}: rc {proc.returncode}\n{proc.stdout}{proc.stderr}"


def _live_jobs(name: str) -> list[str]:
    out = sh("squeue", "-h", "-r", "-t", "PENDING,RUNNING", "-o", "%i", "-n", f"hpcdd-{name},hpcdd-{name}-eval")
    return out.stdout.split()


@pytest.mark.parametrize("point, n", [
    ("record", 1), ("sbatch-before", 1), ("sbatch-after", 1), ("pickle", 1), ("job-json", 2), ("drop", 1),
    ("record", 2), ("sbatch-after", 2),
])
def test_a_relaunch_after_the_launcher_was_killed_submits_no_task_twice(slurm_env, tmp_path, capsys, point, n):
    """kill -9 of ``sweep launch`` at each point of submitting two arrays (3 runs, then their 3
    evaluations), held in the queue: the relaunch leaves exactly one queued job per task, each with
    its pickled job in place (so it can run), and the evaluations waiting on the runs' array."""
    from submitit.core.utils import DelayedSubmission

    name = f"sl-crash-{point}-{n}-{os.getpid()}"  # held jobs of an earlier session never count
    grid, runs = _crash_grid(tmp_path, name, HELD)
    sweep = load_grid(grid)
    tasks = build_tasks(sweep, runs)
    try:
        _killed_launch(point, n, grid, runs)
        assert sweep_cli("launch", grid, "--out", str(runs)) == 0
        records = {t.key: json.loads((t.dir / "job.json").read_text())["job_id"] for t in tasks}
        live = _live_jobs(name)
        assert sorted(live) == sorted(records.values()) and len(set(live)) == len(tasks) == 6, (records, live)
        for t in tasks:
            jid = records[t.key]
            pickle = runs / ".submitit" / jid / f"{jid}_submitted.pkl"
            assert DelayedSubmission.load(pickle).function.task_dir == str(t.dir.absolute())
        run_array = {records[t.key].split("_")[0] for t in tasks if t.stage == "run"}
        eval_array = {records[t.key].split("_")[0] for t in tasks if t.stage == "eval"}
        assert len(run_array) == len(eval_array) == 1
        deps = sh("scontrol", "show", "job", eval_array.pop()).stdout
        assert f"afterok:{run_array.pop()}" in deps.replace("_*", "")
        assert not list((runs / ".sweeps").glob("*.submitting/*.json"))
        capsys.readouterr()
        assert sweep_cli("launch", grid, "--out", str(runs)) == 0  # and once more: nothing new
        assert "nothing to submit" in capsys.readouterr().out and sorted(_live_jobs(name)) == sorted(live)
    finally:
        sh("scancel", "-n", f"hpcdd-{name}")
        sh("scancel", "-n", f"hpcdd-{name}-eval")


def test_cancel_after_a_killed_launch_cancels_what_it_submitted(slurm_env, tmp_path, capsys):
    name = f"sl-crash-cancel-{os.getpid()}"
    grid, runs = _crash_grid(tmp_path, name, HELD)
    try:
        _killed_launch("sbatch-after", 2, grid, runs)  # the run array recorded, the eval array not
        assert len(_live_jobs(name)) == 6
        assert sweep_cli("status", grid, "--out", str(runs)) == 0
        assert "an interrupted launch left 1 submission record(s)" in capsys.readouterr().err
        assert sweep_cli("cancel", grid, "--out", str(runs)) == 0
        assert "cancelled 6 job(s)" in capsys.readouterr().out
        wait_until(lambda: not _live_jobs(name), 30, "the cancelled jobs to leave the queue")
    finally:
        sh("scancel", "-n", f"hpcdd-{name}")
        sh("scancel", "-n", f"hpcdd-{name}-eval")


def test_a_launch_killed_inside_sbatch_runs_every_task_once(slurm_env, tmp_path):
    """The array sbatch accepted is found, its pickles put in place while its tasks wait for them,
    and every distillation and evaluation runs exactly once (accounting lists 6 jobs, all done)."""
    name = f"sl-crash-run-{os.getpid()}"
    grid, runs = _crash_grid(tmp_path, name, {"time_min": 20, "array_parallelism": 6})
    sweep = load_grid(grid)
    since = time.strftime("%Y-%m-%dT%H:%M:%S")
    _killed_launch("sbatch-after", 1, grid, runs)
    assert sweep_cli("launch", grid, "--out", str(runs), "--wait", "--poll-s", "1", "--wait-timeout", "240") == 0
    for run in sweep.runs:
        assert (runs / run.run_id / "log.txt").read_text().count("start run") == 1

    def accounted() -> list[list[str]]:
        out = sh("sacct", "-n", "-P", "-X", "-S", since, "--name", f"hpcdd-{name},hpcdd-{name}-eval",
                 "-o", "JobID,JobName,State").stdout
        return [line.split("|") for line in out.splitlines() if line.strip()]

    wait_until(lambda: {r[2] for r in accounted()} <= {"COMPLETED", "FAILED", "CANCELLED"}, 60,
               "accounting to record the finished jobs")
    ran = accounted()
    assert sorted(r[1] for r in ran) == [f"hpcdd-{name}"] * 3 + [f"hpcdd-{name}-eval"] * 3, ran
    assert {r[2] for r in ran} == {"COMPLETED"}, ran
