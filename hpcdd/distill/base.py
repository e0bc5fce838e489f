"""The Distiller protocol: the one seam that run.py, the sweep layer and the evaluator rely on.

A method computes; ``run.py`` alone logs, checkpoints and evaluates. What a method is (its
parameters, prerequisites, output kind) is declared torch-free in :mod:`hpcdd.specs`; this is the
implementation side, imported only when something runs (``specs.load_impl(spec.impl)``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Mapping

import torch

from hpcdd.artefact import ImageSource, Source, SyntheticSet
from hpcdd.config import RunConfig, from_dict
from hpcdd.data import ClassBank
from hpcdd.specs import METHODS


class Distiller(ABC):
    """One distillation method, built from a resolved ``RunConfig``.

    ``self.params`` is the method's parameter dataclass (``cfg.params`` as declared in its spec);
    ``artefacts`` maps each prerequisite's role to its finished artefact dir.
    """

    def __init__(self, cfg: RunConfig, data: ClassBank, accelerator: Any, sampler: Any,
                 artefacts: Mapping[str, Path] | None = None) -> None:
        self.cfg = cfg
        self.data = data
        self.accelerator = accelerator
        self.sampler = sampler
        self.artefacts = dict(artefacts or {})
        self.params = from_dict(METHODS.get(cfg.method).params, cfg.params,
                                where=f"method {cfg.method} parameters")

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
        """The distilled images (a generator method samples ``ipc`` per class, seeded)."""

    def source(self) -> Source:
        """The artefact saved and evaluated: by default the fixed image set."""
        return ImageSource(self.synthetic())

    def info(self) -> dict[str, Any]:
        """Plain values about the finished distillation for ``done.json`` and the result row
        (columns ``distill_<key>``), e.g. where its time went. Empty by default."""
        return {}


class ImageDistiller(Distiller):
    """A method that optimises a fixed image set ``self.images`` (labels ``self.labels``) with
    ``self.optimizer``: its checkpoint state and its synthetic set are those two tensors' and the
    optimizer's."""

    images: torch.Tensor
    labels: torch.Tensor
    optimizer: torch.optim.Optimizer

    def state_dict(self) -> dict[str, Any]:
        return {"images": self.images.detach().cpu().clone(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            self.images.copy_(state["images"].to(self.device))
        self.optimizer.load_state_dict(state["optimizer"])

    def synthetic(self, ipc: int | None = None) -> SyntheticSet:
        return SyntheticSet(self.images.detach().cpu().clone(), self.labels.clone())


__all__ = ["Distiller", "ImageDistiller", "SyntheticSet"]
