"""ConvNet of DC / DSA / DM (Zhao & Bilen): the default distillation backbone.

``depth`` blocks of [Conv2d(in, width, 3, padding=1), norm, ReLU, AvgPool2d(2)]
then ``Linear(width * h * w, num_classes)``. 28 px inputs get padding 3 in the
first conv (28 -> 32), so 28 px and 32 px inputs share the same feature map.
"""

from __future__ import annotations

from torch import nn

from hpcdd.errors import ConfigError
from hpcdd.nets.base import NETS, NetFactory, StagedNet, check_dims, check_map

NORMS = ("instancenorm", "batchnorm", "none")


def _norm(kind: str, width: int) -> list[nn.Module]:
    if kind == "instancenorm":  # DC code: instance norm as GroupNorm with one channel per group
        return [nn.GroupNorm(width, width, affine=True)]
    if kind == "batchnorm":
        return [nn.BatchNorm2d(width, affine=True)]
    if kind == "none":
        return []
    raise ConfigError(f"unknown ConvNet norm {kind!r}; choose one of: {', '.join(NORMS)}")


class ConvNet(StagedNet):
    """The DC/DSA/DM ConvNet; stages ``block1`` .. ``block<depth>``."""

    def __init__(
        self,
        channels: int,
        num_classes: int,
        im_size: int,
        *,
        depth: int = 3,
        width: int = 128,
        norm: str = "instancenorm",
    ) -> None:
        check_dims("ConvNet", channels, num_classes, im_size)
        if depth < 1 or width < 1:
            raise ConfigError(f"ConvNet: depth and width must be >= 1, got {depth}, {width}")
        first_pad = 3 if im_size == 28 else 1
        side = 32 if im_size == 28 else im_size
        stages: list[tuple[str, nn.Module]] = []
        in_ch = channels
        for d in range(depth):
            layers: list[nn.Module] = [
                nn.Conv2d(in_ch, width, kernel_size=3, padding=first_pad if d == 0 else 1),
                *_norm(norm, width),
                nn.ReLU(inplace=True),
                nn.AvgPool2d(kernel_size=2, stride=2),
            ]
            stages.append((f"block{d + 1}", nn.Sequential(*layers)))
            in_ch = width
            side //= 2
        check_map("ConvNet", side, im_size)
        names = [name for name, _ in stages]
        super().__init__(stages, nn.Linear(width * side * side, num_classes), names)
        self.depth = depth
        self.width = width
        self.norm = norm


def _factory(depth: int, norm: str) -> NetFactory:
    def make(channels: int, num_classes: int, im_size: int) -> ConvNet:
        return ConvNet(channels, num_classes, im_size, depth=depth, norm=norm)

    make.__name__ = f"convnet{depth}_{norm}"
    return make


NETS.register("convnet3")(_factory(3, "instancenorm"))
NETS.register("convnet3_bn")(_factory(3, "batchnorm"))
NETS.register("convnet4")(_factory(4, "instancenorm"))
NETS.register("convnet4_bn")(_factory(4, "batchnorm"))
