"""RGB 32x32 sources in torchvision's on-disk layouts: ``cifar10``, ``cifar100``, ``svhn``.

The files are read directly (CIFAR: the pickled batches under ``cifar-10-batches-py/`` or
``cifar-100-python/``; SVHN: ``train_32x32.mat`` / ``test_32x32.mat`` directly in the root),
so no md5 check runs and any same-format file works. ``root`` defaults to
``~/.cache/hpcdd/data``; torchvision downloads into it only when ``download=True``.
SVHN's label 10 (digit zero) becomes 0, as in torchvision; its ``extra`` split is not used.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hpcdd.data.base import DATASETS, Dataset, DatasetInfo, make_dataset, resize_uint8
from hpcdd.data.sources import default_root, run_download
from hpcdd.errors import DataError

Split = tuple[torch.Tensor, torch.Tensor]


def build_info(source: Any, class_names: tuple[str, ...], im_size: int) -> DatasetInfo:
    return DatasetInfo(
        name=source.name,
        num_classes=len(class_names),
        channels=3,
        im_size=im_size,
        mean=source.mean,
        std=source.std,
        class_names=class_names,
    )


def finish(source: Any, names: tuple[str, ...], train: Split, test: Split, im_size: int | None) -> Dataset:
    """Resize both splits if asked and wrap them in a ``Dataset``."""
    if im_size is not None:
        train = (resize_uint8(train[0], im_size), train[1])
        test = (resize_uint8(test[0], im_size), test[1])
    return make_dataset(build_info(source, names, int(train[0].shape[-1])), train, test)


# ---------------------------------------------------------------------------------------- CIFAR


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles only what CIFAR batches hold (dicts, lists, numpy arrays): a planted file
    under --data-root cannot run code."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def unpickle(path: Path) -> dict[str, Any]:
    """One CIFAR python-format file, with bytes keys decoded to str."""
    try:
        with open(path, "rb") as f:
            obj = _ArrayUnpickler(f, encoding="bytes").load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    if not isinstance(obj, dict):
        raise DataError(f"{path} is not a CIFAR batch (not a dict)")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def read_cifar_batches(paths: list[Path], label_key: str) -> Split:
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    for path in paths:
        batch = unpickle(path)
        if "data" not in batch or label_key not in batch:
            raise DataError(f"{path} lacks 'data' or {label_key!r}")
        xs.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        ys.append(np.asarray(batch[label_key], dtype=np.int64).reshape(-1))
        if xs[-1].shape[0] != ys[-1].shape[0]:
            raise DataError(f"{path}: {xs[-1].shape[0]} images but {ys[-1].shape[0]} labels")
    return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))


@dataclass(frozen=True)
class CifarSource:
    name: str
    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    label_key: str
    names_key: str
    torchvision_name: str
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def files(self, base: Path) -> list[Path]:
        names = self.train_files + self.test_files + (self.meta_file,)
        return [base / self.folder / n for n in names]

    def load(self, root: str | None, download: bool, im_size: int | None) -> Dataset:
        base = default_root(root)
        if not all(p.is_file() for p in self.files(base)):
            if not download:
                raise DataError(
                    f"{self.name} not found in {base}: point --data-root at a directory holding "
                    f"{self.folder}/ (torchvision layout) or pass --download"
                )
            import torchvision.datasets as tvd

            cls = getattr(tvd, self.torchvision_name)
            run_download(self.name, base, lambda: cls(str(base), train=True, download=True))
        folder = base / self.folder
        meta = unpickle(folder / self.meta_file)
        names = tuple(
            n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in meta.get(self.names_key, [])
        )
        if not names:
            raise DataError(f"{folder / self.meta_file} lacks {self.names_key!r}")
        train = read_cifar_batches([folder / n for n in self.train_files], self.label_key)
        test = read_cifar_batches([folder / n for n in self.test_files], self.label_key)
        return finish(self, names, train, test, im_size)


DATASETS.register("cifar10")(
    CifarSource(
        name="cifar10",
        folder="cifar-10-batches-py",
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test_files=("test_batch",),
        meta_file="batches.meta",
        label_key="labels",
        names_key="label_names",
        torchvision_name="CIFAR10",
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2023, 0.1994, 0.2010),
    )
)

DATASETS.register("cifar100")(
    CifarSource(
        name="cifar100",
        folder="cifar-100-python",
        train_files=("train",),
        test_files=("test",),
        meta_file="meta",
        label_key="fine_labels",
        names_key="fine_label_names",
        torchvision_name="CIFAR100",
        mean=(0.5071, 0.4866, 0.4409),
        std=(0.2673, 0.2564, 0.2762),
    )
)


# ----------------------------------------------------------------------------------------- SVHN


def read_svhn(path: Path) -> Split:
    """``X`` (32, 32, 3, N) uint8 -> (N, 3, 32, 32); ``y`` with 10 -> 0."""
    import scipy.io

    try:
        mat = scipy.io.loadmat(str(path))
    except Exception as exc:  # noqa: BLE001 - scipy raises several types for a bad .mat
        raise DataError(f"cannot read {path}: {exc}") from exc
    if "X" not in mat or "y" not in mat:
        raise DataError(f"{path} lacks 'X' or 'y'")
    x = np.ascontiguousarray(np.transpose(np.asarray(mat["X"], dtype=np.uint8), (3, 2, 0, 1)))
    y = np.asarray(mat["y"], dtype=np.int64).reshape(-1)
    if x.shape[0] != y.shape[0] or x.shape[1:] != (3, 32, 32):
        raise DataError(f"{path}: X has shape {x.shape}, y has {y.shape[0]} labels")
    y = np.where(y == 10, 0, y)
    return torch.from_numpy(x), torch.from_numpy(y)


@dataclass(frozen=True)
class SvhnSource:
    name: str = "svhn"
    mean: tuple[float, ...] = (0.4377, 0.4438, 0.4728)
    std: tuple[float, ...] = (0.1980, 0.2010, 0.1970)

    def load(self, root: str | None, download: bool, im_size: int | None) -> Dataset:
        base = default_root(root)
        files = {split: base / f"{split}_32x32.mat" for split in ("train", "test")}
        for split, path in files.items():
            if path.is_file():
                continue
            if not download:
                raise DataError(
                    f"svhn not found in {base}: point --data-root at a directory holding "
                    "train_32x32.mat and test_32x32.mat (torchvision layout) or pass --download"
                )
            import torchvision.datasets as tvd

            run_download(self.name, base, lambda s=split: tvd.SVHN(str(base), split=s, download=True))
        names = tuple(str(i) for i in range(10))
        return finish(self, names, read_svhn(files["train"]), read_svhn(files["test"]), im_size)


DATASETS.register("svhn")(SvhnSource())
