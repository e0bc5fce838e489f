"""Device and process setup through Accelerate (one process by default)."""

from __future__ import annotations

import os

import torch


def make_accelerator(deterministic: bool = True):
    """An ``accelerate.Accelerator`` for this process, with deterministic kernels if asked."""
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=torch.cuda.is_available())
    else:
        torch.use_deterministic_algorithms(False)
    from accelerate import Accelerator

    return Accelerator()


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process: CUDA allocator peak on GPU, max RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
