"""ResNet10 / ResNet18 with BatchNorm, with either stem.

* ``resnet10``, ``resnet18``: CIFAR-style (the DC code's ResNet*BN): 3x3 stem conv (64, stride 1,
  no max-pool), so layer1 runs at full resolution (about 207 / 456 MMAC per 28x28 image).
* ``resnet10_imagenet``, ``resnet18_imagenet``: the ImageNet stem (7x7 stride-2 conv, padding 3,
  then 3x3 stride-2 max-pool, padding 1), as DiM (``vimar-gu/DiM``, ``models/resnet.py``, net size
  'large') builds its pool ResNets for MNIST and Fashion-MNIST: 28 -> 14 -> 7 before layer1, layer2
  is 4x4, about 15 / 33 MMAC per 28x28 image. The default pool of the generative methods at 32 px
  and below.

Both: four stages of BasicBlocks (64, 128, 256, 512 channels; stride 1, 2, 2, 2), global average
pool and a linear classifier, so any input size works (28 px 1-channel included).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hpcdd.errors import ConfigError
from hpcdd.nets.base import NETS, StagedNet, check_dims

STEMS = ("cifar", "imagenet")


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity (or 1x1 conv-BN) shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(StagedNet):
    """Stages ``stem``, ``layer1`` .. ``layer4``, ``pool``; features ``layer1`` .. ``layer4``."""

    def __init__(
        self, channels: int, num_classes: int, im_size: int, *, blocks: tuple[int, int, int, int],
        stem: str = "cifar",
    ) -> None:
        check_dims("ResNet", channels, num_classes, im_size)
        if stem not in STEMS:
            raise ConfigError(f"ResNet: unknown stem {stem!r}; choose one of: {', '.join(STEMS)}")
        if stem == "cifar":
            first: list[nn.Module] = [nn.Conv2d(channels, 64, 3, stride=1, padding=1, bias=False)]
        else:
            first = [nn.Conv2d(channels, 64, 7, stride=2, padding=3, bias=False)]
        after = [nn.MaxPool2d(kernel_size=3, stride=2, padding=1)] if stem == "imagenet" else []
        stem_net = nn.Sequential(*first, nn.BatchNorm2d(64), nn.ReLU(inplace=True), *after)
        stages: list[tuple[str, nn.Module]] = [("stem", stem_net)]
        in_planes = 64
        for i, (planes, count) in enumerate(zip((64, 128, 256, 512), blocks)):
            first_stride = 1 if i == 0 else 2
            layer = []
            for b in range(count):
                layer.append(BasicBlock(in_planes, planes, first_stride if b == 0 else 1))
                in_planes = planes
            stages.append((f"layer{i + 1}", nn.Sequential(*layer)))
        stages.append(("pool", nn.AdaptiveAvgPool2d(1)))
        layers = ("layer1", "layer2", "layer3", "layer4")
        super().__init__(stages, nn.Linear(in_planes, num_classes), layers)


@NETS.register("resnet10")
def resnet10(channels: int, num_classes: int, im_size: int) -> ResNet:
    return ResNet(channels, num_classes, im_size, blocks=(1, 1, 1, 1))


@NETS.register("resnet18")
def resnet18(channels: int, num_classes: int, im_size: int) -> ResNet:
    return ResNet(channels, num_classes, im_size, blocks=(2, 2, 2, 2))


@NETS.register("resnet10_imagenet")
def resnet10_imagenet(channels: int, num_classes: int, im_size: int) -> ResNet:
    return ResNet(channels, num_classes, im_size, blocks=(1, 1, 1, 1), stem="imagenet")


@NETS.register("resnet18_imagenet")
def resnet18_imagenet(channels: int, num_classes: int, im_size: int) -> ResNet:
    return ResNet(channels, num_classes, im_size, blocks=(2, 2, 2, 2), stem="imagenet")
