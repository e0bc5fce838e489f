"""Samplers pick the real images a matching method compares against at each step.

A sampler is handed to the Distiller (``method=dm, sampler=random`` is one config). It owns a
``torch.Generator`` derived from the run seed, whose state is checkpointed with the run.
A representative sampler (DREAM) gets the current matching net through ``net``. Samplers are
declared (name, parameters) in :mod:`hpcdd.specs.samplers`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Sequence

import torch
from torch import nn

from hpcdd.data import ClassBank
from hpcdd.seeding import generator


class Sampler(ABC):
    """Chooses indices of real training images of one class."""

    def __init__(self, bank: ClassBank, seed: int, params: Any = None) -> None:
        self.bank = bank
        self.params = params
        self.generator = generator(seed, "sampler")

    @abstractmethod
    def indices(self, c: int, n: int, net: nn.Module | None = None) -> torch.Tensor:
        """Up to ``n`` indices of class ``c`` (all of them if the class is smaller)."""

    def batch_indices(self, classes: Sequence[int], n: int, net: nn.Module | None = None) -> list[torch.Tensor]:
        """``indices(c, n, net)`` for every class of one matching step, in order. A sampler that
        can work on all classes at once (DREAM's batched k-means) overrides this."""
        return [self.indices(c, n, net) for c in classes]

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])

    def info(self) -> dict[str, Any]:
        """What the run should record about how it sampled (written to result rows)."""
        return {}


class RandomSampler(Sampler):
    """Uniform sampling without replacement inside the class (what DC/DSA/DM do)."""

    def indices(self, c: int, n: int, net: nn.Module | None = None) -> torch.Tensor:
        return self.bank.sample(c, n, self.generator)
