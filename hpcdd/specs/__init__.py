"""What each method, sampler and prerequisite is (torch-free); one registration line each.

See :mod:`hpcdd.specs.base`. Implementations live in :mod:`hpcdd.distill`, :mod:`hpcdd.select`
and are imported only when something runs.
"""

from hpcdd.specs import coreset, dc, dm, samplers  # noqa: F401  (registration lines)
from hpcdd.specs import generative  # noqa: F401
from hpcdd.specs import mtt  # noqa: F401
from hpcdd.specs.base import (
    METHODS, PREREQS, SAMPLERS, MethodSpec, NoParams, PrereqRef, PrereqSpec, SamplerSpec,
    load_impl,
)

__all__ = ["METHODS", "SAMPLERS", "PREREQS", "MethodSpec", "SamplerSpec", "PrereqSpec",
           "PrereqRef", "NoParams", "load_impl"]
