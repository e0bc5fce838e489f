"""``imagefolder``: any class-per-folder image tree (e.g. an ImageNet subset), cached once.

Layout: ``root/train/<class>/*.jpg|png|...`` and ``root/val/<class>/...`` (or ``root/test/``);
class names are the sorted sub-folder names of ``train/`` (files are found recursively, sorted).
Every image is decoded with PIL, converted to RGB and resized (bilinear, aspect ratio not kept)
to ``im_size`` x ``im_size`` (default 32), then stored ONCE as a uint8 ``(N, 3, S, S)`` ``.npy``
that later loads open as a read-only memmap, so sampling a million images needs no RAM.

Cache dir: ``root/.hpcdd_cache`` (or, if ``root`` is read-only,
``~/.cache/hpcdd/imagefolder/<hash of root>``), per split ``s`` in {train, test}:
``s_<S>.npy`` (images), ``s_<S>.labels.npy`` and ``s_<S>.json`` (classes and counts). The json
is written last and is the commit marker: images go to a temp file first and are ``os.replace``d
into place, so a half-written cache is never used (it is rebuilt). ``train_<S>.stats.json``
holds mean/std computed from the train cache in chunks. The cache does not notice new or
changed source images: delete ``.hpcdd_cache`` to rebuild it.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from hpcdd.data.base import DATASETS, Dataset, DatasetInfo, channel_stats, make_dataset
from hpcdd.errors import ConfigError, DataError
from hpcdd.io import atomic_write_bytes, atomic_write_json, try_load_json

IMG_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
)
CACHE_FORMAT = 1
DECODE_CHUNK = 1024


@dataclass(frozen=True)
class CachedSplit:
    images: np.ndarray  # uint8 memmap (N, 3, S, S)
    labels: np.ndarray  # int64 (N,)
    class_names: tuple[str, ...]
    path: Path  # the images .npy


@dataclass(frozen=True)
class CachePaths:
    images: Path
    labels: Path
    meta: Path

    @classmethod
    def of(cls, cache_dir: Path, split: str, size: int) -> CachePaths:
        stem = f"{split}_{size}"
        return cls(cache_dir / f"{stem}.npy", cache_dir / f"{stem}.labels.npy", cache_dir / f"{stem}.json")


def cache_dirs(root: Path) -> list[Path]:
    """Where caches may live: ``root/.hpcdd_cache``, then a per-user fallback for read-only roots."""
    digest = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]
    fallback = Path("~/.cache/hpcdd/imagefolder").expanduser() / digest
    return [root / ".hpcdd_cache", fallback]


def writable_cache_dir(root: Path) -> Path:
    """The first cache dir that can be created and written."""
    for d in cache_dirs(root):
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(d, os.W_OK):
            return d
    raise DataError(f"imagefolder: no writable cache dir for {root} (tried {cache_dirs(root)})")


def read_cache(root: Path, split: str, size: int) -> CachedSplit | None:
    """A committed, consistent cache of ``split`` at ``size``, or ``None``."""
    for d in cache_dirs(root):
        paths = CachePaths.of(d, split, size)
        meta = try_load_json(paths.meta)
        if not isinstance(meta, dict) or meta.get("format") != CACHE_FORMAT:
            continue
        try:
            images = np.load(paths.images, mmap_mode="r")
            labels = np.load(paths.labels)
        except (OSError, ValueError, EOFError):
            continue
        n = meta.get("n")
        if images.dtype != np.uint8 or images.shape != (n, 3, size, size) or labels.shape != (n,):
            continue
        return CachedSplit(images, labels.astype(np.int64), tuple(meta["class_names"]), paths.images)
    return None


def list_images(split_dir: Path, class_names: tuple[str, ...]) -> tuple[list[Path], list[int]]:
    """Image files of each class folder (recursive, sorted) and their labels."""
    unknown = sorted(set(class_dirs(split_dir)) - set(class_names))
    if unknown:
        raise DataError(f"{split_dir}: class folders {unknown[:5]} are not in train/")
    files: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(class_names):
        for dirpath, dirnames, filenames in os.walk(split_dir / name):
            dirnames.sort()
            for fn in sorted(filenames):
                if Path(fn).suffix.lower() in IMG_EXTENSIONS:
                    files.append(Path(dirpath) / fn)
                    labels.append(label)
    return files, labels


def decode(path: Path, size: int) -> np.ndarray:
    """One image as uint8 (3, size, size): RGB, bilinear resize."""
    try:
        with Image.open(path) as img:
            img.draft("RGB", (size, size))  # JPEG: decode at a reduced scale still >= size
            rgb = img.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot decode image {path}: {exc}") from exc
    return np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1)


def write_images(tmp: Path, files: list[Path], size: int) -> None:
    """Decode ``files`` in order into a new ``.npy`` at ``tmp`` (threads; PIL releases the GIL)."""
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(files), 3, size, size))
    workers = max(1, min(8, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for start in range(0, len(files), DECODE_CHUNK):
            chunk = files[start : start + DECODE_CHUNK]
            for i, arr in enumerate(pool.map(lambda p: decode(p, size), chunk)):
                out[start + i] = arr
    out.flush()
    del out
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def build_cache(root: Path, split_dir: Path, split: str, size: int, class_names: tuple[str, ...]) -> CachedSplit:
    """Decode ``split_dir`` once into the cache (images, labels, then the json commit marker)."""
    files, labels = list_images(split_dir, class_names)
    if not files:
        raise DataError(f"imagefolder: no images under {split_dir}")
    paths = CachePaths.of(writable_cache_dir(root), split, size)
    paths.meta.unlink(missing_ok=True)  # un-commit any older cache before replacing its files
    fd, tmp_name = tempfile.mkstemp(prefix=f".{paths.images.name}.", suffix=".tmp", dir=paths.images.parent)
    os.close(fd)
    try:
        write_images(Path(tmp_name), files, size)
        os.replace(tmp_name, paths.images)
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
    buf = io.BytesIO()
    np.save(buf, np.asarray(labels, dtype=np.int64))
    atomic_write_bytes(paths.labels, buf.getvalue())
    meta = {"format": CACHE_FORMAT, "n": len(files), "im_size": size, "class_names": list(class_names)}
    atomic_write_json(paths.meta, meta)
    cached = read_cache(root, split, size)
    if cached is None:
        raise DataError(f"imagefolder: the cache just written to {paths.images} cannot be read back")
    return cached


def split_stats(train: CachedSplit) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean/std of the train cache, from ``train_<S>.stats.json`` or computed in chunks once."""
    path = train.path.with_name(train.path.name[: -len(".npy")] + ".stats.json")
    stats = try_load_json(path)
    n = int(train.images.shape[0])
    if isinstance(stats, dict) and stats.get("n") == n and len(stats.get("mean", [])) == 3:
        return tuple(stats["mean"]), tuple(stats["std"])
    mean, std = channel_stats(train.images)
    try:
        atomic_write_json(path, {"n": n, "mean": list(mean), "std": list(std)})
    except OSError:
        pass  # a read-only cache dir still works; stats are recomputed next time
    return mean, std


