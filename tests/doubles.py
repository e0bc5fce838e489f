"""Test-only methods and a test-only prerequisite, registered as a plugin (``HPCDD_PLUGINS=doubles``
with ``tests/`` on ``PYTHONPATH``), so array tasks in subprocesses and on Slurm see them too.

* ``toy_prereq``: a prerequisite that averages each class's images over ``steps`` steps (one
  class per step) and saves the class means; ``fail: true`` makes it raise at its second step.
* ``twostage``: an image method that needs a ``toy_prereq`` (shared by every seed and ipc) and
  starts its images from the class means.
* ``toygen``: a generator method (a tiny class-conditional linear generator), for the generator
  source and the ``resample`` evaluation kind.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hpcdd.config import RunConfig, check_config
from hpcdd.distill.base import Distiller
from hpcdd.errors import ConfigError
from hpcdd.generative.source import GeneratorSource
from hpcdd.io import atomic_torch_save, try_torch_load
from hpcdd.nets.base import init_weights
from hpcdd.prereq import PrereqJob
from hpcdd.seeding import generator
from hpcdd.artefact import SyntheticSet
from hpcdd.specs import METHODS, PREREQS, MethodSpec, PrereqRef, PrereqSpec
from hpcdd.specs.base import register_method, register_prereq


@dataclass(frozen=True)
class ToyPrereqConfig:
    dataset: str = "digits"
    """Dataset whose class means are computed."""
    steps: int = 3
    """Steps the job takes (it checkpoints between them)."""
    fail: bool = False
    """Raise at the second step (a failing prerequisite)."""

    def __post_init__(self) -> None:
        check_config(self)
        if self.steps < 1:
            raise ConfigError("steps must be >= 1")


class ToyPrereq(PrereqJob):
    def __init__(self, config: ToyPrereqConfig, accelerator: Any, exec_cfg: Any) -> None:
        super().__init__(config, accelerator, exec_cfg)
        from hpcdd.data import load_dataset

        self.data = load_dataset(config.dataset, root=exec_cfg.data_root).train
        self.sums = torch.zeros(self.data.info.num_classes, self.data.info.channels, self.data.info.im_size,
                                self.data.info.im_size)

    @property
    def total_steps(self) -> int:
        return self.config.steps

    def step(self, it: int) -> dict[str, float]:
        if self.config.fail and it == 1:
            raise RuntimeError("toy prerequisite failed on purpose")
        for c in range(it, self.data.info.num_classes, self.config.steps):
            self.sums[c] = self.data.images(self.data.class_indices[c]).mean(0)
        return {"loss": float(it)}

    def state_dict(self) -> dict[str, Any]:
        return {"sums": self.sums.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sums = state["sums"].clone()

    def save(self, out_dir: Path) -> None:
        atomic_torch_save(out_dir / "means.pt", {"means": self.sums})


@dataclass(frozen=True)
class TwoStageParams:
    prereq_steps: int = 3
    """Steps of the toy prerequisite."""
    prereq_fail: bool = False
    """Make the prerequisite fail."""
    toy_step: float = 0.1
    """Pull of each step towards a real batch's mean."""

    def __post_init__(self) -> None:
        check_config(self)


def _twostage_prereqs(cfg: RunConfig) -> list[PrereqRef]:
    p = cfg.params
    return [PrereqRef("toy_prereq", ToyPrereqConfig(cfg.dataset, p["prereq_steps"], p["prereq_fail"]), role="toy")]


