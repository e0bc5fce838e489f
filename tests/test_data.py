"""hpcdd.data: bundled sets, idx/CIFAR/SVHN fixtures in torchvision layouts, imagefolder cache."""

from __future__ import annotations

import gzip
import pickle
import shutil
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hpcdd.data import DATASETS, ClassBank, Dataset, DatasetInfo, ImageSet, load_dataset
from hpcdd.data import imagefolder as imagefolder_mod
from hpcdd.data.base import per_class_split
from hpcdd.errors import ConfigError, DataError

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset("digits")


@pytest.fixture(scope="module")
def mnist5k() -> Dataset:
    return load_dataset("mnist5k")


def check_dataset(ds: Dataset, n_train: int, n_test: int, channels: int, size: int, classes: int) -> None:
    assert isinstance(ds.info, DatasetInfo) and isinstance(ds.train, ClassBank)
    assert isinstance(ds.test, ImageSet) and ds.train.info is ds.info
    assert (len(ds.train), len(ds.test)) == (n_train, n_test)
    assert (ds.info.num_classes, ds.info.channels, ds.info.im_size) == (classes, channels, size)
    assert len(ds.info.class_names) == classes
    assert len(ds.info.mean) == len(ds.info.std) == channels
    for split in (ds.train, ds.test):
        assert tuple(split.data.shape) == (len(split), channels, size, size)
        assert split.data.dtype in (torch.uint8, np.uint8)
        assert split.labels.dtype == torch.int64 and split.labels.shape == (len(split),)
        assert int(split.labels.min()) >= 0 and int(split.labels.max()) < classes
    x = ds.train.images(torch.tensor([0, 1, 2]))
    assert x.dtype == torch.float32 and x.shape == (3, channels, size, size)
    first = ds.train.data[:3]
    raw = (first.clone() if isinstance(first, torch.Tensor) else torch.from_numpy(np.array(first))).float() / 255
    mean = torch.tensor(ds.info.mean).view(1, -1, 1, 1)
    std = torch.tensor(ds.info.std).view(1, -1, 1, 1)
    torch.testing.assert_close(x, (raw - mean) / std)


def check_class_indices(bank: ClassBank) -> None:
    assert len(bank.class_indices) == bank.info.num_classes
    allidx = torch.cat(bank.class_indices)
    assert torch.equal(torch.sort(allidx).values, torch.arange(len(bank)))
    for c, idx in enumerate(bank.class_indices):
        assert idx.dtype == torch.int64
        assert torch.equal(idx, torch.sort(idx).values)
        assert bool((bank.labels[idx] == c).all())


# ------------------------------------------------------------------------------ bundled sets


def test_digits(digits: Dataset) -> None:
    check_dataset(digits, 1438, 359, 1, 28, 10)
    check_class_indices(digits.train)
    x = torch.cat([b for b, _ in digits.train.batches(500)])
    assert abs(float(x.mean())) < 1e-4 and abs(float(x.std()) - 1.0) < 1e-3  # train mean/std
    assert digits.info.class_names == tuple("0123456789")


def test_digits_matches_sklearn_and_loads_fast() -> None:
    from sklearn.datasets import load_digits

    from hpcdd.data.sources import digits_arrays

    bunch = load_digits()
    x, y = digits_arrays()
    np.testing.assert_array_equal(x, bunch.data)
    np.testing.assert_array_equal(y, bunch.target)
    start = time.perf_counter()
    ds = load_dataset("digits", im_size=32)
    assert time.perf_counter() - start < 1.0
    assert ds.train.data.shape == (1438, 1, 32, 32) and ds.info.im_size == 32


def test_mnist5k_fixed_split(mnist5k: Dataset) -> None:
    check_dataset(mnist5k, 4000, 1000, 1, 28, 10)
    check_class_indices(mnist5k.train)
    assert mnist5k.info.mean == (0.1307,) and mnist5k.info.std == (0.3081,)
    assert torch.bincount(mnist5k.train.labels).tolist() == [400] * 10
    assert torch.bincount(mnist5k.test.labels).tolist() == [100] * 10
    # pinned: computed once from the documented split (seed 0, classes in order, 80/20)
    from hpcdd.data.sources import mnist5k_arrays

    _, y = mnist5k_arrays()
    labels = torch.from_numpy(y)
    train_idx, test_idx = per_class_split(labels, 10)
    assert train_idx[labels[train_idx] == 3][:6].tolist() == [1500, 1501, 1503, 1504, 1505, 1506]
    assert test_idx[labels[test_idx] == 7][:6].tolist() == [3500, 3503, 3508, 3510, 3511, 3512]
    assert int(mnist5k.train.data.to(torch.int64).sum()) == 105427129
    assert int(mnist5k.test.data.to(torch.int64).sum()) == 25839973


