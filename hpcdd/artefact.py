"""What a distillation produces: a *source* of training data for evaluation, and its file.

* :class:`ImageSource`: a fixed synthetic set (``synset.pt``), what DC, DSA, DM and the coresets make;
* a generator source (``generator.pt``, :class:`hpcdd.generative.source.GeneratorSource`) samples
  ``ipc`` images per class from seeded noise, deterministically, so one artefact serves every ipc.

Evaluation, ``hpcdd show`` and ``hpcdd generate`` only use :class:`Source`. :func:`load_source`
finds the class for an output kind by its ``"module:attr"`` name (:data:`SOURCE_KINDS`), imported
when such a file is read, so loading works in any process and image methods never import the
generative stack. Artefact files are read with ``torch.load(weights_only=True)``: plain tensors and
Python values, no pickled code.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from hpcdd.errors import CheckpointError, HpcddError
from hpcdd.io import try_torch_load


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


SOURCE_KINDS: dict[str, str] = {
    "images": "hpcdd.artefact:ImageSource",
    "generator": "hpcdd.generative.source:GeneratorSource",
}
"""The Source class of each method output kind (``MethodSpec.output``), as ``module:attr``."""


def source_class(output: str) -> type[Source]:
    """The Source class of an output kind (imports its module, e.g. the generative stack)."""
    from hpcdd.specs import load_impl

    if output not in SOURCE_KINDS:
        raise CheckpointError(f"unknown artefact kind {output!r}; choose one of: {', '.join(SOURCE_KINDS)}")
    return load_impl(SOURCE_KINDS[output])


def load_source(path: Path, output: str) -> tuple[Source, dict[str, Any]]:
    """(source, the whole artefact dict) from an artefact file; ``CheckpointError`` if unusable."""
    path = Path(path)
    cls = source_class(output)
    state = try_torch_load(path)
    if not isinstance(state, dict):
        what = "missing" if not path.exists() else "corrupt"
        raise CheckpointError(f"{path} is {what}; rerun the distillation")
    try:
        return cls.from_state_dict(state), state
    except HpcddError as e:
        raise CheckpointError(f"{path}: {e}") from None
    except (KeyError, ValueError, TypeError, RuntimeError) as e:
        raise CheckpointError(f"{path} is not a usable {output} artefact ({type(e).__name__}: {e})") from None


__all__ = ["SyntheticSet", "Source", "ImageSource", "SOURCE_KINDS", "source_class", "load_source"]
