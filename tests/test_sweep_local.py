"""Sweeps without Slurm: --cluster local (subprocesses) vs debug (in-process), idempotency, retry,
dry-run, status, and the job's preemption contract (USR2 sets a flag; submitit's handler is
called after the checkpoint)."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import torch

import hpcdd.run
from hpcdd.catalog import configs_from_flat
from hpcdd.config import ExecConfig, to_dict
from hpcdd.errors import ConfigError
from hpcdd.run import run_one
from hpcdd.runtime.preempt import StopFlag
from hpcdd.sweep.grid import load_grid
from hpcdd.sweep.job import SweepJob
from hpcdd.sweep.launch import execute, plan_launch
from hpcdd.sweep.state import JobRecord, Task, build_tasks, collect_states, write_job

from helpers import result, sweep_cli, synset, write_grid

TINY = {"dataset": "digits", "ipc": 1, "iterations": 6, "batch_real": 16, "net": "mlp",
        "eval_epochs": 2, "eval_n": 1}
GRID = {"name": "localtest", "base": TINY, "grid": {"method": ["dm", "random"]}, "seeds": 2,
        "exec": {"checkpoint_every": 5, "progress": False}, "slurm": {"time_min": 20, "array_parallelism": 2}}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread here and in local subprocesses: on a loaded 2-core machine 2-thread
    processes spin-wait each other ~10x slower. (Results depend on the thread count, so the
    in-process debug runs and the LocalExecutor children must use the same one.)"""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
        yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    """The same 4-run grid run with --cluster local and --cluster debug."""
    root = tmp_path_factory.mktemp("sweep")
    grid = write_grid(root / "grid.yaml", GRID)
    sweep = load_grid(grid)
    for cluster in ("local", "debug"):
        t0 = time.perf_counter()
        report = execute(plan_launch(sweep, root / cluster, cluster))
        assert len(report.submitted) == 4 and not report.failed, f"{cluster}: {report.failed}"
        print(f"{cluster}: {time.perf_counter() - t0:.1f}s")
    return grid, root / "local", root / "debug", sweep


def test_local_and_debug_give_identical_results(both):
    grid, local, debug, sweep = both
    assert len(sweep.runs) == 4
    for rid in sweep.run_ids():
        a, b = synset(local / rid), synset(debug / rid)
        assert torch.equal(a["images"], b["images"]) and torch.equal(a["labels"], b["labels"])
        assert (local / rid / "synset.pt").read_bytes() == (debug / rid / "synset.pt").read_bytes()
        ra, rb = result(local / rid), result(debug / rid)
        assert ra["accs"] == rb["accs"] and ra["acc_mean"] == rb["acc_mean"] and ra["run_id"] == rid
        assert json.loads((local / rid / "job.json").read_text())["cluster"] == "local"
        assert json.loads((debug / rid / "job.json").read_text())["job_id"].startswith("DEBUG_")
    assert (local / ".submitit").is_dir()
    assert not (local / ".submitit" / "%j").exists()  # submitit's controller made it, unexpanded
    manifest = json.loads((local / ".sweeps" / "localtest.json").read_text())
    assert manifest["run_ids"] == sweep.run_ids()


def test_relaunch_of_finished_grid_submits_nothing(both, capsys):
    grid, local, debug, sweep = both
    before = {rid: (debug / rid / "job.json").read_text() for rid in sweep.run_ids()}
    assert sweep_cli("launch", grid, "--out", str(debug), "--cluster", "debug") == 0
    out = capsys.readouterr().out
    assert "4 cells, 4 distillations (4 done)" in out and "nothing to submit" in out and "submitted" not in out
    assert before == {rid: (debug / rid / "job.json").read_text() for rid in sweep.run_ids()}


def test_status_table_without_any_scheduler(both, capsys, monkeypatch):
    grid, local, debug, sweep = both
    monkeypatch.setenv("PATH", "/nonexistent")  # no squeue/sacct: nothing of this sweep needs them
    assert sweep_cli("status", grid, "--out", str(local)) == 0
    out = capsys.readouterr().out
    assert out.count(" done ") == 4 and "sweep localtest: 4 cells: 4 done" in out
    assert "done: dc2 acc" in out  # the last line of each log.txt