class TwoStage(Distiller):
    def __init__(self, cfg, data, accelerator, sampler, artefacts=None) -> None:
        super().__init__(cfg, data, accelerator, sampler, artefacts)
        means = try_torch_load(self.artefacts["toy"] / "means.pt")["means"]
        noise = torch.randn((means.shape[0], cfg.ipc, *means.shape[1:]), generator=generator(cfg.seed, "toy"))
        self.images = (means[:, None] + 0.1 * noise).flatten(0, 1)
        self.labels = torch.arange(means.shape[0]).repeat_interleave(cfg.ipc)

    def step(self, it: int) -> dict[str, float]:
        loss = 0.0
        for c in range(self.data.info.num_classes):
            target = self.data.images(self.sampler.indices(c, self.cfg.batch_real)).mean(0)
            sl = slice(c * self.cfg.ipc, (c + 1) * self.cfg.ipc)
            loss += float(((self.images[sl] - target) ** 2).mean())
            self.images[sl] += self.params.toy_step * (target - self.images[sl])
        return {"loss": loss}

    def state_dict(self) -> dict[str, Any]:
        return {"images": self.images.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.images = state["images"].clone()

    def synthetic(self, ipc: int | None = None) -> SyntheticSet:
        return SyntheticSet(self.images.clone(), self.labels.clone())


class ToyGenerator(nn.Module):
    def __init__(self, num_classes: int, channels: int, im_size: int, nz: int = 8) -> None:
        super().__init__()
        self.shape = (channels, im_size, im_size)
        self.embed = nn.Linear(num_classes, nz)
        self.out = nn.Linear(nz, channels * im_size * im_size)
        self.num_classes = num_classes

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        h = z + self.embed(nn.functional.one_hot(labels, self.num_classes).float())
        return torch.tanh(self.out(h)).view(len(z), *self.shape)


@dataclass(frozen=True)
class ToyGenParams:
    toy_lr: float = 0.01
    """Adam learning rate of the toy generator (a name no real method uses: plugins stay registered)."""

    def __post_init__(self) -> None:
        check_config(self)


class ToyGen(Distiller):
    """Fits the toy generator's outputs to real images of each class (MSE to a real batch)."""

    def __init__(self, cfg, data, accelerator, sampler, artefacts=None) -> None:
        super().__init__(cfg, data, accelerator, sampler, artefacts)
        info = data.info
        self.kwargs = {"num_classes": info.num_classes, "channels": info.channels, "im_size": info.im_size}
        self.net = ToyGenerator(**self.kwargs)
        init_weights(self.net, generator(cfg.seed, "toygen-init"))
        self.opt = torch.optim.Adam(self.net.parameters(), lr=self.params.toy_lr)
        self.gen = generator(cfg.seed, "toygen")

    def step(self, it: int) -> dict[str, float]:
        labels = torch.arange(self.data.info.num_classes).repeat_interleave(4)
        real = torch.cat([self.data.images(self.sampler.indices(c, 4)) for c in range(self.data.info.num_classes)])
        z = torch.randn(len(labels), 8, generator=self.gen)
        x = (self.net(z, labels) + 1) / 2
        loss = ((x - real.clamp(0, 1)) ** 2).mean()
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return {"loss": loss.item()}

    def state_dict(self) -> dict[str, Any]:
        return {"net": self.net.state_dict(), "opt": self.opt.state_dict(), "gen": self.gen.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
        self.opt.load_state_dict(state["opt"])
        self.gen.set_state(state["gen"])

    def source(self) -> GeneratorSource:
        info = self.data.info
        return GeneratorSource(self.net, self.kwargs, info.num_classes, 8, info.mean, info.std)  # arch doubles:ToyGenerator

    def synthetic(self, ipc: int | None = None) -> SyntheticSet:
        return self.source().sample(ipc or 1, generator(self.cfg.seed, "toygen-synthetic"))


if "toy_prereq" not in PREREQS:  # imported once per process, but be safe under reloads
    register_prereq(PrereqSpec("toy_prereq", "doubles:ToyPrereq", "class means (test double)", ToyPrereqConfig))
    register_method(MethodSpec("twostage", "doubles:TwoStage", "needs a toy_prereq (test double)",
                               params=TwoStageParams, defaults={"iterations": 4},
                               prerequisites=_twostage_prereqs))
    register_method(MethodSpec("toygen", "doubles:ToyGen", "a toy generator (test double)", params=ToyGenParams,
                               defaults={"iterations": 4}, output="generator"))

__all__ = ["ToyPrereq", "TwoStage", "ToyGen", "ToyGenerator", "METHODS"]
