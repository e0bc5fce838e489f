"""The general pipeline with test-only doubles (tests/doubles.py): a two-stage method whose
prerequisite is built once and shared, a failing prerequisite that blocks its dependants, and a
generator method evaluated with both protocol kinds."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from hpcdd.catalog import configs_from_flat, prereq_id, prerequisites, resolve
from hpcdd.config import EvalConfig, ExecConfig
from hpcdd.errors import ConfigError
from hpcdd.run import evaluate_run, run_one
from hpcdd.sweep.grid import expand_grid
from hpcdd.sweep.launch import execute, plan_launch
from hpcdd.sweep.state import build_tasks, collect_states

from helpers import sweep_cli, write_grid

TESTS = Path(__file__).resolve().parent
TINY = {"dataset": "digits", "ipc": 1, "iterations": 3, "batch_real": 8, "eval_epochs": 1, "eval_n": 1}


@pytest.fixture(scope="module", autouse=True)
def plugins(tmp_path_factory):
    """Register the doubles here and in every child process (local executor, Slurm)."""
    artefacts = tmp_path_factory.mktemp("artefacts")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HPCDD_PLUGINS", "doubles")
        mp.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
        mp.setenv("HPCDD_ARTEFACTS", str(artefacts))
        mp.setenv("OMP_NUM_THREADS", "1")
        yield artefacts


def exe(**kw) -> ExecConfig:
    return ExecConfig(progress=False, checkpoint_every=1, **kw)


def cfgs(**kw):
    return configs_from_flat({**TINY, **kw}, where="test")


def test_single_distill_builds_the_prerequisite_then_reuses_it(tmp_path, plugins):
    run, ev = cfgs(method="twostage")
    [ref] = prerequisites(resolve(run))
    built = plugins / "toy_prereq" / prereq_id(ref)
    [row] = run_one(run, tmp_path / "a", exe(), evals=[ev])
    assert (built / "done").exists() and (built / "means.pt").exists()
    assert json.loads((tmp_path / "a" / "prerequisites.json").read_text()) == {"toy": str(built)}
    assert "checkpoint at iteration 1" in (built / "log.txt").read_text()  # it checkpoints like a run
    mtime = (built / "means.pt").stat().st_mtime_ns
    run2, _ = cfgs(method="twostage", seed=1)  # another seed: the same prerequisite
    run_one(run2, tmp_path / "b", exe(), evals=[ev])
    assert (built / "means.pt").stat().st_mtime_ns == mtime
    assert (built / "log.txt").read_text().count("building toy_prereq") == 1
    assert 0.0 <= row["acc_mean"] <= 1.0


def test_prerequisite_resumes_from_its_checkpoint(tmp_path, plugins):
    from hpcdd import prereq
    from hpcdd.runtime.preempt import Interrupted

    run, _ = cfgs(method="twostage", prereq_steps=4)
    [ref] = prerequisites(resolve(run))
    calls = {"n": 0}

    def stop():
        calls["n"] += 1
        return calls["n"] >= 2

    with pytest.raises(Interrupted):
        prereq.build(ref, exe(artefact_root=str(tmp_path)), should_stop=stop)
    out = prereq.build(ref, exe(artefact_root=str(tmp_path)))
    assert "resumed at iteration 2" in (out / "log.txt").read_text()
    fresh = prereq.build(ref, exe(artefact_root=str(tmp_path / "fresh")))
    a = torch.load(out / "means.pt", weights_only=True)["means"]
    b = torch.load(fresh / "means.pt", weights_only=True)["means"]
    assert torch.equal(a, b)


def test_a_prerequisite_job_uses_the_exec_thread_count(tmp_path, plugins, monkeypatch):
    """A prerequisite task is a process of its own: it sets torch's threads as a run does (an
    unset count oversubscribes the cores shared by parallel tasks)."""
    from hpcdd import prereq

    run, _ = cfgs(method="twostage")
    [ref] = prerequisites(resolve(run))
    before = torch.get_num_threads()
    seen = []
    monkeypatch.setattr(torch, "set_num_threads", seen.append)
    prereq.build(ref, exe(artefact_root=str(tmp_path), threads=before + 1))
    assert seen == [before + 1]
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", str(before + 2))
    prereq.build(ref, exe(artefact_root=str(tmp_path / "slurm")))
    assert seen == [before + 1, before + 2]


GRID = {"name": "twostage", "base": {**TINY, "method": "twostage"}, "grid": {"ipc": [1, 2]}, "seeds": 2,
        "exec": {"progress": False, "checkpoint_every": 1}, "slurm": {"array_parallelism": 2}}


def with_root(grid: dict, root: Path) -> dict:
    return {**grid, "exec": {**grid["exec"], "artefact_root": str(root)}}


def test_a_prerequisite_shared_by_four_cells_is_built_once(tmp_path):
    data = with_root(GRID, tmp_path / "art")
    grid = write_grid(tmp_path / "g.yaml", data)
    sweep = expand_grid(data, source="g")
    assert len(sweep.cells) == 4 and len(sweep.prereqs) == 1
    runs = tmp_path / "runs"
    plan = plan_launch(sweep, runs, "local")
    assert [t.stage for t in plan.to_submit()] == ["prereq", "run", "run", "run", "run"]
    report = execute(plan)
    assert not report.failed and len(report.submitted) == 5
    log = (tmp_path / "art" / sweep.prereqs[0].key / "log.txt").read_text()
    assert log.count("building toy_prereq") == 1
    for run in sweep.runs:
        assert (runs / run.run_id / "eval" / run.eval_ids[0] / "done").exists()
    states = collect_states(runs, build_tasks(sweep, runs))
    assert {s.state for s in states.values()} == {"done"}
    assert sweep_cli("launch", grid, "--out", str(runs), "--cluster", "local") == 0  # relaunch: nothing new
    assert {t.key: t for t in plan_launch(sweep, runs, "local").to_submit()} == {}


def test_a_failed_prerequisite_blocks_its_dependants(tmp_path, capsys):
    data = with_root({**GRID, "name": "failing", "base": {**GRID["base"], "prereq_fail": True}}, tmp_path / "art")
    grid = write_grid(tmp_path / "g.yaml", data)
    runs = tmp_path / "runs"
    assert sweep_cli("launch", grid, "--out", str(runs), "--cluster", "local") == 1
    capsys.readouterr()
    assert sweep_cli("status", grid, "--out", str(runs)) == 0
    out = capsys.readouterr().out
    assert "4 cells: 4 blocked" in out and "prerequisites: 1 failed" in out
    assert "toy prerequisite failed on purpose" in out
    sweep = expand_grid(data, source="g")
    plan = plan_launch(sweep, runs, "local")
    assert not plan.to_submit()  # blocked and failed tasks wait for --retry
    retry = plan_launch(sweep, runs, "local", retry=True)
    assert [t.stage for t in retry.to_submit()] == ["prereq", "run", "run", "run", "run"]


def test_generator_source_fixed_and_resample(tmp_path, plugins):
    run, ev = cfgs(method="toygen", ipc=3)
    assert resolve(run).ipc is None and ev.ipc == 3  # one generator serves every ipc
    [row] = run_one(run, tmp_path, exe(), evals=[ev])
    assert row["ipc"] == 3 and row["protocol"] == "dc1" and (tmp_path / "generator.pt").exists()
    resample = EvalConfig(epochs=2, n=1, kind="resample", ipc=5)
    again = evaluate_run(tmp_path, resample, exe())
    assert again["protocol"] == "dim-resample2" and again["ipc"] == 5
    with pytest.raises(ConfigError, match="eval_ipc"):
        evaluate_run(tmp_path, EvalConfig(epochs=1, n=1), exe())
    from hpcdd.artefact import load_source

    source, _ = load_source(tmp_path / "generator.pt", "generator")
    g1, g2 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    a, b = source.sample(10, g1), source.sample(10, g2)
    assert torch.equal(a.images, b.images) and a.images.shape[0] == 10 * 10  # 10 classes x ipc 10


def test_generator_grid_ipcs_share_one_distillation():
    grid = {"name": "gen", "base": {**TINY, "method": "toygen"}, "grid": {"ipc": [1, 10, 50]}}
    sweep = expand_grid(grid, source="g")
    assert len(sweep.cells) == 3 and len(sweep.runs) == 1
    assert [c.eval.ipc for c in sweep.cells] == [1, 10, 50]