def test_batches_in_order(mnist5k: Dataset) -> None:
    xs, ys = zip(*mnist5k.test.batches(300))
    assert [len(y) for y in ys] == [300, 300, 300, 100]
    torch.testing.assert_close(torch.cat(xs), mnist5k.test.images(torch.arange(1000)))
    assert torch.equal(torch.cat(ys), mnist5k.test.labels)


def test_sample(mnist5k: Dataset) -> None:
    bank = mnist5k.train
    a = bank.sample(4, 10, gen(1))
    assert torch.equal(a, bank.sample(4, 10, gen(1)))
    assert not torch.equal(a, bank.sample(4, 10, gen(2)))
    assert a.dtype == torch.int64 and len(set(a.tolist())) == 10
    assert bool((bank.labels[a] == 4).all())
    expected = bank.class_indices[4][torch.randperm(400, generator=gen(1))[:10]]
    assert torch.equal(a, expected)
    every = bank.sample(4, 1000, gen(3))
    assert len(every) == 400 and torch.equal(torch.sort(every).values, bank.class_indices[4])
    imgs = bank.class_images(4, 10, gen(1))
    torch.testing.assert_close(imgs, bank.images(a))


# --------------------------------------------------------------------------- errors / registry


def test_registry_names_and_unknown() -> None:
    for name in ("fashionmnist", "mnist", "mnist5k", "digits", "cifar10", "cifar100", "svhn", "imagefolder"):
        assert name in DATASETS and DATASETS.get(name).name == name
    with pytest.raises(ConfigError, match="unknown dataset"):
        load_dataset("nope")
    with pytest.raises(ConfigError):
        load_dataset("imagefolder")  # needs a root


