"""The ``Net`` interface, the ``NETS`` registry and a staged-chain base class.

Every network is a chain of named stages followed by one linear classifier:
``forward(x) == classifier(embed(x))`` and ``embed`` never touches the
classifier. ``features(x, layer)`` runs the chain up to (and including) the
named stage and returns its activation.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Callable, Sequence

import torch
from torch import nn

from hpcdd.errors import ConfigError
from hpcdd.registry import Registry


class Net(nn.Module):
    """A classifier with access to its penultimate and intermediate features."""

    feature_layers: tuple[str, ...] = ()
    embed_dim: int = 0

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features, shape ``(B, embed_dim)`` (the classifier's input)."""
        raise NotImplementedError

    def features(self, x: torch.Tensor, layer: str) -> torch.Tensor:
        """The activation of the named intermediate ``layer`` (one of ``feature_layers``)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


NetFactory = Callable[[int, int, int], Net]
NETS: Registry[NetFactory] = Registry("net")


def build(
    name: str,
    channels: int,
    num_classes: int,
    im_size: int,
    *,
    generator: torch.Generator | None = None,
) -> Net:
    """Construct the registered net ``name``; unknown names raise ``ConfigError``.

    With ``generator`` (a CPU generator) the weights are drawn from it with
    PyTorch's default init (see :func:`init_weights`) and the global RNG is not
    touched; without it, modules initialise themselves from the global RNG as in
    plain PyTorch. hpcdd code should always pass a generator.
    """
    factory = NETS.get(name)
    if generator is None:
        return factory(channels, num_classes, im_size)
    with torch.device("meta"):  # no storage, no global-RNG draws
        net = factory(channels, num_classes, im_size)
    net.to_empty(device="cpu")
    init_weights(net, generator)
    return net


_NORMS = (nn.GroupNorm, nn.BatchNorm2d, nn.BatchNorm1d, nn.LayerNorm, nn.InstanceNorm2d)


def init_weights(net: nn.Module, generator: torch.Generator) -> None:
    """Re-initialise ``net`` in place like PyTorch's defaults, drawing only from ``generator``.

    Conv/Linear: weight ~ kaiming_uniform(a=sqrt(5)), bias ~ U(+-1/sqrt(fan_in));
    norms: weight 1, bias 0, running stats reset. Any other module that owns
    parameters raises ``TypeError`` (so nothing is left uninitialised).
    """
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5), generator=generator)
                if module.bias is not None:
                    fan_in = module.weight[0].numel()
                    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
                    nn.init.uniform_(module.bias, -bound, bound, generator=generator)
            elif isinstance(module, _NORMS):
                if getattr(module, "weight", None) is not None:
                    nn.init.ones_(module.weight)
                    nn.init.zeros_(module.bias)
                if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
                    module.reset_running_stats()
            elif any(True for _ in module.parameters(recurse=False)):
                raise TypeError(f"init_weights does not know how to initialise {type(module).__name__}")


def check_dims(name: str, channels: int, num_classes: int, im_size: int) -> None:
    """Reject non-positive constructor arguments with a ``ConfigError``."""
    for label, value in (("channels", channels), ("num_classes", num_classes), ("im_size", im_size)):
        if int(value) != value or value < 1:
            raise ConfigError(f"{name}: {label} must be a positive integer, got {value!r}")


def check_map(name: str, side: int, im_size: int) -> int:
    """Raise ``ConfigError`` if ``im_size`` leaves no spatial map; return ``side``."""
    if side < 1:
        raise ConfigError(f"{name}: image size {im_size} is too small for this architecture")
    return side


class StagedNet(Net):
    """``body`` (an ``nn.Sequential`` of named stages) -> flatten -> ``classifier``.

    ``feature_layers`` must name stages of ``body``; the last stage's output,
    flattened, is the embedding of size ``embed_dim``.
    """

    def __init__(
        self,
        stages: Sequence[tuple[str, nn.Module]],
        classifier: nn.Linear,
        feature_layers: Sequence[str],
    ) -> None:
        super().__init__()
        self.body = nn.Sequential(OrderedDict(stages))
        self.classifier = classifier
        names = [name for name, _ in stages]
        unknown = [layer for layer in feature_layers if layer not in names]
        if unknown:
            raise ValueError(f"feature layers {unknown} are not stages of {names}")
        self.feature_layers = tuple(feature_layers)
        self.embed_dim = classifier.in_features

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.body(x).flatten(1))

    def features(self, x: torch.Tensor, layer: str) -> torch.Tensor:
        if layer not in self.feature_layers:
            raise ConfigError(
                f"{type(self).__name__} has no feature layer {layer!r}; "
                f"choose one of: {', '.join(self.feature_layers)}"
            )
        for name, stage in self.body.named_children():
            x = stage(x)
            if name == layer:
                break
        return x
