"""Coreset baselines: random, herding and k-center selection of real images.

Herding and k-center work on ``embed()`` features of a randomly initialised ``cfg.net``
(ConvNet3 by default) seeded from the run seed. (Random conv features are the premise of DM;
a trained feature extractor would cost a full training run on CPU.) Selection happens once
in ``__init__``; these methods take no iterations (``iterations`` resolves to 0).
"""

from __future__ import annotations

from typing import Any

import torch

from hpcdd.distill.base import Distiller, SyntheticSet
from hpcdd.nets.embed import embed_nograd
from hpcdd.seeding import fresh_net, generator


class Coreset(Distiller):
    """Selects ``ipc`` real images per class once; ``step`` is never called."""

    def __init__(self, cfg, data, accelerator, sampler, artefacts=None) -> None:
        super().__init__(cfg, data, accelerator, sampler, artefacts)
        gen = generator(cfg.seed, f"coreset-{type(self).__name__}")
        self._net = None
        chosen = [self.select(c, gen) for c in range(data.info.num_classes)]
        self.indices = torch.cat(chosen)

    def select(self, c: int, gen: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def class_features(self, c: int) -> torch.Tensor:
        """``embed()`` features of every training image of class ``c``."""
        if self._net is None:
            self._net = fresh_net(self.cfg.net, self.data.info, self.cfg.seed, "coreset-net", self.device)
            self._net.eval()  # eval mode: BatchNorm must not use per-chunk statistics
        x = self.data.images(self.data.class_indices[c]).to(self.device)
        return embed_nograd(self._net, x, 256, self.cfg.precision).cpu()

    def step(self, it: int) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {"indices": self.indices.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.indices = state["indices"].clone()

    def synthetic(self, ipc: int | None = None) -> SyntheticSet:
        images = self.data.images(self.indices)
        return SyntheticSet(images, self.data.labels[self.indices].clone())


class RandomCoreset(Coreset):
    """``ipc`` real images per class drawn uniformly without replacement."""

    def select(self, c: int, gen: torch.Generator) -> torch.Tensor:
        return self.data.sample(c, self.cfg.ipc, gen)


class HerdingCoreset(Coreset):
    """Greedy herding (Welling 2009): each pick keeps the running mean closest to the class mean."""

    def select(self, c: int, gen: torch.Generator) -> torch.Tensor:
        feats = self.class_features(c)
        return self.data.class_indices[c][herding(feats, self.cfg.ipc)]


class KCenterCoreset(Coreset):
    """Greedy k-center (Sener & Savarese 2018): start at a seeded random point, then repeatedly
    add the point farthest from the chosen set."""

    def select(self, c: int, gen: torch.Generator) -> torch.Tensor:
        feats = self.class_features(c)
        first = int(torch.randint(len(feats), (1,), generator=gen))
        return self.data.class_indices[c][kcenter(feats, self.cfg.ipc, first)]


def herding(feats: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of ``k`` rows of ``feats`` chosen by herding (no repeats)."""
    k = min(k, len(feats))
    mu = feats.mean(0)
    total = torch.zeros_like(mu)
    available = torch.ones(len(feats), dtype=torch.bool)
    picks: list[int] = []
    for t in range(1, k + 1):
        dist = ((mu - (total + feats) / t) ** 2).sum(1)
        dist[~available] = float("inf")
        i = int(dist.argmin())
        picks.append(i)
        available[i] = False
        total += feats[i]
    return torch.tensor(picks, dtype=torch.long)


def kcenter(feats: torch.Tensor, k: int, first: int) -> torch.Tensor:
    """Indices of ``k`` rows chosen by greedy k-center starting from row ``first``."""
    k = min(k, len(feats))
    picks = [first]
    mind = ((feats - feats[first]) ** 2).sum(1)
    for _ in range(k - 1):
        i = int(mind.argmax())
        picks.append(i)
        mind = torch.minimum(mind, ((feats - feats[i]) ** 2).sum(1))
    return torch.tensor(picks, dtype=torch.long)
