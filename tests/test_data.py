"""trainables.data: reading MNIST, class-balanced nested subsets, and the errors a
damaged or missing data folder gives."""

from __future__ import annotations

import shutil
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from trainables import data as D
from trainables.data import DataError

RAW_DIR = Path(__file__).resolve().parent.parent / "data" / "MNIST" / "raw"
ARCHIVES = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
            "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]


@pytest.fixture(scope="module")
def mnist() -> D.ImageData:
    return D.load_dataset("mnist")


def class_counts(labels: np.ndarray) -> np.ndarray:
    return np.bincount(labels, minlength=10)


# ---------------------------------------------------------------- load_dataset


def test_mnist_counts_dtypes_and_shapes(mnist):
    assert mnist.name == "mnist"
    assert mnist.train_x.shape == (60_000, 28, 28)
    assert mnist.test_x.shape == (10_000, 28, 28)
    assert mnist.train_y.shape == (60_000,)
    assert mnist.test_y.shape == (10_000,)
    assert mnist.train_x.dtype == np.uint8 and mnist.test_x.dtype == np.uint8
    assert mnist.train_y.dtype == np.int64 and mnist.test_y.dtype == np.int64
    assert set(np.unique(mnist.train_y)) == set(range(10))
    assert set(np.unique(mnist.test_y)) == set(range(10))
    # The well-known MNIST class sizes (training set: 5923 zeros ... 5949 nines).
    assert class_counts(mnist.train_y).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert class_counts(mnist.test_y).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert int(mnist.train_x.max()) == 255 and int(mnist.train_x.min()) == 0
    assert mnist.mean == pytest.approx((0.1307,)) and mnist.std == pytest.approx((0.3081,))  # per channel


def test_unknown_dataset_is_a_data_error():
    with pytest.raises(DataError, match="unknown dataset 'emnist'"):
        D.load_dataset("emnist")


def _copy_archives(root: Path) -> Path:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ARCHIVES:
        shutil.copyfile(RAW_DIR / name, raw / name)
    return raw


def test_fresh_root_with_only_the_archives_is_unpacked_and_read(tmp_path, mnist):
    raw = _copy_archives(tmp_path)
    ds = D.load_dataset("mnist", root=tmp_path)
    assert (raw / "train-images-idx3-ubyte").exists()
    assert len(ds.train_y) == 60_000 and len(ds.test_y) == 10_000
    assert np.array_equal(ds.train_y, mnist.train_y)
    assert np.array_equal(ds.test_x[:100], mnist.test_x[:100])


def test_unpacked_files_with_wrong_counts_are_a_data_error(tmp_path):
    import struct

    raw = _copy_archives(tmp_path)
    D.load_dataset("mnist", root=tmp_path)  # unpacks
    labels = raw / "train-labels-idx1-ubyte"
    content = labels.read_bytes()
    # A consistent but short file: header says 50000 labels and holds 50000.
    labels.write_bytes(content[:4] + struct.pack(">i", 50_000) + content[8 : 8 + 50_000])
    with pytest.raises(DataError) as info:
        D.load_dataset("mnist", root=tmp_path)
    message = str(info.value)
    assert message.startswith(f"{raw}: expected 60000+10000 images, found 50000+10000")
    assert "delete the files without .gz" in message


def test_gensweep_data_environment_variable_moves_the_data_root(tmp_path, monkeypatch):
    monkeypatch.setenv("GENSWEEP_DATA", str(tmp_path))
    assert D.data_root() == tmp_path
    monkeypatch.delenv("GENSWEEP_DATA")
    assert D.data_root() == RAW_DIR.parent.parent


@pytest.mark.parametrize("damaged", ["train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz"])
def test_damaged_archive_names_the_file_and_says_checksum(tmp_path, damaged):
    raw = _copy_archives(tmp_path)
    with open(raw / damaged, "r+b") as fh:
        fh.seek(100)
        fh.write(b"\x00\xff\x00\xff\x13\x37")
    with pytest.raises(DataError) as info:
        D.load_dataset("mnist", root=tmp_path)
    message = str(info.value)
    assert str(raw / damaged) in message
    assert "checksum" in message
    assert "\n" not in message


def test_missing_files_without_network_is_a_data_error_naming_the_raw_folder(tmp_path, monkeypatch):
    import torchvision.datasets.utils as tv_utils

    calls = []

    def no_network(url, *args, **kwargs):
        calls.append(url)
        raise urllib.error.URLError("network disabled in tests")

    monkeypatch.setattr(tv_utils, "download_url", no_network)
    monkeypatch.delenv("GENSWEEP_OFFLINE", raising=False)  # online: torchvision tries to download
    monkeypatch.setenv("GENSWEEP_DATA", str(tmp_path))  # the default root follows GENSWEEP_DATA
    with pytest.raises(DataError) as info:
        D.load_dataset("mnist")
    message = str(info.value)
    raw = tmp_path / "MNIST" / "raw"
    assert message.startswith(f"{raw}:")
    assert "cannot read mnist" in message
    assert "\n" not in message
    assert calls, "torchvision was expected to try (and fail) to download"


# ----------------------------------------------------------- balanced subsets


def test_balanced_order_every_prefix_is_balanced():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 10, size=2000)
    order = D.balanced_order(labels, seed=5)
    assert sorted(order.tolist()) == list(range(2000))  # a permutation
    smallest = class_counts(labels).min()
    for n in (1, 9, 10, 37, 100, 10 * smallest):
        counts = class_counts(labels[order[:n]])
        assert counts.max() - counts.min() <= 1, (n, counts)
        assert counts.sum() == n


