"""What a distillation produces: a *source* of training data for evaluation.

* ``ImageSource``: a fixed synthetic set (``synset.pt``), what DC, DSA, DM and the coresets make;
* a generator source (``generator.pt``, see :mod:`hpcdd.distill.generative`) samples ``ipc`` images
  per class from seeded noise, deterministically, so one artefact serves every ipc.

Evaluation, ``hpcdd show`` and ``hpcdd generate`` only use :class:`Source`. Artefact files are
read with ``torch.load(weights_only=True)``: plain tensors and Python values, no pickled code.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar

import torch
from torch import nn

from hpcdd.errors import CheckpointError, HpcddError
from hpcdd.io import try_torch_load
from hpcdd.registry import Registry


@dataclass
class SyntheticSet:
    """Images (normalised like the real data) and their integer labels, class-major."""

    images: torch.Tensor
    labels: torch.Tensor

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"images": self.images.detach().cpu(), "labels": self.labels.cpu()}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> "SyntheticSet":
        return cls(images=state["images"], labels=state["labels"])


class Source(ABC):
    """Training data for evaluation: a fixed set, or a generator that samples one."""

    output: ClassVar[str]
    """The method output kind it serves: 'images' or 'generator'."""

    @abstractmethod
    def sample(self, ipc: int | None, generator: torch.Generator) -> SyntheticSet:
        """``ipc`` images per class (a fixed set returns itself; ``generator`` is unused then)."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """What the artefact file holds (tensors and plain values)."""

    @classmethod
    @abstractmethod
    def from_state_dict(cls, state: dict[str, Any]) -> "Source":
        """Rebuild from ``state_dict()``; raises ``KeyError``/``ValueError`` on a malformed one."""

    def ipcs(self) -> int | None:
        """Images per class of a fixed set; ``None`` for a generator (any ipc)."""
        return None


SOURCES: Registry[type[Source]] = Registry("source kind")


@SOURCES.register("images")
class ImageSource(Source):
    """A fixed synthetic set."""

    output = "images"

    def __init__(self, syn: SyntheticSet) -> None:
        self.syn = syn

    def sample(self, ipc: int | None, generator: torch.Generator) -> SyntheticSet:
        return self.syn

    def state_dict(self) -> dict[str, Any]:
        return self.syn.state_dict()

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> "ImageSource":
        return cls(SyntheticSet.from_state_dict(state))

    def ipcs(self) -> int | None:
        labels = self.syn.labels
        counts = torch.bincount(labels) if labels.numel() else torch.zeros(1, dtype=torch.long)
        return int(counts.max())


GENERATORS: Registry[Callable[..., nn.Module]] = Registry("generator architecture")
"""Generator architectures a generator artefact may name: ``factory(**kwargs) -> module`` whose
``forward(z, labels)`` returns images in [-1, 1]. The artefact stores the name and kwargs, never
code, so loading it calls only registered factories."""


@SOURCES.register("generator")
class GeneratorSource(Source):
    """A class-conditional generator: ``ipc`` images per class from noise drawn from a generator.

    Output images in [-1, 1] are mapped to the dataset's normalisation (``(x + 1) / 2`` then
    ``(x - mean) / std``), so they are trained on exactly like real images.
    """

    output = "generator"

    def __init__(self, net: nn.Module, arch: str, kwargs: dict[str, Any], num_classes: int, nz: int,
                 mean: tuple[float, ...], std: tuple[float, ...], batch: int = 500) -> None:
        self.net, self.arch, self.kwargs = net, arch, dict(kwargs)
        self.num_classes, self.nz, self.batch = num_classes, nz, batch
        self.mean, self.std = tuple(mean), tuple(std)

    @torch.no_grad()
    def sample(self, ipc: int | None, generator: torch.Generator) -> SyntheticSet:
        if ipc is None or ipc < 1:
            raise ValueError(f"a generator needs images per class >= 1, got {ipc}")
        labels = torch.arange(self.num_classes).repeat_interleave(ipc)
        z = torch.randn(len(labels), self.nz, generator=generator)
        device = next(self.net.parameters()).device
        was_training = self.net.training
        self.net.eval()
        out = [self.net(z[i : i + self.batch].to(device), labels[i : i + self.batch].to(device)).float().cpu()
               for i in range(0, len(labels), self.batch)]
        self.net.train(was_training)
        x = (torch.cat(out) + 1) / 2
        mean = torch.tensor(self.mean).view(1, -1, 1, 1)
        std = torch.tensor(self.std).view(1, -1, 1, 1)
        return SyntheticSet((x - mean) / std, labels)

    def state_dict(self) -> dict[str, Any]:
        weights = {k: v.detach().cpu() for k, v in self.net.state_dict().items()}
        return {"arch": self.arch, "kwargs": self.kwargs, "weights": weights, "num_classes": self.num_classes,
                "nz": self.nz, "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> "GeneratorSource":
        net = GENERATORS.get(state["arch"])(**state["kwargs"])
        net.load_state_dict(state["weights"])
        return cls(net, state["arch"], state["kwargs"], int(state["num_classes"]), int(state["nz"]),
                   tuple(state["mean"]), tuple(state["std"]))


def load_source(path: Path, output: str) -> tuple[Source, dict[str, Any]]:
    """(source, the whole artefact dict) from an artefact file; ``CheckpointError`` if unusable."""
    path = Path(path)
    state = try_torch_load(path)
    if not isinstance(state, dict):
        what = "missing" if not path.exists() else "corrupt"
        raise CheckpointError(f"{path} is {what}; rerun the distillation")
    try:
        return SOURCES.get(output).from_state_dict(state), state
    except HpcddError as e:
        raise CheckpointError(f"{path}: {e}") from None
    except (KeyError, ValueError, TypeError, RuntimeError) as e:
        raise CheckpointError(f"{path} is not a usable {output} artefact ({type(e).__name__}: {e})") from None


__all__ = ["SyntheticSet", "Source", "ImageSource", "GeneratorSource", "SOURCES", "GENERATORS", "load_source"]
