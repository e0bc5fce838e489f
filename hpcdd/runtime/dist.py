"""Several processes on one job: how it was launched, the process group, and the few collectives
the step loop, the methods, the writer and the evaluation use.

Three launches run the same code unchanged (README "Multi-process runs"):

* ``torchrun`` and ``accelerate launch``: ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ... are
  already set; used as they are.
* a Slurm job step with several tasks (``srun``, or submitit with ``tasks_per_node > 1``):
  ``SLURM_STEP_NUM_TASKS > 1`` and no ``RANK``: ``submitit.helpers.TorchDistributedEnvironment``
  exports them (once: a second call finds ``RANK`` set and leaves it).
* anything else: one process, world size 1. No process group is made and no collective is ever
  called, so one process runs exactly the code (and gets exactly the results) it always did.

Then the ``Accelerator`` is built with a process group (NCCL on GPU, gloo on CPU) whose timeout is
the exec setting ``dist_timeout_s``. :class:`Dist` wraps the collectives: a lost or silent peer
turns into one ``PeerLost`` line instead of a traceback or a hang.
"""

from __future__ import annotations

import dataclasses
import os
from datetime import timedelta
from typing import Any, Callable, Mapping, MutableMapping, Sequence, TypeVar

from hpcdd import errors
from hpcdd.errors import ConfigError, HpcddError

T = TypeVar("T")
LAUNCHES = ("single", "torchrun", "slurm")


class PeerLost(HpcddError):
    """A collective failed: another rank died, or did not answer within the timeout."""


def _int(env: Mapping[str, str], key: str, default: int = 0) -> int:
    try:
        return int(env.get(key, default))
    except ValueError:
        raise ConfigError(f"{key}={env.get(key)!r} is not an integer") from None


def launch_kind(env: Mapping[str, str] = os.environ) -> str:
    """``torchrun`` (RANK/WORLD_SIZE set: torchrun, accelerate launch, or an earlier export),
    ``slurm`` (a Slurm step of several tasks), else ``single``."""
    if "RANK" in env or "WORLD_SIZE" in env:
        return "torchrun"
    if env.get("SLURM_JOB_ID") and _int(env, "SLURM_STEP_NUM_TASKS", 1) > 1:
        return "slurm"
    return "single"


def export_environment(env: MutableMapping[str, str] = os.environ) -> str:
    """Make the environment ``env://`` initialisation needs, then check it; returns the launch kind.

    Under Slurm (several tasks in the step) submitit's ``TorchDistributedEnvironment`` exports
    ``MASTER_ADDR``, ``MASTER_PORT``, ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``; it leaves
    ``CUDA_VISIBLE_DEVICES`` alone (Accelerate takes GPU ``LOCAL_RANK`` of those the task sees).
    A world size above one without ``MASTER_ADDR``/``MASTER_PORT``/``RANK`` is a ``ConfigError``.
    """
    kind = launch_kind(env)
    if kind == "slurm":
        from submitit.helpers import TorchDistributedEnvironment

        env.setdefault("SUBMITIT_EXECUTOR", "slurm")  # a plain srun step: submitit's jobs set it
        TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    world = _int(env, "WORLD_SIZE", 1)
    if world > 1:
        missing = [k for k in ("MASTER_ADDR", "MASTER_PORT", "RANK") if not env.get(k)]
        if missing:
            raise ConfigError(f"WORLD_SIZE={world} but {', '.join(missing)} not set: start the processes "
                              "with torchrun, accelerate launch or srun (README 'Multi-process runs')")
        rank = _int(env, "RANK")
        if not 0 <= rank < world:
            raise ConfigError(f"RANK={rank} is outside WORLD_SIZE={world}")
    elif world < 1:
        raise ConfigError(f"WORLD_SIZE must be >= 1, got {world}")
    return kind


def accelerator_kwargs(timeout_s: float, cuda: bool) -> dict[str, Any]:
    """The keyword arguments of ``Accelerator``: on CPU ``cpu=True`` (gloo), on GPU NCCL; the
    process group's timeout is ``timeout_s``."""
    from accelerate.utils import InitProcessGroupKwargs

    group = InitProcessGroupKwargs(backend="nccl" if cuda else "gloo", timeout=timedelta(seconds=timeout_s))
    return {"cpu": not cuda, "kwargs_handlers": [group]}