def class_dirs(split_dir: Path) -> tuple[str, ...]:
    return tuple(sorted(d.name for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith(".")))


def source_dirs(root: Path) -> tuple[Path, Path]:
    """``root/train`` and ``root/val`` (or ``root/test``), or a one-line ``DataError``."""
    train_dir = root / "train"
    test_dir = next((root / s for s in ("val", "test") if (root / s).is_dir()), None)
    if not train_dir.is_dir() or test_dir is None:
        raise DataError(
            f"imagefolder not found in {root}: point --data-root at a folder with train/ and val/ "
            "(or test/), each holding one sub-folder per class (--download does not apply)"
        )
    return train_dir, test_dir


@dataclass(frozen=True)
class ImageFolderSource:
    name: str = "imagefolder"
    default_size: int = 32

    def load(self, root: str | None, download: bool, im_size: int | None) -> Dataset:
        if root is None:
            raise ConfigError(
                "imagefolder needs --data-root: a folder with train/ and val/ (or test/) class folders"
            )
        base = Path(root).expanduser()
        size = im_size if im_size is not None else self.default_size
        train = read_cache(base, "train", size)
        test = read_cache(base, "test", size)
        if train is None or test is None:
            train_dir, test_dir = source_dirs(base)
            if train is None:
                train = build_cache(base, train_dir, "train", size, class_dirs(train_dir))
            if test is None:
                test = build_cache(base, test_dir, "test", size, train.class_names)
        if test.class_names != train.class_names:
            raise DataError(f"imagefolder: the train and test caches under {base} disagree on classes")
        mean, std = split_stats(train)
        info = DatasetInfo(
            name=self.name,
            num_classes=len(train.class_names),
            channels=3,
            im_size=size,
            mean=mean,
            std=std,
            class_names=train.class_names,
        )
        return make_dataset(info, (train.images, train.labels), (test.images, test.labels))


DATASETS.register("imagefolder")(ImageFolderSource())
