"""The callable that submitit pickles for each run, and its preemption contract.

The pickle is small: a ``SweepJob`` holds the resolved config as a plain dict, the run dir path
and the exec dict, never tensors. All state lives in the run dir, so a requeued job is a fresh
``SweepJob`` that ``run_one`` resumes from the newest valid checkpoint.

Preemption (``scancel --signal=USR2``, or the time limit's USR2 ``signal_delay_s`` before it):

1. submitit installs its own USR2 handler (checkpoint + requeue) before it calls the job;
2. ``__call__`` installs ``StopFlag``, a handler that ONLY sets a flag, remembering submitit's;
3. ``run_one`` sees the flag at the next step boundary, writes a checkpoint and raises
   ``Interrupted`` (during evaluation: at the next epoch; evaluation restarts from ``synset.pt``);
   the job then calls submitit's handler itself (``StopFlag.forward``), which calls
   ``checkpoint()`` (a fresh ``SweepJob``), requeues the task and exits.

A plain ``scontrol requeue`` or a node failure kills the process without any handler; the requeued
task still resumes, from the last periodic checkpoint. Handlers are restored when the job returns.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import submitit

from hpcdd.config import ExecConfig, RunConfig, from_dict
from hpcdd.run import log, run_one
from hpcdd.runtime.preempt import Interrupted, StopFlag

def preempt_signal() -> signal.Signals:
    """The signal submitit treats as preemption/timeout: SIG$SUBMITIT_PREEMPT_SIGNAL, USR2 by
    default (USR1 may be caught by NCCL). Read the same way submitit reads it."""
    return signal.Signals["SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")]


class SweepJob(submitit.helpers.Checkpointable):
    """Runs one grid point into its run dir under any submitit executor."""

    def __init__(self, config: dict[str, Any], run_dir: str, exec_cfg: dict[str, Any]) -> None:
        self.config = dict(config)
        self.run_dir = str(run_dir)
        self.exec_cfg = dict(exec_cfg)

    def __call__(self) -> dict[str, Any] | None:
        cfg = from_dict(RunConfig, self.config, where=f"{self.run_dir} job config")
        exe = from_dict(ExecConfig, self.exec_cfg, where=f"{self.run_dir} job exec")
        with StopFlag(signals=(preempt_signal(),)) as flag:
            try:
                return run_one(cfg, self.run_dir, exe, should_stop=flag)
            except Interrupted as stopped:
                if not flag.forward():  # no submitit handler (plain process): nobody requeues
                    log(Path(self.run_dir), f"{stopped}; no requeue handler")
                raise

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """Called by submitit's handler: resubmit a fresh job that resumes from the run dir."""
        if Path(self.run_dir).is_dir():
            log(Path(self.run_dir), "preempted or timed out: submitit requeues this run")
        return submitit.helpers.DelayedSubmission(type(self)(self.config, self.run_dir, self.exec_cfg))

    def __repr__(self) -> str:
        return f"SweepJob({Path(self.run_dir).name})"


__all__ = ["SweepJob", "preempt_signal"]