def test_status_json_and_state_filter(both, capsys, tmp_path):
    """``--json``: one document, a record per cell; ``--state``: only the cells in that state
    (a grid with one more seed than was run: 4 done, 2 not launched)."""
    grid, local, debug, sweep = both
    more = write_grid(tmp_path / "grid.yaml", {**GRID, "seeds": 3})
    assert sweep_cli("status", more, "--out", str(local), "--json") == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["sweep"] == "localtest" and doc["counts"]["cells"] == {"done": 4, "not launched": 2}
    assert [r["state"] for r in doc["tasks"]].count("done") == 4 and len(doc["tasks"]) == 6
    done = next(r for r in doc["tasks"] if r["state"] == "done")
    assert done["task"] == "run" and done["id"].split("/")[0] in sweep.run_ids()
    assert set(done["point"]) == {"method", "seed"} and done["job"].isdigit()  # the local controller pid
    assert "done: dc2 acc" in done["last_log"]
    assert sweep_cli("status", more, "--out", str(local), "--json", "--state", "not_launched") == 0
    todo = json.loads(capsys.readouterr().out)["tasks"]
    assert [r["point"]["seed"] for r in todo] == [2, 2] and {r["state"] for r in todo} == {"not launched"}
    assert sweep_cli("status", more, "--out", str(local), "--state", "done") == 0
    out = capsys.readouterr().out
    assert out.count(" done ") == 4 and "not launched" not in out.split("sweep localtest")[0]
    assert "6 cells: 4 done, 2 not launched (showing done)" in out
    with pytest.raises(SystemExit):
        sweep_cli("status", more, "--out", str(local), "--state", "finished")
    assert "unknown state 'finished'" in capsys.readouterr().err


def test_retry_resubmits_exactly_the_incomplete_run(both, capsys):
    grid, local, debug, sweep = both
    rid = sweep.run_ids()[0]
    images = synset(debug / rid)["images"]
    (debug / rid / "done").unlink()
    states = collect_states(debug, build_tasks(sweep, debug))
    assert states[f"run:{rid}"].state == "failed"
    assert sweep_cli("launch", grid, "--out", str(debug), "--cluster", "debug") == 0
    out = capsys.readouterr().out
    assert "submitted" not in out and "1 failed or blocked task(s) skipped" in out
    assert sweep_cli("retry", grid, "--out", str(debug), "--cluster", "debug") == 0
    assert "submitted 1 task(s)" in capsys.readouterr().out
    assert (debug / rid / "done").exists() and torch.equal(synset(debug / rid)["images"], images)


def test_dry_run_prints_the_plan_and_touches_nothing(tmp_path, capsys):
    grid = write_grid(tmp_path / "grid.yaml", GRID)
    out_dir = tmp_path / "runs"
    assert sweep_cli("launch", grid, "--out", str(out_dir), "--cluster", "local", "--dry-run") == 0
    out = capsys.readouterr().out
    assert not out_dir.exists()
    assert out.count("not launched  submit") == 4 and "method" in out and "seed" in out
    assert "run 4 distillation task(s) locally" in out and "dry run: nothing submitted" in out


def test_bad_grid_is_a_config_error_and_nothing_runs(tmp_path):
    grid = write_grid(tmp_path / "grid.yaml", {**GRID, "grid": {"method": ["dm", "random"], "ipcs": [1]}})
    with pytest.raises(ConfigError, match="unknown config key.*ipcs"):
        sweep_cli("launch", grid, "--out", str(tmp_path / "runs"), "--cluster", "local")
    assert not (tmp_path / "runs").exists()


def test_slurm_without_slurm_clients_is_a_clean_error(tmp_path, capsys, monkeypatch):
    grid = write_grid(tmp_path / "grid.yaml", GRID)
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(ConfigError, match="sinfo is not on PATH"):
        sweep_cli("launch", grid, "--out", str(tmp_path / "runs"))
    assert not (tmp_path / "runs").exists()
    assert sweep_cli("launch", grid, "--out", str(tmp_path / "runs"), "--dry-run") == 0  # a preview still works
    captured = capsys.readouterr()
    assert "submit 4 distillation task(s) as 1 array(s) of 4" in captured.out and "not checked" in captured.err
    assert not (tmp_path / "runs").exists()


