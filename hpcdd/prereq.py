"""Prerequisite artefacts: jobs built once, before the runs that need them, and shared by all.

A prerequisite (a pretrained cGAN, one expert trajectory) has its own config, identity
(:func:`hpcdd.catalog.prereq_id`) and directory ``ARTEFACT_ROOT/<kind>/<id>`` with a run dir's
layout (run.json, config.yaml, log.txt, checkpoint/, its artefact files, done). It checkpoints and
resumes like a run. Its implementation (``PrereqSpec.impl``) is a :class:`PrereqJob`.
"""

from __future__ import annotations

import contextlib
import fcntl
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable, Iterator

from hpcdd.catalog import prereq_id
from hpcdd.config import ExecConfig
from hpcdd.io import atomic_write_json, now_utc
from hpcdd.rundir import (
    LOCK, PREREQ_KIND, artefact_root, check_free, ensure_writable, is_done, log, mark_done,
    prereq_dir, write_identity,
)
from hpcdd.runtime.loop import run_steps
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
          should_stop: Callable[[], bool] | None = None, echo: Callable[[str], None] = print) -> Path:
    """Build the prerequisite ``ref`` unless it is done; returns its directory.

    Resumes from its own checkpoints; raises ``Interrupted`` when asked to stop.
    """
    pid = prereq_id(ref)
    out = ref_dir(ref, exec_cfg)
    if is_done(out):
        return out
    ensure_writable(out)
    with _wait_lock(out, lambda: echo(f"hpcdd: waiting for {ref.kind} {pid}, being built by another process")):
        if is_done(out):  # built by the process we waited for
            return out
        check_free(out, pid, kind=PREREQ_KIND)
        write_identity(out, pid, ref.config, PREREQ_KIND, prereq=ref.kind)
        if accelerator is None:  # a job of its own (not inside a run that set the process up)
            from hpcdd.runtime.accel import make_accelerator
            from hpcdd.runtime.process import setup_process

            setup_process(exec_cfg.threads)
            accelerator = make_accelerator(exec_cfg.deterministic)
        t0 = time.perf_counter()
        log(out, f"building {ref.kind} {pid}")
        job = load_impl(PREREQS.get(ref.kind).impl)(ref.config, accelerator, exec_cfg)
        seconds, _ = run_steps(job, total=job.total_steps, run_dir=out, ident=pid, exec_cfg=exec_cfg,
                               should_stop=should_stop, desc=f"{ref.kind} {pid}",
                               after_step=lambda done: job.after_step(out, done))
        job.save(out)
        atomic_write_json(out / "timing.json", {"seconds": round(seconds, 3),
                                                "wall_seconds": round(time.perf_counter() - t0, 3),
                                                "finished_at": now_utc()})
        mark_done(out, pid)
        log(out, f"{ref.kind} {pid} finished in {seconds:.1f}s")
    return out


__all__ = ["PrereqJob", "build", "ref_dir"]
