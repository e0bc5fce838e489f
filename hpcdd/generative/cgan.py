"""``cgan``: the stage-1 generator as it is (no matching), so tables show what stage 2 adds.

The run takes zero iterations: it loads the shared pretraining (the same prerequisite as ``dim``
and ``global_local`` with the same ``gan_*`` values) and saves its generator as the artefact.
"""

from __future__ import annotations

from typing import Any

from hpcdd.artefact import Source, SyntheticSet
from hpcdd.distill.base import Distiller
from hpcdd.generative.gan import generator_source, load_gan
from hpcdd.seeding import generator


class CganDistiller(Distiller):
    """``cgan`` (parameters: :class:`hpcdd.specs.generative.GanParams`)."""

    def __init__(self, cfg, data, accelerator, sampler, artefacts=None) -> None:
        super().__init__(cfg, data, accelerator, sampler, artefacts)
        self.gan_cfg, _, self.G, _, _, _ = load_gan(self.artefacts["gan"], self.device)

    def step(self, it: int) -> dict[str, float]:
        raise RuntimeError("cgan takes no steps (iterations are 0)")

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def source(self) -> Source:
        return generator_source(self.G, self.gan_cfg, self.data.info)

    def synthetic(self, ipc: int | None = None) -> SyntheticSet:
        return self.source().sample(ipc or 10, generator(self.cfg.seed, "cgan-synthetic"))
