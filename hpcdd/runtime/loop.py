"""The resumable step loop shared by distillations and prerequisite jobs.

``run_steps`` resumes a ``Steppable`` from the newest valid checkpoint, steps it to ``total``,
logs each step's metrics to ``metrics.jsonl``, and checkpoints atomically every
``checkpoint_every`` steps, every ``checkpoint_minutes`` of wall time (so an outside requeue or a
node failure loses at most that much), and when ``should_stop()`` turns true (then it raises
``Interrupted``). A non-finite loss stops the run with ``NonFiniteLossError``; the checkpoints on
disk are never touched by it.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable, Protocol

import torch

from hpcdd.config import ExecConfig
from hpcdd.errors import CheckpointError, NonFiniteLossError
from hpcdd.rundir import CHECKPOINTS
from hpcdd.runtime.checkpoint import checkpoint_files, load_latest, warn_line
from hpcdd.runtime.preempt import Interrupted
from hpcdd.runtime.progress import progress
from hpcdd.runtime.writer import RunWriter, truncate_metrics


class Steppable(Protocol):
    """What the loop drives: a distillation (with its sampler) or a prerequisite job."""

    def step(self, it: int) -> dict[str, float]: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def run_steps(
    job: Steppable,
    *,
    total: int,
    run_dir: Path,
    ident: str,
    exec_cfg: ExecConfig,
    should_stop: Callable[[], bool] | None = None,
    desc: str = "",
    after_step: Callable[[int], None] | None = None,
    writer: RunWriter | None = None,
) -> tuple[float, int]:
    """Step ``job`` from its newest checkpoint to ``total``; returns (seconds, start iteration).

    ``after_step(done_iterations)`` runs after each step's metrics are logged (quick evals).
    ``seconds`` counts the compute time of every attempt, carried across resumes. Files are
    written through ``writer`` (default: a :class:`RunWriter` of ``run_dir`` for one process).
    With several processes every rank restores the same checkpoint, and the stop request is
    shared at each step boundary, so all ranks checkpoint (rank 0 writes) after the same step.
    """
    writer = writer if writer is not None else RunWriter(run_dir)
    dist = writer.dist
    ckpt_dir = run_dir / CHECKPOINTS

    def warn(msg: str) -> None:
        writer.log(f"warning: {msg}")
        if dist.is_main:
            warn_line(msg)

    state = load_latest(ckpt_dir, ident, restore=lambda s: _restore(job, s), warn=warn)
    start, elapsed = 0, 0.0
    if state is not None:
        start, elapsed = int(state["it"]), float(state["seconds"])
    if dist.several and dist.from_main(start) != start:  # every rank read the same files
        raise CheckpointError(f"rank {dist.rank} resumed at iteration {start}, rank 0 at another; "
                              f"is {ckpt_dir} on a file system every rank sees?")
    writer.truncate_metrics(start)  # rows of an attempt that left no checkpoint: redone
    if state is not None:
        writer.log(f"resumed at iteration {start}")
        writer.metric({"event": "resume", "it": start})
    t0 = time.perf_counter() - elapsed
    last_save = time.monotonic()

    def checkpoint(done: int) -> None:
        nonlocal last_save
        if writer.writes:
            writer.checkpoint(ckpt_dir, done, {"run_id": ident, "job": job.state_dict(),
                                               "torch_rng": torch.get_rng_state(),
                                               "seconds": time.perf_counter() - t0})
        last_save = time.monotonic()
        writer.log(f"checkpoint at iteration {done}")

    bar = progress(start, total, desc=desc, enabled=exec_cfg.progress and dist.is_main)
    for it in bar:
        metrics = job.step(it)
        loss = metrics.get("loss", 0.0)
        if not math.isfinite(loss):
            kept = checkpoint_files(ckpt_dir)
            where = (f"the last good checkpoint (iteration {kept[0][0]}) is kept in {ckpt_dir}" if kept
                     else "no checkpoint had been written yet")
            msg = f"non-finite loss ({loss}) at iteration {it}; {where}"
            writer.log(msg)
            raise NonFiniteLossError(msg)
        writer.metric({"it": it, **metrics})
        bar.set_postfix(loss=f"{loss:.4g}")
        done = it + 1
        if after_step is not None:  # quick evals: not counted as distillation time
            spent = time.perf_counter()
            after_step(done)
            t0 += time.perf_counter() - spent
        stop = dist.any(should_stop is not None and should_stop())  # a signal seen by any rank
        due = done % exec_cfg.checkpoint_every == 0 or (
            time.monotonic() - last_save >= 60 * exec_cfg.checkpoint_minutes)
        if (stop or due) and done < total:
            checkpoint(done)
        if stop and done < total:
            writer.log(f"stopping after iteration {done} (preemption/timeout)")
            raise Interrupted(done)
    return time.perf_counter() - t0, start


def _restore(job: Steppable, state: dict[str, Any]) -> None:
    job.load_state_dict(state["job"])
    torch.set_rng_state(state["torch_rng"])


__all__ = ["Steppable", "run_steps", "truncate_metrics"]
