"""Issue 22 item 18: a prerequisite says what it will cost before its first step (its steps), and
an estimate of the rest after the first few, for every prerequisite kind (here the test-only
``toy_prereq``; ``gan_pretrain`` and ``mtt_expert`` go through the same ``prereq.build``)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from hpcdd.catalog import configs_from_flat, prerequisites, resolve
from hpcdd.config import ExecConfig

TESTS = Path(__file__).resolve().parent


@pytest.fixture(autouse=True)
def plugins(monkeypatch, tmp_path):
    monkeypatch.setenv("HPCDD_PLUGINS", "doubles")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("HPCDD_ARTEFACTS", str(tmp_path / "artefacts"))


def _ref(steps: int):
    run, _ = configs_from_flat({"method": "twostage", "dataset": "digits", "ipc": 1, "iterations": 2,
                                "prereq_steps": steps}, where="test")
    [ref] = prerequisites(resolve(run))
    return ref


def test_cost_is_printed_before_the_first_step_and_estimated_after_a_few(tmp_path, monkeypatch):
    import doubles
    from hpcdd import prereq

    events: list[str] = []
    original = doubles.ToyPrereq.step

    def step(self, it):
        events.append(f"step {it}")
        return original(self, it)

    monkeypatch.setattr(doubles.ToyPrereq, "step", step)
    out = prereq.build(_ref(6), ExecConfig(progress=False, artefact_root=str(tmp_path)), report=events.append)
    first = events[0]
    assert not first.startswith("step") and "toy_prereq" in first and "6 steps" in first, events
    estimate = [i for i, e in enumerate(events) if "remaining" in e]
    assert len(estimate) == 1, events
    assert events[estimate[0] - 1] == "step 2" and events[estimate[0] + 1] == "step 3", events
    assert re.search(r"3 steps took [0-9.]+ ?s; about .+ for the remaining 3", events[estimate[0]]), events
    log = (out / "log.txt").read_text()
    assert "6 steps" in log and "for the remaining 3" in log  # also in the prerequisite's log


def test_distill_prints_the_prerequisite_cost_on_stderr(tmp_path, capsys):
    from hpcdd.run import run_one

    run, _ = configs_from_flat({"method": "twostage", "dataset": "digits", "ipc": 1, "iterations": 2,
                                "prereq_steps": 2}, where="test")
    run_one(run, tmp_path / "run", ExecConfig(progress=False), evaluate=False)
    err = capsys.readouterr().err
    assert "twostage needs 1 prerequisite(s) (toy_prereq); 1 to build first" in err, err
    assert re.search(r"toy_prereq \w+: 2 steps to build", err), err
    assert "for the remaining 0 steps" not in err  # nothing left to estimate: no estimate line
