"""Network zoo: ``build(name, channels, num_classes, im_size)`` -> :class:`Net`.

Registered: convnet3 (default), convnet3_bn, convnet4, convnet4_bn, alexnet,
vgg11, resnet10, resnet18, mlp, lenet.
"""

from __future__ import annotations

from hpcdd.nets import convnet, others, resnet  # noqa: F401  (registers the nets)
from hpcdd.nets.base import NETS, Net, NetFactory, StagedNet, build, init_weights
from hpcdd.nets.convnet import ConvNet
from hpcdd.nets.others import MLP, VGG, AlexNet, LeNet
from hpcdd.nets.resnet import ResNet

DEFAULT_NET = "convnet3"

__all__ = [
    "DEFAULT_NET",
    "NETS",
    "AlexNet",
    "ConvNet",
    "LeNet",
    "MLP",
    "Net",
    "NetFactory",
    "ResNet",
    "StagedNet",
    "VGG",
    "build",
    "init_weights",
]