@pytest.mark.parametrize("name", ["fashionmnist", "mnist", "cifar10", "cifar100", "svhn", "imagefolder"])
def test_missing_data_raises_one_line(name: str, tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        load_dataset(name, root=str(tmp_path))
    msg = str(info.value)
    assert "--download" in msg and "\n" not in msg and msg.startswith(name)


def test_failed_download_is_a_data_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets as tvd

    def offline(*args: object, **kwargs: object) -> None:
        raise RuntimeError("Error downloading\nno network")

    monkeypatch.setattr(tvd, "CIFAR10", offline)
    with pytest.raises(DataError, match="downloading cifar10 into .* failed: Error downloading no network"):
        load_dataset("cifar10", root=str(tmp_path), download=True)


# ----------------------------------------------------------------------- idx (MNIST format)


def idx_bytes(arr: np.ndarray) -> bytes:
    return bytes([0, 0, 8, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def write_idx_set(folder: Path, n_train: int, n_test: int, compress: bool) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        arrays[f"{prefix}-images-idx3-ubyte"] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        arrays[f"{prefix}-labels-idx1-ubyte"] = (np.arange(n) % 10).astype(np.uint8)
    for stem, arr in arrays.items():
        data = idx_bytes(arr)
        if compress:
            (folder / f"{stem}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / stem).write_bytes(data)
    return arrays


@pytest.mark.parametrize("compress", [True, False])
def test_fashionmnist_torchvision_layout(tmp_path: Path, compress: bool) -> None:
    arrays = write_idx_set(tmp_path / "FashionMNIST" / "raw", 30, 20, compress)
    ds = load_dataset("fashionmnist", root=str(tmp_path))
    check_dataset(ds, 30, 20, 1, 28, 10)
    assert np.array_equal(ds.train.data[:, 0].numpy(), arrays["train-images-idx3-ubyte"])
    assert ds.test.labels.tolist() == (np.arange(20) % 10).tolist()
    import torchvision.datasets as tvd

    assert list(ds.info.class_names) == tvd.FashionMNIST.classes
    assert ds.info.mean == (0.2861,) and ds.info.std == (0.3530,)
    small = load_dataset("fashionmnist", root=str(tmp_path), im_size=16)
    assert small.train.data.shape == (30, 1, 16, 16)


def test_mnist_torchvision_root(tmp_path: Path) -> None:
    arrays = write_idx_set(tmp_path / "MNIST" / "raw", 20, 10, True)
    ds = load_dataset("mnist", root=str(tmp_path))
    check_dataset(ds, 20, 10, 1, 28, 10)
    assert np.array_equal(ds.test.data[:, 0].numpy(), arrays["t10k-images-idx3-ubyte"])
    import torchvision.datasets as tvd

    assert list(ds.info.class_names) == tvd.MNIST.classes
    assert ds.info.mean == (0.1307,) and ds.info.std == (0.3081,)


def test_download_goes_through_torchvision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets as tvd

    calls: list[tuple] = []

    def fake_fashion(root: str, train: bool, download: bool) -> None:
        calls.append((root, train, download))
        write_idx_set(Path(root) / "FashionMNIST" / "raw", 10, 10, True)

    monkeypatch.setattr(tvd, "FashionMNIST", fake_fashion)
    ds = load_dataset("fashionmnist", root=str(tmp_path / "dl"), download=True)
    assert calls == [(str(tmp_path / "dl"), True, True)] and len(ds.train) == 10


def test_corrupt_idx_is_a_data_error(tmp_path: Path) -> None:
    write_idx_set(tmp_path, 10, 10, True)
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x03" + b"\x00" * 20))
    with pytest.raises(DataError):
        load_dataset("fashionmnist", root=str(tmp_path))


@pytest.mark.skipif(not FASHION_DIR.is_dir(), reason="needs Debian package dataset-fashion-mnist")
def test_fashionmnist_system_copy() -> None:
    start = time.perf_counter()
    ds = load_dataset("fashionmnist")
    elapsed = time.perf_counter() - start
    check_dataset(ds, 60000, 10000, 1, 28, 10)
    check_class_indices(ds.train)
    assert [len(i) for i in ds.train.class_indices] == [6000] * 10
    assert torch.bincount(ds.test.labels).tolist() == [1000] * 10
    x = torch.cat([b for b, _ in ds.train.batches(20000)])
    assert abs(float(x.mean())) < 0.01 and abs(float(x.std()) - 1.0) < 0.01
    assert elapsed < 5.0, f"fashionmnist took {elapsed:.1f} s to load"


# ------------------------------------------------------------------------------- CIFAR / SVHN


def write_pickle(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def cifar_batch(rng: np.random.Generator, n: int, label_key: bytes, classes: int) -> dict:
    return {
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        label_key: [int(v) for v in rng.integers(0, classes, n)],
    }


def test_cifar10_fixture(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-10-batches-py"
    batches = [cifar_batch(rng, 4, b"labels", 10) for _ in range(5)]
    for i, b in enumerate(batches, start=1):
        write_pickle(folder / f"data_batch_{i}", b)
    write_pickle(folder / "test_batch", cifar_batch(rng, 3, b"labels", 10))
    words = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
    names = [n.encode() for n in words]
    write_pickle(folder / "batches.meta", {b"label_names": names, b"num_vis": 3072})
    ds = load_dataset("cifar10", root=str(tmp_path))
    check_dataset(ds, 20, 3, 3, 32, 10)
    assert ds.info.class_names[0] == "airplane" and ds.info.class_names[-1] == "truck"
    assert ds.info.mean == (0.4914, 0.4822, 0.4465) and ds.info.std == (0.2023, 0.1994, 0.2010)
    assert np.array_equal(ds.train.data[4].numpy(), batches[1][b"data"][0].reshape(3, 32, 32))
    assert ds.train.labels[4:8].tolist() == batches[1][b"labels"]


def test_cifar100_fixture(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    folder = tmp_path / "cifar-100-python"
    train = cifar_batch(rng, 6, b"fine_labels", 100)
    write_pickle(folder / "train", train)
    write_pickle(folder / "test", cifar_batch(rng, 2, b"fine_labels", 100))
    write_pickle(folder / "meta", {b"fine_label_names": [f"c{i}".encode() for i in range(100)]})
    ds = load_dataset("cifar100", root=str(tmp_path), im_size=16)
    check_dataset(ds, 6, 2, 3, 16, 100)
    assert ds.train.labels.tolist() == train[b"fine_labels"] and ds.info.class_names[7] == "c7"
    assert ds.info.mean == (0.5071, 0.4866, 0.4409)


def test_svhn_fixture(tmp_path: Path) -> None:
    import scipy.io

    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, (32, 32, 3, 5), dtype=np.uint8)
    y = np.array([[10], [1], [2], [9], [10]], dtype=np.uint8)
    scipy.io.savemat(tmp_path / "train_32x32.mat", {"X": x, "y": y})
    scipy.io.savemat(tmp_path / "test_32x32.mat", {"X": x[..., :2], "y": y[:2]})
    ds = load_dataset("svhn", root=str(tmp_path))
    check_dataset(ds, 5, 2, 3, 32, 10)
    assert ds.train.labels.tolist() == [0, 1, 2, 9, 0]
    assert np.array_equal(ds.train.data[1].numpy(), np.transpose(x[..., 1], (2, 0, 1)))
    assert ds.info.std == (0.1980, 0.2010, 0.1970)


# --------------------------------------------------------------------------------- imagefolder

COLOURS = {"cat": (255, 0, 0), "dog": (0, 255, 0), "eel": (0, 0, 255)}


def write_tree(root: Path, test_name: str = "val") -> dict[str, int]:
    """Solid-colour PNGs of three classes in varied sizes/modes; returns image counts per split."""
    counts = {"train": 0, test_name: 0}
    for split, per_class in (("train", 4), (test_name, 2)):
        for name, colour in COLOURS.items():
            folder = root / split / name
            for i in range(per_class):
                sub = folder / "nested" if i == 3 else folder
                sub.mkdir(parents=True, exist_ok=True)
                img = Image.new("RGB", (10 + 3 * i, 12 + i), colour)
                if i == 1:
                    img = img.convert("RGBA")
                img.save(sub / f"{name}_{i}.png")
                counts[split] += 1
            (folder / "notes.txt").write_text("not an image")
    return counts


def expected_colours(labels: torch.Tensor) -> np.ndarray:
    table = np.array(list(COLOURS.values()), dtype=np.uint8)
    return np.broadcast_to(table[labels.numpy()][:, :, None, None], (len(labels), 3, 8, 8))


def count_decodes(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    seen: list[Path] = []
    real = imagefolder_mod.decode

    def counting(path: Path, size: int) -> np.ndarray:
        seen.append(path)
        return real(path, size)

    monkeypatch.setattr(imagefolder_mod, "decode", counting)
    return seen


def test_imagefolder_builds_and_reuses_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    counts = write_tree(tmp_path)
    decoded = count_decodes(monkeypatch)
    ds = load_dataset("imagefolder", root=str(tmp_path), im_size=8)
    assert len(decoded) == counts["train"] + counts["val"] == 18
    check_dataset(ds, 12, 6, 3, 8, 3)
    check_class_indices(ds.train)
    assert ds.info.class_names == ("cat", "dog", "eel")
    assert isinstance(ds.train.data, np.memmap) and isinstance(ds.test.data, np.memmap)
    assert ds.train.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    np.testing.assert_array_equal(np.asarray(ds.train.data), expected_colours(ds.train.labels))
    np.testing.assert_array_equal(np.asarray(ds.test.data), expected_colours(ds.test.labels))
    pixels = torch.from_numpy(np.array(ds.train.data)).double() / 255
    torch.testing.assert_close(torch.tensor(ds.info.mean, dtype=torch.float64), pixels.mean(dim=(0, 2, 3)))
    torch.testing.assert_close(
        torch.tensor(ds.info.std, dtype=torch.float64), pixels.std(dim=(0, 2, 3), unbiased=False)
    )
    cache = tmp_path / ".hpcdd_cache"
    for name in ("train_8.npy", "train_8.labels.npy", "train_8.json", "train_8.stats.json", "test_8.npy"):
        assert (cache / name).is_file(), name
    assert not [p for p in cache.iterdir() if p.name.endswith(".tmp")]

    idx = ds.train.sample(2, 3, gen(5))
    assert bool((ds.train.labels[idx] == 2).all()) and torch.equal(idx, ds.train.sample(2, 3, gen(5)))
    unordered = torch.tensor([11, 0, 5, 0])
    expected = ds.train.normalize(torch.from_numpy(np.array(ds.train.data[[11, 0, 5, 0]])))
    torch.testing.assert_close(ds.train.images(unordered), expected)

    # second load: served from the memmap cache, nothing decoded, even with the sources gone
    shutil.rmtree(tmp_path / "train")
    shutil.rmtree(tmp_path / "val")
    decoded.clear()
    again = load_dataset("imagefolder", root=str(tmp_path), im_size=8)
    assert decoded == [] and isinstance(again.train.data, np.memmap)
    assert np.array_equal(np.asarray(again.train.data), np.asarray(ds.train.data))
    assert again.info == ds.info
    with pytest.raises(DataError, match="imagefolder not found"):
        load_dataset("imagefolder", root=str(tmp_path), im_size=16)  # other size, no sources


def test_imagefolder_ignores_half_written_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_tree(tmp_path, test_name="test")
    load_dataset("imagefolder", root=str(tmp_path), im_size=8)
    cache = tmp_path / ".hpcdd_cache"
    # a crash before the commit marker: the json is missing, the images file truncated
    (cache / "train_8.json").unlink()
    data = (cache / "train_8.npy").read_bytes()
    (cache / "train_8.npy").write_bytes(data[: len(data) // 2])
    # a committed-looking test cache whose images file is truncated is not trusted either
    test_data = (cache / "test_8.npy").read_bytes()
    (cache / "test_8.npy").write_bytes(test_data[:-10])
    (cache / ".train_8.npy.junk.tmp").write_bytes(b"leftover")
    decoded = count_decodes(monkeypatch)
    ds = load_dataset("imagefolder", root=str(tmp_path), im_size=8)
    assert len(decoded) == 18
    check_dataset(ds, 12, 6, 3, 8, 3)
    np.testing.assert_array_equal(np.asarray(ds.train.data), expected_colours(ds.train.labels))


def test_imagefolder_unknown_test_class(tmp_path: Path) -> None:
    write_tree(tmp_path)
    extra = tmp_path / "val" / "fox"
    extra.mkdir()
    Image.new("RGB", (4, 4)).save(extra / "fox.png")
    with pytest.raises(DataError, match="fox"):
        load_dataset("imagefolder", root=str(tmp_path), im_size=8)


def test_imagefolder_undecodable_image(tmp_path: Path) -> None:
    write_tree(tmp_path)
    (tmp_path / "train" / "cat" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="broken.png"):
        load_dataset("imagefolder", root=str(tmp_path), im_size=8)
    assert not (tmp_path / ".hpcdd_cache" / "train_8.json").exists()
    assert not [p for p in (tmp_path / ".hpcdd_cache").iterdir() if p.suffix == ".tmp"]


STATS_AT = """
import sys, torch
torch.set_num_threads(int(sys.argv[1]))
from hpcdd.data.base import channel_stats
g = torch.Generator().manual_seed(0)
x = torch.randint(0, 256, (20000, 3, 32, 32), generator=g, dtype=torch.uint8)
print(repr(channel_stats(x)))
from hpcdd.data import load_dataset
print(repr(load_dataset("digits").info.mean), repr(load_dataset("digits").info.std))
"""


def test_normalisation_statistics_do_not_depend_on_the_thread_count() -> None:
    """Exact integer sums: the same mean/std, bit for bit, at 1 and 2 torch threads (a float
    reduction's order depends on the thread count, and with it every normalised image)."""
    import subprocess
    import sys

    outs = [subprocess.run([sys.executable, "-c", STATS_AT, str(t)], capture_output=True, text=True,
                           check=True).stdout for t in (1, 2)]
    assert outs[0] == outs[1] and outs[0].strip()
    mean, std = eval(outs[0].splitlines()[0])
    x = torch.randint(0, 256, (20000, 3, 32, 32), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    count = 20000 * 32 * 32
    exact = tuple(int(x[:, c].to(torch.int64).sum()) / (count * 255) for c in range(3))  # correctly rounded
    assert mean == exact
    ref = x.to(torch.float64).div(255)
    torch.testing.assert_close(torch.tensor(std, dtype=torch.float64), ref.std(dim=(0, 2, 3), unbiased=False),
                               rtol=1e-12, atol=0)
