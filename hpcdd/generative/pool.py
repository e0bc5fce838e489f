"""Stage 2's pool model (DiM's ``define_model`` / ``train_match_model``): one model drawn from the
pool for every ``steps_per_model`` generator steps (DiM: per epoch), freshly initialised, and
trained with SGD (lr 0.01, momentum 0.9, weight decay 5e-4) on ``warmup`` random real batches
before every generator step, each batch augmented per sample by ``aug`` (DiM: colour and crop
together, DiffAug's ``batch=False``).

Its forwards for the matching terms are :func:`logits_and_features` (the caller's, under
:func:`hpcdd.generative.losses.frozen`). Nothing here knows about processes or ranks.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from hpcdd.augment import DSA
from hpcdd.seeding import fresh_net, generator

POOL_MOMENTUM, POOL_WEIGHT_DECAY = 0.9, 5e-4


def logits_and_features(net: torch.nn.Module, x: torch.Tensor, layer: str | None) -> tuple[torch.Tensor, Any]:
    """One forward through a staged net: the logits and the activation of ``layer`` (or None)."""
    feat = None
    h = x
    for name, stage in net.body.named_children():
        h = stage(h)
        if name == layer:
            feat = h
    return net.classifier(h.flatten(1)), feat


class PoolModel:
    """The current pool model of a stage-2 run, its optimiser, and the draws that pick and train it."""

    def __init__(self, pool: tuple[str, ...], data: Any, *, seed: int, device: torch.device, lr: float,
                 warmup: int, batch: int, aug: str, steps_per_model: int) -> None:
        self.pool, self.data, self.info = pool, data, data.info
        self.seed, self.device, self.lr = seed, device, lr
        self.warmup, self.batch, self.steps_per_model = warmup, batch, steps_per_model
        self.aug = DSA(aug, chain=True)
        self.gen = generator(seed, "pool-train")
        self.net: torch.nn.Module | None = None
        self.arch = ""
        self.epoch = -1
        self.opt: torch.optim.Optimizer | None = None

    def current(self, it: int) -> torch.nn.Module:
        """The model for generator step ``it`` (a fresh one at each new pool epoch)."""
        epoch = it // self.steps_per_model
        if self.net is None or epoch != self.epoch:
            pick = int(torch.randint(len(self.pool), (1,), generator=generator(self.seed, f"pool-{epoch}")))
            self._new(self.pool[pick], epoch)
        return self.net

    def _new(self, arch: str, epoch: int) -> None:
        self.arch, self.epoch = arch, epoch
        self.net = fresh_net(arch, self.info, self.seed, f"pool-net-{epoch}", self.device)
        self.opt = torch.optim.SGD(self.net.parameters(), lr=self.lr, momentum=POOL_MOMENTUM,
                                   weight_decay=POOL_WEIGHT_DECAY)

    def train(self) -> None:
        """``warmup`` SGD steps of the current model on random real batches (augmented per sample)."""
        net = self.net
        net.train()
        for _ in range(self.warmup):
            idx = torch.randint(len(self.data), (self.batch,), generator=self.gen)
            x = self.aug(self.data.images(idx).to(self.device), self.gen, batchmode=False)
            loss = F.cross_entropy(net(x), self.data.labels[idx].to(self.device))
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"epoch": self.epoch, "arch": self.arch, "gen": self.gen.get_state()}
        if self.net is not None:
            state["net"] = self.net.state_dict()
            state["opt"] = self.opt.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.gen.set_state(state["gen"])
        self.net = None
        if "net" in state:
            self._new(state["arch"], int(state["epoch"]))
            self.net.load_state_dict(state["net"])
            self.opt.load_state_dict(state["opt"])


__all__ = ["PoolModel", "logits_and_features"]
