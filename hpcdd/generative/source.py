"""A generator artefact (``generator.pt``) as an evaluation source, loadable in any process.

The file names its architecture by an importable ``"module:attr"`` (the generator's
``nn.Module`` class, e.g. ``hpcdd.generative.nets:Generator``) and stores the constructor's
keyword arguments and the weights, never code. Loading imports that module, so ``hpcdd generate``,
``show``, ``evaluate`` and a sweep's separate evaluation task work in a fresh interpreter, whatever
was imported before. Only modules inside the ``hpcdd`` package or named in ``$HPCDD_PLUGINS`` are
imported, and the object must be an ``nn.Module`` class: a file cannot make us import, or call,
anything else. Files written before the architecture was a reference say ``"arch": "dim"``
(:data:`LEGACY_ARCHS` maps that name once).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from hpcdd.artefact import Source, SyntheticSet
from hpcdd.errors import CheckpointError
from hpcdd.specs.base import load_impl, plugin_modules

LEGACY_ARCHS = {"dim": "hpcdd.generative.nets:Generator"}
"""Architecture names of generator.pt files written by earlier versions -> their reference."""


def arch_name(net: nn.Module) -> str:
    """The ``"module:attr"`` reference of ``net``'s class (what a generator artefact stores)."""
    cls = type(net)
    return f"{cls.__module__}:{cls.__qualname__}"


def load_arch(name: str) -> type[nn.Module]:
    """The generator class a reference names; ``CheckpointError`` for anything not allowed."""
    ref = LEGACY_ARCHS.get(name, name)
    module, sep, attr = ref.partition(":")
    if not sep or not module or not attr:
        raise CheckpointError(f"generator architecture {name!r} is not a 'module:Class' reference")
    if not (module == "hpcdd" or module.startswith("hpcdd.") or module in plugin_modules()):
        raise CheckpointError(f"generator architecture {name!r} is outside hpcdd and $HPCDD_PLUGINS; "
                              f"not importing {module!r}")
    try:
        obj = load_impl(ref)
    except (ImportError, AttributeError) as e:
        raise CheckpointError(f"generator architecture {name!r} cannot be loaded ({type(e).__name__}: {e})") from None
    if not (isinstance(obj, type) and issubclass(obj, nn.Module)):
        raise CheckpointError(f"generator architecture {name!r} is not an nn.Module class")
    return obj


class GeneratorSource(Source):
    """A class-conditional generator: ``ipc`` images per class from noise drawn from a generator.

    ``net(z, labels)`` returns images in [-1, 1]; they are mapped to the dataset's normalisation
    (``(x + 1) / 2`` then ``(x - mean) / std``), so they are trained on exactly like real images.
    """

    output = "generator"

    def __init__(self, net: nn.Module, kwargs: dict[str, Any], num_classes: int, nz: int,
                 mean: tuple[float, ...], std: tuple[float, ...], batch: int = 500) -> None:
        self.net, self.kwargs = net, dict(kwargs)
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
        return {"arch": arch_name(self.net), "kwargs": self.kwargs, "weights": weights,
                "num_classes": self.num_classes, "nz": self.nz, "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> "GeneratorSource":
        net = load_arch(str(state["arch"]))(**state["kwargs"])
        net.load_state_dict(state["weights"])
        return cls(net, state["kwargs"], int(state["num_classes"]), int(state["nz"]),
                   tuple(state["mean"]), tuple(state["std"]))


__all__ = ["GeneratorSource", "LEGACY_ARCHS", "arch_name", "load_arch"]