@dataclasses.dataclass(frozen=True)
class Dist:
    """This process's place among the job's processes, and the collectives (all no-ops, calling
    nothing, in a world of one)."""

    rank: int = 0
    """This process's global rank (0 is the main process: it alone writes files)."""
    world: int = 1
    """Number of processes."""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def several(self) -> bool:
        return self.world > 1

    def shard(self, n: int, what: str) -> range:
        """This rank's contiguous block of ``n`` items (``what``: e.g. 'classes of digits'); a world
        size that does not divide ``n`` is a ``ConfigError``."""
        if n % self.world:
            raise ConfigError(f"{self.world} processes cannot share {n} {what} evenly; "
                              f"use a number of processes that divides {n}")
        size = n // self.world
        return range(self.rank * size, (self.rank + 1) * size)

    # -- collectives -----------------------------------------------------------------------------
    def _call(self, what: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except RuntimeError as e:  # torch.distributed.DistBackendError and gloo/NCCL errors
            first = (str(e).strip().splitlines() or [""])[0][:200]
            raise PeerLost(f"rank {self.rank} of {self.world}: {what} failed: another process died or did not "
                           f"answer within the process group's timeout (exec dist_timeout_s): {first}") from None

    def sum_(self, tensor: Any) -> Any:
        """All-reduce ``tensor`` in place (sum over ranks); returns it."""
        if self.several:
            import torch.distributed as td

            self._call("all_reduce", lambda: td.all_reduce(tensor))
        return tensor

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` is true on any rank (every rank gets the same answer)."""
        if not self.several:
            return flag
        import torch

        t = torch.tensor([1.0 if flag else 0.0], device=self.device())
        return bool(self.sum_(t).item() > 0)

    def gather(self, obj: T) -> list[T]:
        """Every rank's ``obj`` (picklable), in rank order, on every rank."""
        if not self.several:
            return [obj]
        import torch.distributed as td

        out: list[Any] = [None] * self.world
        self._call("all_gather_object", lambda: td.all_gather_object(out, obj))
        return out

    def from_main(self, obj: T) -> T:
        """Rank 0's ``obj`` on every rank."""
        if not self.several:
            return obj
        import torch.distributed as td

        box = [obj if self.is_main else None]
        self._call("broadcast_object_list", lambda: td.broadcast_object_list(box, src=0))
        return box[0]

    def main_first(self, work: Callable[[], None]) -> None:
        """Rank 0 runs ``work`` while the other ranks wait; an ``HpcddError`` it raises is raised on
        every rank (same class and message), so no rank is left waiting for one that gave up."""
        if not self.several:
            work()
            return
        failure: tuple[str, str] | None = None
        if self.is_main:
            try:
                work()
            except HpcddError as e:
                failure = (type(e).__name__, str(e))
                self.from_main(failure)
                raise
        failure = self.from_main(failure)
        if failure is not None and not self.is_main:
            cls = getattr(errors, failure[0], None)
            raise (cls if isinstance(cls, type) and issubclass(cls, HpcddError) else HpcddError)(failure[1])

    def device(self) -> Any:
        """Where this rank's collective tensors live: its GPU under NCCL, else the CPU."""
        import torch
        import torch.distributed as td

        return torch.device("cuda", torch.cuda.current_device()) if td.get_backend() == "nccl" else torch.device("cpu")


def main_process(env: Mapping[str, str] = os.environ) -> bool:
    """Whether this is rank 0 of its job (or a job of one): the process that prints results."""
    return env.get("RANK", "0") in ("", "0")


def prints_error(error: Exception, env: Mapping[str, str] = os.environ) -> bool:
    """Whether this process prints the one-line ``error``: rank 0 (or a single process) always; the
    others only a ``PeerLost`` of their own (any other error is raised alike on every rank)."""
    return isinstance(error, PeerLost) or main_process(env)


SINGLE = Dist()
"""World size one."""


def dist_of(accelerator: Any) -> Dist:
    """The :class:`Dist` of a (real or test-double) accelerator; world size one when it has none."""
    world = int(getattr(accelerator, "num_processes", 1) or 1)
    return SINGLE if world == 1 else Dist(int(accelerator.process_index), world)


def shard_of(dist: Dist, items: Sequence[T]) -> list[T]:
    """Round-robin share of ``items`` for this rank (uneven allowed: evaluation models)."""
    return list(items[dist.rank :: dist.world])


__all__ = ["Dist", "SINGLE", "PeerLost", "LAUNCHES", "launch_kind", "export_environment", "accelerator_kwargs",
           "dist_of", "shard_of", "prints_error", "main_process"]
