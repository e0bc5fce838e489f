"""The Distiller protocol: the one seam that run.py, the sweep layer and the evaluator rely on.

A method computes; ``run.py`` alone logs, checkpoints and evaluates.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from hpcdd.config import RunConfig
from hpcdd.data import ClassBank
from hpcdd.registry import Registry


@dataclass
class SyntheticSet:
    """Distilled images (normalised like the real data) and their integer labels."""

    images: torch.Tensor
    labels: torch.Tensor

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"images": self.images.detach().cpu(), "labels": self.labels.cpu()}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> "SyntheticSet":
        return cls(images=state["images"], labels=state["labels"])


class Distiller(ABC):
    """One distillation method. Subclasses register with ``@METHODS.register(name)``."""

    defaults: ClassVar[dict[str, Any]] = {}
    """Paper defaults filled into RunConfig fields that are None (e.g. iterations, lr_img)."""
    fixed: ClassVar[dict[str, Any]] = {}
    """RunConfig fields this method always resolves to (e.g. iterations=0 for coresets)."""

    def __init__(self, cfg: RunConfig, data: ClassBank, accelerator: Any, sampler: Any) -> None:
        self.cfg = cfg
        self.data = data
        self.accelerator = accelerator
        self.sampler = sampler

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @abstractmethod
    def step(self, it: int) -> dict[str, float]:
        """One outer iteration; returns metrics (at least ``loss`` for iterative methods)."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume (tensors and plain Python values only)."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""

    @abstractmethod
    def synthetic(self, ipc: int | None = None) -> SyntheticSet:
        """The distilled set (a generator method may sample ``ipc`` images per class)."""


METHODS: Registry[type[Distiller]] = Registry("method")
