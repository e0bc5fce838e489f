"""Prerequisite artefacts: jobs built once, before the runs that need them, and shared by all.

A prerequisite (a pretrained cGAN, one expert trajectory) has its own config, identity
(:func:`hpcdd.catalog.prereq_id`) and directory ``ARTEFACT_ROOT/<kind>/<id>`` with a run dir's
layout (run.json, config.yaml, log.txt, checkpoint/, its artefact files, done). It checkpoints and
resumes like a run. Its implementation (``PrereqSpec.impl``) is a :class:`PrereqJob`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import sys
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable, Iterator

from hpcdd.catalog import prereq_id
from hpcdd.config import ExecConfig
from hpcdd.io import clean_stale_tmp, now_utc
from hpcdd.rundir import LOCK, PREREQ_KIND, artefact_root, check_free, is_done, prereq_dir, write_identity
from hpcdd.runtime.dist import Dist, dist_of
from hpcdd.runtime.loop import run_steps
from hpcdd.runtime.writer import RunWriter, writer_for
from hpcdd.specs import PREREQS, PrereqRef, load_impl


class PrereqJob(ABC):
    """The implementation of a prerequisite kind: a resumable, steppable job."""

    def __init__(self, config: Any, accelerator: Any, exec_cfg: ExecConfig) -> None:
        self.config = config
        self.accelerator = accelerator
        self.exec_cfg = exec_cfg

    @property
    def total_steps(self) -> int:
        """How many ``step`` calls the job takes."""
        raise NotImplementedError

    @abstractmethod
    def step(self, it: int) -> dict[str, float]: ...

    @abstractmethod
    def state_dict(self) -> dict[str, Any]: ...

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    @abstractmethod
    def save(self, out_dir: Path) -> None:
        """Write the finished artefact file(s) into ``out_dir`` (atomically)."""

    checkpoint_every: int | None = None
    """Checkpoint every this many steps instead of ``exec_cfg.checkpoint_every`` (experts: 1, so a
    killed expert resumes at its last finished epoch)."""

    def describe(self) -> str:
        """What one step is, for the cost line printed before the first (e.g. '1 epoch of 235
        batches'); empty if nothing useful."""
        return ""

    def after_step(self, out_dir: Path, done: int) -> None:
        """Hook after each logged step (e.g. sample grids every few epochs)."""


def ref_dir(ref: PrereqRef, exec_cfg: ExecConfig) -> Path:
    return prereq_dir(artefact_root(exec_cfg.artefact_root), ref.kind, prereq_id(ref))


@contextlib.contextmanager
def _wait_lock(path: Path, message: Callable[[], None]) -> Iterator[None]:
    """Blocking lock on ``path/.lock``: a second run needing the same prerequisite waits for it."""
    with open(path / LOCK, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            message()
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def build(ref: PrereqRef, exec_cfg: ExecConfig, *, accelerator: Any = None,
          should_stop: Callable[[], bool] | None = None, echo: Callable[[str], None] = print,
          report: Callable[[str], None] | None = None, dist: Dist | None = None) -> Path:
    """Build the prerequisite ``ref`` unless it is done; returns its directory.

    Resumes from its own checkpoints; raises ``Interrupted`` when asked to stop. Before its first
    step it reports (``report``, default stderr, and its log) how many steps it takes, and after
    the first few an estimate of the time left (:class:`CostReport`). With several processes
    (``dist``, default: the accelerator's) every rank steps the job and rank 0 alone writes.
    """
    pid = prereq_id(ref)
    out = ref_dir(ref, exec_cfg)
    if is_done(out):
        return out
    if accelerator is None:  # a job of its own (not inside a run that set the process up)
        from hpcdd.runtime.accel import make_accelerator
        from hpcdd.runtime.process import setup_process

        threads = setup_process(exec_cfg.threads)
        accelerator = make_accelerator(exec_cfg.deterministic, exec_cfg.dist_timeout_s, threads)
    dist = dist if dist is not None else dist_of(accelerator)
    writer = writer_for(out, dist)
    if dist.from_main(is_done(out)):
        return out

    def prepare() -> None:
        check_free(out, pid, kind=PREREQ_KIND)
        clean_stale_tmp(out, recursive=True)  # temp files of writes a kill interrupted
        write_identity(out, pid, ref.config, PREREQ_KIND, prereq=ref.kind)

    def wait_lock(path: Path) -> Any:
        return _wait_lock(path, lambda: echo(f"hpcdd: waiting for {ref.kind} {pid}, being built by another process"))

    with writer.session(prepare, lock=wait_lock):
        if dist.from_main(is_done(out)):  # built by the process we waited for
            return out
        _build(ref, pid, out, exec_cfg, accelerator, writer, should_stop, report)
    return out


def _build(ref: PrereqRef, pid: str, out: Path, exec_cfg: ExecConfig, accelerator: Any, writer: RunWriter,
           should_stop: Callable[[], bool] | None, report: Callable[[str], None] | None) -> None:
    t0 = time.perf_counter()
    writer.log(f"building {ref.kind} {pid}")
    job = load_impl(PREREQS.get(ref.kind).impl)(ref.config, accelerator, exec_cfg)
    cost = CostReport(f"{ref.kind} {pid}", job.total_steps, lambda m: _say(writer, m, report))
    cost.start(job.describe())
    loop_cfg = exec_cfg if job.checkpoint_every is None else dataclasses.replace(
        exec_cfg, checkpoint_every=job.checkpoint_every)

    def after_step(done: int) -> None:
        cost.step(done)
        writer.own(job.after_step, out, done)

    seconds, _ = run_steps(job, total=job.total_steps, run_dir=out, ident=pid, exec_cfg=loop_cfg,
                           should_stop=should_stop, desc=f"{ref.kind} {pid}", after_step=after_step,
                           writer=writer)
    writer.own(job.save, out)
    writer.json(out / "timing.json", {"seconds": round(seconds, 3),
                                      "wall_seconds": round(time.perf_counter() - t0, 3),
                                      "finished_at": now_utc()})
    writer.mark_done(out, pid)
    writer.log(f"{ref.kind} {pid} finished in {seconds:.1f}s")


class CostReport:
    """Item 18 of issue 22: say what a prerequisite costs before it starts (its steps), then,
    after ``FEW`` steps (or ``SOON_S`` seconds, whichever comes first), the time per step and an
    estimate of the rest. A prerequisite can take hours (DiM's default pretraining, 100 MTT
    experts); a user should know before waiting."""

    FEW = 3
    SOON_S = 60.0

    def __init__(self, what: str, total: int, say: Callable[[str], None]) -> None:
        self.what, self.total, self.say = what, total, say
        self.t0 = 0.0
        self.first: int | None = None
        self.done = False

    def start(self, unit: str = "") -> None:
        per = f" ({unit} each)" if unit else ""
        self.say(f"{self.what}: {self.total} steps to build{per}; a time estimate follows after the first "
                 f"{min(self.FEW, self.total)}")
        self.t0 = time.perf_counter()

    def step(self, done: int) -> None:
        if self.first is None:
            self.first = done - 1  # the step it started (or resumed) at
        n = done - self.first
        elapsed = time.perf_counter() - self.t0
        left = self.total - done
        if self.done or left <= 0 or (n < self.FEW and elapsed < self.SOON_S):
            return
        self.done = True
        self.say(f"{self.what}: {n} steps took {elapsed:.1f}s; about {duration(elapsed / n * left)} "
                 f"for the remaining {left} steps")


def duration(seconds: float) -> str:
    """'42 s', '7.5 min', '3.2 h'."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _say(writer: RunWriter, message: str, report: Callable[[str], None] | None) -> None:
    """A cost line into the log and to ``report`` (default stderr), by the main process only."""
    writer.log(message)
    writer.own(report if report is not None else _stderr, message)


def _stderr(message: str) -> None:
    print(f"hpcdd: {message}", file=sys.stderr, flush=True)


__all__ = ["PrereqJob", "build", "ref_dir", "CostReport", "duration"]