@pytest.mark.parametrize("size", [1000, 5000])
@pytest.mark.parametrize("data_seed", [0, 7])
def test_training_subsets_are_exactly_balanced(mnist, size, data_seed):
    train_idx, val_idx = D.training_split(mnist.train_y, train_size=size, val_size=0, data_seed=data_seed)
    assert len(train_idx) == size and len(val_idx) == 0
    assert len(np.unique(train_idx)) == size
    assert class_counts(mnist.train_y[train_idx]).tolist() == [size // 10] * 10


@pytest.mark.parametrize("val_size", [0, 5000])
def test_small_subset_is_nested_in_the_larger_one(mnist, val_size):
    small, _ = D.training_split(mnist.train_y, 1000, val_size, data_seed=3)
    large, _ = D.training_split(mnist.train_y, 5000, val_size, data_seed=3)
    assert set(small.tolist()) <= set(large.tolist())
    assert np.array_equal(large[:1000], small)


def test_split_is_deterministic_and_depends_on_data_seed(mnist):
    a_train, a_val = D.training_split(mnist.train_y, 1000, 500, data_seed=0)
    b_train, b_val = D.training_split(mnist.train_y, 1000, 500, data_seed=0)
    c_train, c_val = D.training_split(mnist.train_y, 1000, 500, data_seed=1)
    assert np.array_equal(a_train, b_train) and np.array_equal(a_val, b_val)
    assert not np.array_equal(np.sort(a_train), np.sort(c_train))
    assert len(set(a_train.tolist()) & set(c_train.tolist())) < 500  # mostly different images
    assert not np.array_equal(a_val, c_val)


def test_validation_split_is_disjoint_balanced_and_sorted(mnist):
    train_idx, val_idx = D.training_split(mnist.train_y, 5000, 5000, data_seed=0)
    assert len(val_idx) == 5000
    assert np.all(np.diff(val_idx) > 0)
    assert not set(train_idx.tolist()) & set(val_idx.tolist())
    assert class_counts(mnist.train_y[val_idx]).tolist() == [500] * 10
    assert class_counts(mnist.train_y[train_idx]).tolist() == [500] * 10


def test_validation_split_is_drawn_independently_of_the_training_order(mnist):
    # The held-out images are not the ones the same data seed would train on first.
    first_1000, _ = D.training_split(mnist.train_y, 1000, 0, data_seed=4)
    _, val_idx = D.training_split(mnist.train_y, None, 1000, data_seed=4)
    overlap = len(set(first_1000.tolist()) & set(val_idx.tolist()))
    assert overlap < 100  # about 1000 * 1000 / 60000 = 17 by chance


def test_train_size_none_takes_every_remaining_image(mnist):
    train_idx, val_idx = D.training_split(mnist.train_y, None, 5000, data_seed=0)
    assert len(train_idx) == 55_000
    assert sorted(np.concatenate([train_idx, val_idx]).tolist()) == list(range(60_000))


def test_train_size_larger_than_available_is_a_data_error(mnist):
    with pytest.raises(DataError, match="train_size=55001 exceeds the 55000"):
        D.training_split(mnist.train_y, 55_001, 5000, data_seed=0)
    with pytest.raises(DataError, match="train_size=60001"):
        D.training_split(mnist.train_y, 60_001, 0, data_seed=0)
    with pytest.raises(DataError, match="val_size=60000 leaves no training images"):
        D.training_split(mnist.train_y, None, 60_000, data_seed=0)


def test_test_subset_is_balanced_fixed_and_sorted(mnist):
    a = D.test_subset(mnist.test_y, 1000)
    b = D.test_subset(mnist.test_y, 1000)
    assert np.array_equal(a, b)
    assert len(np.unique(a)) == 1000 and np.all(np.diff(a) > 0)
    assert class_counts(mnist.test_y[a]).tolist() == [100] * 10
    assert set(D.test_subset(mnist.test_y, 200).tolist()) <= set(a.tolist())
    assert np.array_equal(D.test_subset(mnist.test_y, None), np.arange(10_000))
    assert np.array_equal(D.test_subset(mnist.test_y, 20_000), np.arange(10_000))


# ------------------------------------------------------------------- Split


def test_split_inputs_are_normalized_float32_images(mnist):
    cpu = torch.device("cpu")
    x, y = D.as_tensor(mnist.train_x, cpu), D.as_tensor(mnist.train_y, cpu)
    idx = torch.as_tensor(D.training_split(mnist.train_y, 5000, 0, 0)[0])
    split = D.Split(x, y, idx, mnist.mean, mnist.std)
    assert len(split) == 5000
    rows = split.idx[:16]
    batch = split.inputs(rows)
    assert batch.dtype == torch.float32 and batch.shape == (16, 1, 28, 28)
    expected = (x[rows].to(torch.float32) / 255.0 - mnist.mean[0]) / mnist.std[0]
    assert torch.allclose(batch[:, 0], expected, atol=1e-5)
    assert torch.equal(split.labels(rows), y[rows])
    many = split.inputs(split.idx)
    assert abs(float(many.mean())) < 0.02
    assert abs(float(many.std()) - 1.0) < 0.02
    # The shared uint8 array is untouched (normalization works on a copy).
    assert x.dtype == torch.uint8 and int(x[rows].max()) == 255
