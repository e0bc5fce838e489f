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
from torch import nn

from hpcdd.artefact import ImageSource, Source, SyntheticSet
from hpcdd.augment import DSA
from hpcdd.config import RunConfig, from_dict
from hpcdd.data import ClassBank
from hpcdd.distill.common import class_labels, initial_images
from hpcdd.nets.embed import REAL_CHUNK, has_batchnorm
from hpcdd.runtime.dist import dist_of
from hpcdd.seeding import fresh_net
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
    optimizer's.

    :meth:`setup_images` and :meth:`batches` are the set-up and the per-class siamese batches that
    DM, DC and DSA share; a subclass calls ``setup_images()`` in its ``__init__`` (or builds the
    three attributes itself).

    Several processes: each rank matches its block of ``classes`` (:meth:`Dist.shard`) and the
    image gradient and the loss are summed over ranks (:meth:`shared`), so every rank takes the
    same step on the same full image set. Each rank draws every class's sampler indices and
    augmentation, as one process does, but loads and uses only its own classes' images. A net
    with BatchNorm mixes the classes in its batch statistics, so there every rank matches all the
    classes (replicated, no gradient sum). One process: ``classes`` is every class, no sum.
    """

    images: torch.Tensor
    labels: torch.Tensor
    optimizer: torch.optim.Optimizer
    num_classes: int
    dsa: DSA | None = None
    real_chunk: int = REAL_CHUNK
    """Real images per no-grad/no-graph forward chunk (:data:`hpcdd.nets.embed.REAL_CHUNK`)."""

    def setup_images(self) -> None:
        """``cfg.ipc`` images per class from ``params.init`` (class-major) and their labels, SGD on
        the pixels (``params.lr_img``, ``params.momentum_img``), and the DSA augmentation when
        ``cfg.dsa`` is on."""
        cfg, p = self.cfg, self.params
        self.num_classes = self.data.info.num_classes
        init = initial_images(self.data, cfg, p.init, self.device)
        self.images = init.to(self.device).requires_grad_(True)
        self.labels = class_labels(self.num_classes, cfg.ipc)
        self.optimizer = torch.optim.SGD([self.images], lr=p.lr_img, momentum=p.momentum_img)
        self.dsa = DSA(cfg.dsa_strategy) if cfg.dsa else None
        self.dist = dist_of(self.accelerator)
        self.sharded = self.dist.several and not has_batchnorm(fresh_net(cfg.net, self.data.info, cfg.seed, "probe"))
        self.classes = (self.dist.shard(self.num_classes, f"classes of {cfg.dataset}") if self.sharded
                        else range(self.num_classes))
        """The classes this process matches (all of them in one process)."""
        if self.sharded:
            self.sampler.shard(self.dist, self.classes)

    def batches(self, net: nn.Module, gen: torch.Generator) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per class of ``self.classes``: the real batch the sampler picks for ``net``
        (``cfg.batch_real`` images, all classes in one ``batch_indices`` call) and the class's
        synthetic images, with one siamese DSA draw from ``gen`` per class applied to both when DSA
        is on. Indices and draws are made for every class, in order, whichever are kept."""
        cfg, ipc = self.cfg, self.cfg.ipc
        chosen = self.sampler.batch_indices(range(self.num_classes), cfg.batch_real, net=net)
        real, syn = [], []
        for c, idx in enumerate(chosen):
            draw = self.dsa.draw(1, gen, batchmode=True, im_size=self.images.shape[-1]) if self.dsa else None
            if c not in self.classes:
                continue
            r = self.data.images(idx).to(self.device)
            s = self.images[c * ipc : (c + 1) * ipc]
            if draw is not None:
                r, s = self.dsa.apply(r, draw), self.dsa.apply(s, draw)
            real.append(r)
            syn.append(s)
        return real, syn

    def shared(self, value: torch.Tensor) -> torch.Tensor:
        """``value`` (this rank's loss or image gradient) summed over the ranks that share the
        classes; ``value`` itself (no copy, no collective) when the classes are not sharded."""
        return self.dist.sum_(value.detach().clone()) if self.sharded else value

    def state_dict(self) -> dict[str, Any]:
        return {"images": self.images.detach().cpu().clone(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            self.images.copy_(state["images"].to(self.device))
        self.optimizer.load_state_dict(state["optimizer"])

    def synthetic(self, ipc: int | None = None) -> SyntheticSet:
        return SyntheticSet(self.images.detach().cpu().clone(), self.labels.clone())


__all__ = ["Distiller", "ImageDistiller", "SyntheticSet"]
