"""Dataset types shared by every source: ``DatasetInfo``, ``ImageSet``, ``ClassBank``, ``Dataset``.

Images are stored once as uint8 ``(N, C, H, W)`` -- a torch tensor for small sets, a numpy
memmap for large cached ones -- and normalised to float32 only when a batch is requested,
so sampling real images per class never needs the whole set in float memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from hpcdd.registry import Registry

ArrayLike = torch.Tensor | np.ndarray


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a dataset; ``mean``/``std`` are per channel on the 0..1 scale."""

    name: str
    num_classes: int
    channels: int
    im_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...]


class ImageSet:
    """One split: uint8 images ``(N, C, H, W)`` (tensor or numpy memmap) and int64 labels."""

    def __init__(self, info: DatasetInfo, data: ArrayLike, labels: ArrayLike) -> None:
        shape = tuple(data.shape)
        expected = (info.channels, info.im_size, info.im_size)
        if len(shape) != 4 or shape[1:] != expected:
            raise ValueError(f"{info.name}: images have shape {shape}, expected (N, *{expected})")
        is_uint8 = data.dtype == torch.uint8 if isinstance(data, torch.Tensor) else data.dtype == np.uint8
        if not is_uint8:
            raise ValueError(f"{info.name}: images must be uint8, got {data.dtype}")
        self.info = info
        self.data = data
        lab = labels if isinstance(labels, torch.Tensor) else torch.from_numpy(np.asarray(labels))
        self.labels = lab.to(torch.int64).reshape(-1)
        if self.labels.numel() != shape[0]:
            raise ValueError(f"{info.name}: {shape[0]} images but {self.labels.numel()} labels")
        self._mean = torch.tensor(info.mean, dtype=torch.float32).view(1, -1, 1, 1)
        self._std = torch.tensor(info.std, dtype=torch.float32).view(1, -1, 1, 1)

    def __len__(self) -> int:
        return int(self.labels.numel())

    def raw(self, idx: torch.Tensor) -> torch.Tensor:
        """The uint8 images at ``idx`` (any order, repeats allowed), as a tensor ``(n, C, H, W)``."""
        idx = torch.as_tensor(idx, dtype=torch.int64).reshape(-1)
        if isinstance(self.data, torch.Tensor):
            return self.data[idx]
        np_idx = idx.numpy()
        order = np.argsort(np_idx, kind="stable")  # read a memmap front to back
        out = np.empty((len(np_idx),) + tuple(self.data.shape[1:]), dtype=np.uint8)
        out[order] = self.data[np_idx[order]]
        return torch.from_numpy(out)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 images -> float32 ``((x / 255) - mean) / std``."""
        return (x.to(torch.float32) / 255.0 - self._mean) / self._std

    def images(self, idx: torch.Tensor) -> torch.Tensor:
        """Normalised float32 images ``(n, C, H, W)`` at ``idx``."""
        return self.normalize(self.raw(idx))

    def batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``(images, labels)`` in order, normalised; the last batch may be smaller."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        for start in range(0, len(self), batch_size):
            stop = min(start + batch_size, len(self))
            chunk = self.data[start:stop]
            x = chunk if isinstance(chunk, torch.Tensor) else torch.from_numpy(np.array(chunk))
            yield self.normalize(x), self.labels[start:stop]


class ClassBank(ImageSet):
    """The train split, indexed per class for sampling real images of one class."""

    def __init__(self, info: DatasetInfo, data: ArrayLike, labels: ArrayLike) -> None:
        super().__init__(info, data, labels)
        if len(self) and (int(self.labels.min()) < 0 or int(self.labels.max()) >= info.num_classes):
            raise ValueError(f"{info.name}: labels outside 0..{info.num_classes - 1}")
        order = torch.argsort(self.labels, stable=True)
        counts = torch.bincount(self.labels, minlength=info.num_classes)
        self.class_indices: list[torch.Tensor] = list(torch.split(order, counts.tolist()))

    def sample(self, c: int, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` indices of class ``c`` without replacement (all of them, permuted, if n > count)."""
        pool = self.class_indices[c]
        perm = torch.randperm(pool.numel(), generator=generator, device=generator.device)
        return pool[perm[:n].cpu()]

    def class_images(self, c: int, n: int, generator: torch.Generator) -> torch.Tensor:
        """Normalised images of ``sample(c, n, generator)``."""
        return self.images(self.sample(c, n, generator))


