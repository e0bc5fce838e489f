"""Cross-architecture nets from the DC code: AlexNet, VGG11, MLP, LeNet.

The DC code pads the first conv for 1-channel 28 px (MNIST-like) input so that
the feature map matches the 32 px case; here the padding keys on ``im_size == 28``
(whatever the channel count), so 28 px and 32 px inputs give the same
classifier input. Other image sizes are supported where the map stays >= 1 px.
"""

from __future__ import annotations

from torch import nn

from hpcdd.errors import ConfigError
from hpcdd.nets.base import NETS, StagedNet, check_dims, check_map

VGG11_CFG: tuple[int | str, ...] = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


def _conv_relu(in_ch: int, out_ch: int, kernel: int, pad: int, *, pool: bool) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(in_ch, out_ch, kernel, padding=pad), nn.ReLU(inplace=True)]
    if pool:
        layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
    return nn.Sequential(*layers)


class AlexNet(StagedNet):
    """DC-code CIFAR AlexNet; stages ``block1`` .. ``block5`` (embed 192*4*4 at 28/32 px)."""

    def __init__(self, channels: int, num_classes: int, im_size: int) -> None:
        check_dims("AlexNet", channels, num_classes, im_size)
        pad = 4 if im_size == 28 else 2
        side = ((im_size + 2 * pad - 4) // 2) // 2 // 2
        check_map("AlexNet", side, im_size)
        stages = [
            ("block1", _conv_relu(channels, 128, 5, pad, pool=True)),
            ("block2", _conv_relu(128, 192, 5, 2, pool=True)),
            ("block3", _conv_relu(192, 256, 3, 1, pool=False)),
            ("block4", _conv_relu(256, 192, 3, 1, pool=False)),
            ("block5", _conv_relu(192, 192, 3, 1, pool=True)),
        ]
        names = [name for name, _ in stages]
        super().__init__(stages, nn.Linear(192 * side * side, num_classes), names)


class VGG(StagedNet):
    """DC-code CIFAR VGG; one stage per max-pool: ``block1`` .. ``block5``."""

    def __init__(
        self,
        channels: int,
        num_classes: int,
        im_size: int,
        *,
        cfg: tuple[int | str, ...] = VGG11_CFG,
        norm: str = "instancenorm",
    ) -> None:
        check_dims("VGG", channels, num_classes, im_size)
        if norm not in ("instancenorm", "batchnorm"):
            raise ConfigError(f"VGG: unknown norm {norm!r}; choose instancenorm or batchnorm")
        side = 32 if im_size == 28 else im_size
        stages: list[tuple[str, nn.Module]] = []
        layers: list[nn.Module] = []
        in_ch, first = channels, True
        for item in cfg:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                stages.append((f"block{len(stages) + 1}", nn.Sequential(*layers)))
                layers, side = [], side // 2
                continue
            out = int(item)
            pad = 3 if im_size == 28 and first else 1
            norm_layer = (
                nn.GroupNorm(out, out, affine=True) if norm == "instancenorm" else nn.BatchNorm2d(out)
            )
            layers += [nn.Conv2d(in_ch, out, 3, padding=pad), norm_layer, nn.ReLU(inplace=True)]
            in_ch, first = out, False
        if layers:
            stages.append((f"block{len(stages) + 1}", nn.Sequential(*layers)))
        check_map("VGG", side, im_size)
        names = [name for name, _ in stages]
        super().__init__(stages, nn.Linear(in_ch * side * side, num_classes), names)


class MLP(StagedNet):
    """DC-code MLP: flatten -> 128 -> 128 -> classes; stages ``fc1``, ``fc2`` (embed 128)."""

    def __init__(self, channels: int, num_classes: int, im_size: int, *, width: int = 128) -> None:
        check_dims("MLP", channels, num_classes, im_size)
        stages = [
            ("fc1", nn.Sequential(nn.Flatten(), nn.Linear(channels * im_size**2, width), nn.ReLU())),
            ("fc2", nn.Sequential(nn.Linear(width, width), nn.ReLU())),
        ]
        super().__init__(stages, nn.Linear(width, num_classes), ("fc1", "fc2"))


class LeNet(StagedNet):
    """DC-code LeNet; stages ``block1``, ``block2``, ``fc1``, ``fc2`` (embed 84)."""

    def __init__(self, channels: int, num_classes: int, im_size: int) -> None:
        check_dims("LeNet", channels, num_classes, im_size)
        pad = 2 if im_size == 28 else 0
        side = ((im_size + 2 * pad - 4) // 2 - 4) // 2
        check_map("LeNet", side, im_size)
        stages = [
            ("block1", _conv_relu(channels, 6, 5, pad, pool=True)),
            ("block2", _conv_relu(6, 16, 5, 0, pool=True)),
            ("fc1", nn.Sequential(nn.Flatten(), nn.Linear(16 * side * side, 120), nn.ReLU(inplace=True))),
            ("fc2", nn.Sequential(nn.Linear(120, 84), nn.ReLU(inplace=True))),
        ]
        names = [name for name, _ in stages]
        super().__init__(stages, nn.Linear(84, num_classes), names)


@NETS.register("alexnet")
def alexnet(channels: int, num_classes: int, im_size: int) -> AlexNet:
    return AlexNet(channels, num_classes, im_size)


@NETS.register("vgg11")
def vgg11(channels: int, num_classes: int, im_size: int) -> VGG:
    return VGG(channels, num_classes, im_size)


@NETS.register("mlp")
def mlp(channels: int, num_classes: int, im_size: int) -> MLP:
    return MLP(channels, num_classes, im_size)


@NETS.register("lenet")
def lenet(channels: int, num_classes: int, im_size: int) -> LeNet:
    return LeNet(channels, num_classes, im_size)