def test_status_of_a_slurm_run_without_squeue_is_unknown_and_not_resubmitted(tmp_path, capsys, monkeypatch):
    grid = write_grid(tmp_path / "grid.yaml", {**GRID, "grid": {"method": ["random"]}, "seeds": 1})
    rid = load_grid(grid).run_ids()[0]
    (tmp_path / "runs" / rid).mkdir(parents=True)
    write_job(tmp_path / "runs" / rid, JobRecord("123_0", "slurm", "localtest", "2026-01-01T00:00:00+00:00"))
    monkeypatch.setenv("PATH", "/nonexistent")
    assert sweep_cli("status", grid, "--out", str(tmp_path / "runs")) == 0
    assert "unknown (squeue unavailable)" in capsys.readouterr().out
    assert sweep_cli("launch", grid, "--out", str(tmp_path / "runs"), "--cluster", "debug") == 0
    out = capsys.readouterr().out
    assert "nothing to submit" in out and "submitted" not in out


def test_failed_local_run_is_reported_with_its_error(tmp_path, capsys):
    data = {**GRID, "base": {**TINY, "dataset": "mnist"}, "grid": {"method": ["random"]}, "seeds": 1,
            "exec": {"progress": False, "data_root": str(tmp_path / "nodata")}}
    grid = write_grid(tmp_path / "grid.yaml", data)
    assert sweep_cli("launch", grid, "--out", str(tmp_path / "runs"), "--cluster", "local") == 1
    capsys.readouterr()
    assert sweep_cli("status", grid, "--out", str(tmp_path / "runs")) == 0
    out = capsys.readouterr().out
    assert "failed (process ended)" in out and "DataError: mnist not found" in out


FAKE_SQUEUE = """#!/bin/sh
printf "%s\\n" "$*" >> "{log}"
echo '12_0|RUNNING'
echo '12_[1-2%2]|PENDING'
"""
FAKE_SACCT = """#!/bin/sh
printf "%s\\n" "$*" >> "{log}"
{body}
"""


def _fake_scheduler(tmp_path, monkeypatch, sacct_body: str) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.log"
    for name, text in (("squeue", FAKE_SQUEUE), ("sacct", FAKE_SACCT)):
        path = bin_dir / name
        path.write_text(text.format(log=f"{log}.{name}", body=sacct_body))
        path.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return log


@pytest.mark.parametrize("sacct_works", [True, False], ids=["sacct", "no-sacct"])
def test_status_asks_the_scheduler_once_for_all_runs(tmp_path, monkeypatch, sacct_works):
    body = "echo '12_3|TIMEOUT'" if sacct_works else "echo 'accounting storage is disabled' >&2; exit 1"
    log = _fake_scheduler(tmp_path, monkeypatch, body)
    runs = tmp_path / "runs"
    ids = [f"run{i}" for i in range(5)]
    for i, rid in enumerate(ids[:4]):
        (runs / rid).mkdir(parents=True)
        write_job(runs / rid, JobRecord(f"12_{i}", "slurm", "fake", "2026-01-01T00:00:00+00:00"))
    err = runs / ".submitit" / "12_3" / "12_3_0_log.err"
    err.parent.mkdir(parents=True)
    err.write_text("Traceback (most recent call last):\n  File x\nValueError: boom\nsrun: error: task 0\n")
    states = collect_states(runs, [Task(f"run:{r}", "run", runs / r) for r in ids])
    assert [states[f"run:{r}"].state for r in ids] == ["running", "pending", "pending", "failed", "not launched"]
    assert states["run:run3"].error == "ValueError: boom"
    assert states["run:run3"].detail == ("TIMEOUT without 'done'" if sacct_works else "left the queue without 'done'")
    squeue_calls = Path(f"{log}.squeue").read_text().splitlines()
    sacct_calls = Path(f"{log}.sacct").read_text().splitlines()
    assert squeue_calls == ["-h -r -o %i|%T -j 12"] and sacct_calls == ["-n -X -P -o JobID,State -j 12"]


# ----------------------------------------------------------------------------------------------
# the preemption contract, in this process (the real thing runs in test_sweep_slurm.py)