@dataclass
class Dataset:
    """A loaded dataset: its info, the train ``ClassBank`` and the test ``ImageSet``."""

    info: DatasetInfo
    train: ClassBank
    test: ImageSet


class Source(Protocol):
    """What ``DATASETS`` holds: a named loader."""

    name: str

    def load(self, root: str | None, download: bool, im_size: int | None) -> Dataset: ...


DATASETS: Registry[Source] = Registry("dataset")


def make_dataset(
    info: DatasetInfo,
    train: tuple[ArrayLike, ArrayLike],
    test: tuple[ArrayLike, ArrayLike],
) -> Dataset:
    """Build a ``Dataset`` from ``(images, labels)`` pairs for each split."""
    return Dataset(info=info, train=ClassBank(info, *train), test=ImageSet(info, *test))


def resize_uint8(x: torch.Tensor, size: int, chunk: int = 4096) -> torch.Tensor:
    """Bilinearly resize uint8 ``(N, C, H, W)`` images to ``size`` x ``size`` (chunked, rounded)."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    out = torch.empty((x.shape[0], x.shape[1], size, size), dtype=torch.uint8)
    for start in range(0, x.shape[0], chunk):
        part = x[start : start + chunk].to(torch.float32)
        y = F.interpolate(part, size=(size, size), mode="bilinear", align_corners=False)
        out[start : start + chunk] = y.round_().clamp_(0, 255).to(torch.uint8)
    return out


def channel_stats(data: ArrayLike, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std (population) of uint8 images on the 0..1 scale.

    Exact integer sums (int64) of the pixel values and their squares, then one float64 division:
    the result does not depend on the chunking or on torch's thread count (a float reduction's
    order does), so the normalisation, and with it every image, is the same on any machine.
    """
    n, c = int(data.shape[0]), int(data.shape[1])
    if n == 0:
        raise ValueError("cannot compute statistics of an empty split")
    total = [0] * c
    total_sq = [0] * c
    for start in range(0, n, chunk):
        part = data[start : start + chunk]
        t = part if isinstance(part, torch.Tensor) else torch.from_numpy(np.array(part))
        t = t.to(torch.int64).transpose(0, 1).reshape(c, -1)
        for ch in range(c):
            total[ch] += int(t[ch].sum())
            total_sq[ch] += int((t[ch] * t[ch]).sum())
    count = n * int(data.shape[2]) * int(data.shape[3])
    mean = [s / (count * 255) for s in total]
    var = [(q * count - s * s) / (count * count * 255 * 255) for s, q in zip(total, total_sq)]
    std = [max(v, 1e-12) ** 0.5 for v in var]
    return tuple(float(m) for m in mean), tuple(float(v) for v in std)


def per_class_split(
    labels: torch.Tensor, num_classes: int, train_fraction: float = 0.8, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed per-class train/test split used for ``mnist5k`` and ``digits``.

    One ``torch.Generator`` seeded with ``seed`` visits classes 0, 1, ... in order; for class c
    with sorted indices ``idx`` (count ``m``) it draws ``perm = randperm(m)``; the first
    ``floor(train_fraction * m + 0.5)`` of ``idx[perm]`` go to train, the rest to test. Each
    split is returned sorted by original index.
    """
    g = torch.Generator().manual_seed(seed)
    train_parts: list[torch.Tensor] = []
    test_parts: list[torch.Tensor] = []
    for c in range(num_classes):
        idx = torch.nonzero(labels == c).flatten()
        perm = torch.randperm(idx.numel(), generator=g)
        n_train = int(np.floor(train_fraction * idx.numel() + 0.5))
        train_parts.append(idx[perm[:n_train]])
        test_parts.append(idx[perm[n_train:]])
    train = torch.sort(torch.cat(train_parts)).values
    test = torch.sort(torch.cat(test_parts)).values
    return train, test
