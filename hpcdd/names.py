"""The registered dataset and net names, for ``--help`` and messages without importing torch.

The registries themselves (``hpcdd.data.DATASETS``, ``hpcdd.nets.NETS``) live with the torch code;
``tests/test_config.py`` (``test_torch_free_name_lists_match_the_registries``) checks that these
lists equal them, so a new dataset or net adds its name here too.
"""

DATASET_NAMES = ("cifar10", "cifar100", "digits", "fashionmnist", "imagefolder", "mnist", "mnist5k", "svhn")
NET_NAMES = ("alexnet", "convnet3", "convnet3_bn", "convnet4", "convnet4_bn", "lenet", "mlp", "resnet10",
             "resnet18", "vgg11")
