"""Samplers pick the real images a matching method compares against at each step.

A sampler is handed to the Distiller (``method=dm, sampler=random`` is one config). It owns a
``torch.Generator`` derived from the run seed, whose state is checkpointed with the run.
A representative sampler (DREAM) gets the current matching net through ``net`` and runs it at
the run's ``precision``. Samplers are declared (name, parameters) in
:mod:`hpcdd.specs.samplers`; :func:`build_sampler` makes the one a resolved config names.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Sequence

import torch
from torch import nn

from hpcdd.config import RunConfig, from_dict
from hpcdd.data import ClassBank
from hpcdd.seeding import generator
from hpcdd.specs import SAMPLERS, load_impl


class Sampler(ABC):
    """Chooses indices of real training images of one class. Constructed as
    ``Sampler(bank, seed, params, precision)`` (:func:`build_sampler`)."""

    def __init__(self, bank: ClassBank, seed: int, params: Any = None, precision: str = "fp32") -> None:
        self.bank = bank
        self.params = params
        self.precision = precision
        """The run's precision ('fp32' or 'bf16'), for any forward pass the sampler runs."""
        self.generator = generator(seed, "sampler")

    @abstractmethod
    def indices(self, c: int, n: int, net: nn.Module | None = None) -> torch.Tensor:
        """Up to ``n`` indices of class ``c`` (all of them if the class is smaller)."""

    def batch_indices(self, classes: Sequence[int], n: int, net: nn.Module | None = None) -> list[torch.Tensor]:
        """``indices(c, n, net)`` for every class of one matching step, in order. A sampler that
        can work on all classes at once (DREAM's batched k-means) overrides this."""
        return [self.indices(c, n, net) for c in classes]

    def shard(self, dist: Any, classes: Sequence[int]) -> None:
        """Several processes whose distiller matches only ``classes`` on this rank: a sampler that
        does per-class work (DREAM's clustering) may do only these classes' and share the result
        through ``dist`` (:class:`hpcdd.runtime.dist.Dist`), so that ``batch_indices`` still
        returns every class and the state stays complete. Random draws need nothing: every rank
        draws every class, as one process does."""

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])

    def info(self) -> dict[str, Any]:
        """What the run should record about how it sampled (written to result rows)."""
        return {}

    def seconds(self) -> float:
        """Seconds spent choosing samples beyond drawing indices (DREAM: embedding, k-means)."""
        return 0.0


class RandomSampler(Sampler):
    """Uniform sampling without replacement inside the class (what DC/DSA/DM do)."""

    def indices(self, c: int, n: int, net: nn.Module | None = None) -> torch.Tensor:
        return self.bank.sample(c, n, self.generator)


def build_sampler(cfg: RunConfig, bank: ClassBank) -> Sampler:
    """The sampler a resolved config names, with its parameters, the run's seed and precision."""
    spec = SAMPLERS.get(cfg.sampler)
    params = from_dict(spec.params, cfg.sampler_params, where=f"sampler {cfg.sampler} parameters")
    return load_impl(spec.impl)(bank, cfg.seed, params, precision=cfg.precision)
