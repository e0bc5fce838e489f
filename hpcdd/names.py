"""The registered dataset and net names, each dataset's image size and each net's feature layers, for
``--help``, messages and config checks without importing torch.

The registries themselves (``hpcdd.data.DATASETS``, ``hpcdd.nets.NETS``) live with the torch code;
``tests/test_config.py`` (``test_torch_free_name_lists_match_the_registries``) checks that these
tables equal them, so a new dataset or net adds its entry here too.
"""

DATASET_SIZES: dict[str, int] = {
    "cifar10": 32, "cifar100": 32, "digits": 28, "fashionmnist": 28, "imagefolder": 32, "mnist": 28,
    "mnist5k": 28, "svhn": 32,
}
"""Each dataset's image side when ``im_size`` is null (imagefolder: its default resize)."""

DATASET_NAMES = tuple(sorted(DATASET_SIZES))

_BLOCKS = ("block1", "block2", "block3", "block4", "block5")
_RESNET = ("layer1", "layer2", "layer3", "layer4")
NET_LAYERS: dict[str, tuple[str, ...]] = {
    "alexnet": _BLOCKS,
    "convnet3": _BLOCKS[:3],
    "convnet3_bn": _BLOCKS[:3],
    "convnet4": _BLOCKS[:4],
    "convnet4_bn": _BLOCKS[:4],
    "lenet": ("block1", "block2", "fc1", "fc2"),
    "mlp": ("fc1", "fc2"),
    "resnet10": _RESNET,
    "resnet10_imagenet": _RESNET,
    "resnet18": _RESNET,
    "resnet18_imagenet": _RESNET,
    "vgg11": _BLOCKS,
}
"""Each net's ``feature_layers`` (what ``Net.features(x, layer)`` accepts)."""

NET_NAMES = tuple(sorted(NET_LAYERS))
