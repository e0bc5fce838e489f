"""The callables that submitit pickles for each task, and their preemption contract.

The pickle is small: a ``SweepJob`` holds plain dicts (configs, exec) and a directory path, never
tensors. All state lives on disk, so a requeued job is a fresh ``SweepJob`` that resumes from the
newest valid checkpoint. One class serves the three stages: ``prereq`` builds a prerequisite
artefact, ``run`` distils (and runs the evaluations it carries), ``eval`` evaluates a finished
distillation.

Preemption (``scancel --signal=USR2``, or the time limit's USR2 ``signal_delay_s`` before it):

1. submitit installs its own USR2 handler (checkpoint + requeue) before it calls the job;
2. ``__call__`` installs ``StopFlag``, a handler that ONLY sets a flag, remembering submitit's;
   SIGTERM (what an outside requeue or a preemption sends before SIGKILL) sets the same flag;
3. the step loop sees the flag at the next step boundary, writes a checkpoint and raises
   ``Interrupted`` (during evaluation: at the next epoch; finished models are kept); the job then
   calls submitit's USR2 handler itself (``StopFlag.forward``), which calls ``checkpoint()`` (a
   fresh ``SweepJob``), requeues the task and exits. After a TERM the job just exits: whoever
   sent it (Slurm's requeue) restarts the task, which resumes from that checkpoint.

A plain ``kill -9`` or a node failure runs no handler; the requeued task still resumes, from the
last periodic checkpoint (every ``checkpoint_every`` iterations or ``checkpoint_minutes``).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import submitit

from hpcdd.config import EvalConfig, ExecConfig, RunConfig, from_dict
from hpcdd.rundir import log
from hpcdd.runtime.preempt import Interrupted, StopFlag

STAGES = ("prereq", "run", "eval")


def preempt_signal() -> signal.Signals:
    """The signal submitit treats as preemption/timeout: SIG$SUBMITIT_PREEMPT_SIGNAL, USR2 by
    default (USR1 may be caught by NCCL). Read the same way submitit reads it."""
    return signal.Signals["SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")]


class SweepJob(submitit.helpers.Checkpointable):
    """Runs one task of a sweep under any submitit executor.

    ``payload``: for ``run``, ``{"config": RunConfig dict, "evals": [EvalConfig dicts]}``; for
    ``eval``, ``{"eval": EvalConfig dict}``; for ``prereq``, ``{"kind": ..., "config": dict}``.
    """

    def __init__(self, stage: str, payload: dict[str, Any], task_dir: str, exec_cfg: dict[str, Any]) -> None:
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}")
        self.stage = stage
        self.payload = dict(payload)
        self.task_dir = str(task_dir)
        self.exec_cfg = dict(exec_cfg)

    def __call__(self) -> Any:
        exe = from_dict(ExecConfig, self.exec_cfg, where=f"{self.task_dir} job exec")
        with StopFlag(signals=(preempt_signal(), signal.SIGTERM)) as flag:
            try:
                return self._run(exe, flag)
            except Interrupted as stopped:
                if flag.received == preempt_signal():
                    if not flag.forward():  # no submitit handler (plain process): nobody requeues
                        log(self._log_dir(), f"{stopped}; no requeue handler")
                raise

    def _run(self, exe: ExecConfig, flag: StopFlag) -> Any:
        if self.stage == "prereq":
            from hpcdd import prereq
            from hpcdd.catalog import prereq_from_dict

            ref = prereq_from_dict(self.payload["kind"], self.payload["config"], where=self.task_dir)
            return str(prereq.build(ref, exe, should_stop=flag))
        if self.stage == "eval":
            from hpcdd.run import evaluate_run

            ev = from_dict(EvalConfig, self.payload["eval"], where=f"{self.task_dir} evaluation")
            return evaluate_run(Path(self.task_dir).parent.parent, ev, exe, should_stop=flag)
        from hpcdd.run import run_one

        cfg = from_dict(RunConfig, self.payload["config"], where=f"{self.task_dir} job config")
        evals = [from_dict(EvalConfig, e, where=f"{self.task_dir} evaluation") for e in self.payload["evals"]]
        return run_one(cfg, self.task_dir, exe, evals=evals, evaluate=bool(evals), should_stop=flag)

    def _log_dir(self) -> Path:
        return Path(self.task_dir).parent.parent if self.stage == "eval" else Path(self.task_dir)

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """Called by submitit's handler: resubmit a fresh job that resumes from the task dir."""
        if self._log_dir().is_dir():
            log(self._log_dir(), "preempted or timed out: submitit requeues this task")
        return submitit.helpers.DelayedSubmission(
            type(self)(self.stage, self.payload, self.task_dir, self.exec_cfg))

    def __repr__(self) -> str:
        return f"SweepJob({self.stage} {Path(self.task_dir).name})"


__all__ = ["SweepJob", "preempt_signal", "STAGES"]
