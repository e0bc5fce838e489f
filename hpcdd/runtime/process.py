"""Per-process set-up shared by every job kind (run, evaluation, prerequisite): CPU threads and the
allocator, before any tensor work."""

from __future__ import annotations

import os

from hpcdd.runtime.malloc import tune_malloc


def slurm_cpus() -> int | None:
    """``SLURM_CPUS_PER_TASK`` under sbatch/srun, so a plain ``hpcdd run`` uses its allocation."""
    try:
        value = int(os.environ.get("SLURM_CPUS_PER_TASK", ""))
    except ValueError:
        return None
    return value if value > 0 else None


def setup_process(threads: int | None) -> int | None:
    """Tune malloc and set torch's CPU threads: ``threads``, else the Slurm allocation, else torch's
    default (left alone). Returns the thread count set, or None."""
    import torch

    tune_malloc()
    n = threads or slurm_cpus()
    if n is not None:
        torch.set_num_threads(n)
    return n
