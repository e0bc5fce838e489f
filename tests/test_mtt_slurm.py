"""MTT experts on the REAL local Slurm cluster (issue 20): a grid's experts go out as one array
(one task per expert) before the distillation, which waits with afterok; one expert is killed
mid-run with ``scontrol requeue`` and resumes at its last finished epoch with no missing or
duplicate epoch file; a relaunch submits nothing. This drives ``bench/mtt_requeue.py``, the
script of the Fashion-MNIST acceptance, on a digits grid (ConvNet3 at 16 px: ~1-5 s an epoch)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from helpers import write_grid
from slurm_fixture import slurm_env  # noqa: F401 (a fixture)

pytestmark = pytest.mark.slurm

BENCH = Path(__file__).resolve().parents[1] / "bench"


def test_a_requeued_expert_resumes_at_its_last_epoch_and_a_relaunch_submits_nothing(slurm_env, tmp_path):
    sys.path.insert(0, str(BENCH))
    try:
        import mtt_requeue
    finally:
        sys.path.pop(0)
    grid = write_grid(tmp_path / "grid.yaml", {
        "name": "sl-mtt",
        "base": {"method": "mtt", "dataset": "digits", "im_size": 16, "ipc": 1, "iterations": 2, "syn_steps": 2,
                 "max_start_epoch": 2, "expert_epochs": 2, "buffer_experts": 2, "buffer_epochs": 8,
                 "eval_models": ["mlp"], "eval_epochs": 1, "eval_n": 1},
        "exec": {"progress": False, "artefact_root": str(tmp_path / "art")},
        "slurm": {"time_min": 20, "array_parallelism": 2}})
    lines = mtt_requeue.run(grid, tmp_path / "runs", expert=1, after_epochs=2, timeout_s=240, poll_s=1)
    assert lines[-1] == "PASS", "\n".join(lines)
    assert "launched 3 task(s): 2 expert(s), then 1 distillation(s)" in lines[0]
    experts = sorted((tmp_path / "art" / "mtt_expert").iterdir())
    jobs = [json.loads((d / "job.json").read_text())["job_id"] for d in experts]
    assert len({j.split("_")[0] for j in jobs}) == 1  # one array, one task per expert
    for d in experts:
        assert sorted(os.listdir(d / "epochs")) == [f"epoch-{e:04d}.pt" for e in range(9)]
