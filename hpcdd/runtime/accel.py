"""Device and process setup through Accelerate (one process unless launched with several, see
:mod:`hpcdd.runtime.dist`)."""

from __future__ import annotations

import os

import torch

from hpcdd.runtime.dist import accelerator_kwargs, export_environment

DIST_TIMEOUT_S = 1800.0
"""Default process-group timeout (exec ``dist_timeout_s``; gloo's default in Accelerate)."""


def make_accelerator(deterministic: bool = True, timeout_s: float = DIST_TIMEOUT_S, threads: int | None = None):
    """An ``accelerate.Accelerator`` for this process, with deterministic kernels if asked.

    The launch (torchrun, accelerate launch, a Slurm step of several tasks, or one process) is
    recognised first; with several processes the Accelerator makes the process group (NCCL on GPU,
    gloo on CPU, timeout ``timeout_s``), and ``threads`` (the exec or Slurm setting, if any) is
    kept over Accelerate's default split of the cores. One process builds a plain ``Accelerator()``.
    """
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=torch.cuda.is_available())
    else:
        torch.use_deterministic_algorithms(False)
    from accelerate import Accelerator

    export_environment()
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return Accelerator()
    accelerator = Accelerator(**accelerator_kwargs(timeout_s, torch.cuda.is_available()))
    if threads is not None:
        torch.set_num_threads(threads)
    return accelerator


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process: CUDA allocator peak on GPU, max RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