def test_flag_handler_records_and_forwards_only_when_asked():
    calls = []
    previous = signal.signal(signal.SIGUSR2, lambda s, f: calls.append("submitit"))
    try:
        with StopFlag(signals=(signal.SIGUSR2,)) as flag:
            assert not flag() and not flag.forward()  # nothing received: nothing to forward
            os.kill(os.getpid(), signal.SIGUSR2)
            time.sleep(0.05)
            assert flag() and calls == []  # the flag only
            assert flag.forward() and calls == ["submitit"]  # at the safe point: submitit's handler
        handler = signal.getsignal(signal.SIGUSR2)
        assert callable(handler) and getattr(handler, "__self__", None) is not flag
        os.kill(os.getpid(), signal.SIGUSR2)  # restored: the previous handler again
        time.sleep(0.05)
        assert calls == ["submitit"] * 2
    finally:
        signal.signal(signal.SIGUSR2, previous)


def _signal_at_step(n: int):
    """run_one, but the process sends itself USR2 at the n-th step boundary (as scancel would)."""
    real = hpcdd.run.run_one

    def run_one_signalled(cfg, run_dir, exe, *, evals=(), evaluate=True, should_stop=None):
        calls = {"n": 0}

        def stop() -> bool:
            calls["n"] += 1
            if calls["n"] == n:
                os.kill(os.getpid(), signal.SIGUSR2)  # handled in this (main) thread right away
            return should_stop() if should_stop else False

        return real(cfg, run_dir, exe, evals=evals, evaluate=evaluate, should_stop=stop)

    return run_one_signalled


def test_usr2_mid_distillation_checkpoints_calls_submitit_and_resumes(tmp_path, monkeypatch):
    run, ev = configs_from_flat({**TINY, "method": "dm", "iterations": 40})
    exe = to_dict(ExecConfig(checkpoint_every=50, progress=False))
    ref = tmp_path / "ref"
    run_one(run, ref, ExecConfig(progress=False), evaluate=False)

    class Requeued(BaseException):
        pass

    calls = []

    def fake_submitit(signum, frame):  # what submitit does: checkpoint(), requeue, exit
        calls.append(job.checkpoint())
        raise Requeued

    run_dir = tmp_path / "run"
    job = SweepJob("run", {"config": to_dict(run), "evals": [to_dict(ev)]}, str(run_dir), exe)
    previous = signal.signal(signal.SIGUSR2, fake_submitit)
    try:
        with monkeypatch.context() as mp:
            mp.setattr(hpcdd.run, "run_one", _signal_at_step(7))
            with pytest.raises(Requeued):
                job()
        assert signal.getsignal(signal.SIGUSR2) is fake_submitit  # restored
    finally:
        signal.signal(signal.SIGUSR2, previous)
    log = (run_dir / "log.txt").read_text()
    assert "stopping after iteration 7 " in log and "submitit requeues this task" in log
    assert not (run_dir / "synset.pt").exists()
    fresh = calls[0].function
    assert isinstance(fresh, SweepJob) and fresh is not job
    [row] = fresh()  # the requeued job: resumes from the checkpoint written at the stop
    lines = (run_dir / "log.txt").read_text().splitlines()
    stopped = [int(l.split("stopping after iteration ")[1].split()[0]) for l in lines if "stopping after" in l]
    resumed = [int(l.rsplit(" ", 1)[1]) for l in lines if "resumed at iteration" in l]
    assert stopped == resumed == [7]  # from the checkpoint written at the stop (not a periodic one)
    assert (run_dir / "done").exists() and 0.0 <= row["acc_mean"] <= 1.0
    assert torch.equal(synset(run_dir)["images"], synset(ref)["images"])


@pytest.mark.parametrize("sched, expected", [("RUNNING", "running"), ("PENDING", "pending"),
                                             ("REQUEUED", "pending"), ("TIMEOUT", "failed"),
                                             ("CANCELLED", "failed"), ("OUT_OF_MEMORY", "failed")])
def test_queue_states_that_ended_count_as_failed(sched, expected):
    from hpcdd.sweep.state import _live_state

    record = JobRecord("12_0", "slurm", "s", "2026-01-01T00:00:00+00:00")
    assert _live_state(record, {"12_0": sched}, {})[0] == expected


def test_a_reused_local_pid_is_not_a_running_run():
    from hpcdd.sweep.state import _live_state

    record = JobRecord(str(os.getpid()), "local", "s", "2026-01-01T00:00:00+00:00")  # pytest, not submitit
    assert _live_state(record, None, {})[0] == "failed"
