"""Datasets: ``load_dataset(name)`` -> ``Dataset`` (info, train ``ClassBank``, test ``ImageSet``).

Registered names: ``fashionmnist``, ``mnist``, ``mnist5k``, ``digits`` (``sources.py``),
``cifar10``, ``cifar100``, ``svhn`` (``cifar.py``) and ``imagefolder`` (``imagefolder.py``).
Nothing is downloaded unless ``download=True``; a missing dataset raises a one-line
``DataError`` saying how to get it.
"""

from __future__ import annotations

from hpcdd.data import cifar as _cifar  # noqa: F401 - registers cifar10, cifar100, svhn
from hpcdd.data import imagefolder as _imagefolder  # noqa: F401 - registers imagefolder
from hpcdd.data import sources as _sources  # noqa: F401 - registers the grey-scale sets
from hpcdd.data.base import DATASETS, ClassBank, Dataset, DatasetInfo, ImageSet, Source

__all__ = [
    "DATASETS",
    "ClassBank",
    "Dataset",
    "DatasetInfo",
    "ImageSet",
    "Source",
    "load_dataset",
]


def load_dataset(
    name: str, *, root: str | None = None, download: bool = False, im_size: int | None = None
) -> Dataset:
    """Load a registered dataset; ``im_size`` resizes (bilinear) where the source allows it.

    Raises ``ConfigError`` for an unknown name and ``DataError`` for missing or unreadable data.
    """
    if im_size is not None and im_size < 1:
        from hpcdd.errors import ConfigError

        raise ConfigError(f"im_size must be a positive integer, got {im_size}")
    return DATASETS.get(name).load(root, download, im_size)
