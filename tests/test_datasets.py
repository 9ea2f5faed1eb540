"""trainables.data beyond MNIST: the built-in torchvision datasets read from tiny
files in their real on-disk formats (CIFAR-10's pickled batches, KMNIST's idx .gz,
SVHN's .mat) by torchvision's own classes, the offline errors, .npz files (checks,
conversions, the header cache), dataset references, the plugin registry, and MNIST's
normalization unchanged bit for bit. No network: GENSWEEP_OFFLINE=1 throughout, or
the download function replaced.

    .venv/bin/python -m pytest -q tests/test_datasets.py
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
import pickle
import struct
import tarfile
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from trainables import data as D
from trainables.data import DataError

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("GENSWEEP_OFFLINE", "1")


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def shrink(monkeypatch, name: str, train_count: int, test_count: int) -> None:
    """Register the built-in `name` with tiny counts (its loader checks them)."""
    entry = D.DATASETS[name]
    info = dataclasses.replace(entry.info, train_count=train_count, test_count=test_count)
    source = dataclasses.replace(entry.source, info=info)
    monkeypatch.setitem(D.DATASETS, name, D.Dataset(name, info, source.load))


def one_line_error(call, *args, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        call(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message, message
    return message


def check_inputs_normalized_per_channel(ds: D.ImageData, rows: int = 4) -> None:
    split = D.Split(D.as_tensor(ds.train_x, CPU), D.as_tensor(ds.train_y, CPU), torch.arange(rows), ds.mean, ds.std)
    batch = split.inputs(split.idx)
    assert batch.dtype == torch.float32 and batch.shape == (rows, *ds.input_shape)
    unit = 255.0 if ds.train_x.dtype == np.uint8 else 1.0
    x = ds.train_x[:rows].astype(np.float64).reshape(rows, *ds.input_shape) / unit
    expected = (x - np.array(ds.mean)[None, :, None, None]) / np.array(ds.std)[None, :, None, None]
    assert np.allclose(batch.numpy(), expected, atol=1e-5)


# ------------------------------------------------------------------- CIFAR-10

CIFAR_BATCH, CIFAR_TEST = 3, 4  # images per training batch (5 of them), test images


class Py2Pickler(pickle._Pickler):
    """Writes str and bytes as Python 2's one string type (SHORT_BINSTRING /
    BINSTRING), as CIFAR-10's files (pickled by Python 2) hold their keys and the
    arrays' pixel data: read with encoding="bytes" the keys are b"data", b"labels";
    torchvision reads them with encoding="latin1", which gives str keys."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj: str | bytes) -> None:
        data = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[str] = dispatch[bytes] = save_py2_str


def write_py2_pickle(path: Path, obj: dict) -> None:
    with open(path, "wb") as fh:
        Py2Pickler(fh, protocol=2).dump(obj)


def write_cifar(root: Path, monkeypatch, seed: int = 0) -> tuple[np.ndarray, list[int], np.ndarray, list[int]]:
    """CIFAR-10's python version: Python 2 pickles of dicts with b"data" uint8
    [n, 3072] (the R, G and B planes, each 32x32 row-major) and b"labels"."""
    from torchvision.datasets import CIFAR10

    folder = root / "CIFAR10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    arrays, labels = {}, {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        n = CIFAR_TEST if name == "test_batch" else CIFAR_BATCH
        arrays[name] = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels[name] = rng.integers(0, 10, size=n).tolist()
        write_py2_pickle(folder / name, {"batch_label": f"{name} of 5", "labels": labels[name], "data": arrays[name],
                                         "filenames": [f"img_{i}.png" for i in range(n)]})
    write_py2_pickle(folder / "batches.meta", {
        "label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"],
        "num_cases_per_batch": CIFAR_BATCH, "num_vis": 3072})
    train = [f"data_batch_{i}" for i in range(1, 6)]
    monkeypatch.setattr(CIFAR10, "train_list", [[n, md5(folder / n)] for n in train])
    monkeypatch.setattr(CIFAR10, "test_list", [["test_batch", md5(folder / "test_batch")]])
    monkeypatch.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": md5(folder / "batches.meta")})
    shrink(monkeypatch, "cifar10", 5 * CIFAR_BATCH, CIFAR_TEST)
    return (np.concatenate([arrays[n] for n in train]), [label for n in train for label in labels[n]],
            arrays["test_batch"], labels["test_batch"])


def test_cifar10_reads_the_pickled_batches_channels_first(tmp_path, monkeypatch):
    train_rows, train_labels, test_rows, test_labels = write_cifar(tmp_path, monkeypatch)
    with open(tmp_path / "CIFAR10" / "cifar-10-batches-py" / "data_batch_1", "rb") as fh:
        batch = pickle.load(fh, encoding="bytes")  # the files' own view: Python 2 byte-string keys
    assert batch[b"data"].dtype == np.uint8 and batch[b"data"].shape == (CIFAR_BATCH, 3072)
    assert batch[b"labels"] == train_labels[:CIFAR_BATCH]
    ds = D.load_dataset("cifar10", root=tmp_path)
    assert ds.name == "cifar10" and ds.input_shape == (3, 32, 32) and ds.num_classes == 10
    assert ds.train_x.shape == (15, 3, 32, 32) and ds.test_x.shape == (4, 3, 32, 32)
    assert ds.train_x.dtype == np.uint8 and ds.train_x.flags.c_contiguous and ds.test_x.flags.c_contiguous
    assert ds.train_y.dtype == np.int64 and ds.train_y.tolist() == train_labels and ds.test_y.tolist() == test_labels
    # a known pixel: image 4 (the second of data_batch_2), blue plane, row 5, column 7
    assert ds.train_x[4, 2, 5, 7] == train_rows[4, 2 * 1024 + 5 * 32 + 7]
    assert np.array_equal(ds.train_x, train_rows.reshape(-1, 3, 32, 32))
    assert np.array_equal(ds.test_x, test_rows.reshape(-1, 3, 32, 32))
    assert ds.mean == pytest.approx((0.4914, 0.4822, 0.4465)) and ds.std == pytest.approx((0.2470, 0.2435, 0.2616))
    assert ds.info() == D.dataset_info("cifar10")
    check_inputs_normalized_per_channel(ds)


def test_cifar10_archive_alone_is_unpacked_offline(tmp_path, monkeypatch):
    from torchvision.datasets import CIFAR10

    train_rows, *_ = write_cifar(tmp_path, monkeypatch)
    folder = tmp_path / "CIFAR10"
    with tarfile.open(folder / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(folder / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    for member in (folder / "cifar-10-batches-py").iterdir():
        member.unlink()
    monkeypatch.setattr(CIFAR10, "tgz_md5", md5(folder / "cifar-10-python.tar.gz"))
    ds = D.load_dataset("cifar10", root=tmp_path)
    assert np.array_equal(ds.train_x, train_rows.reshape(-1, 3, 32, 32))


def test_cifar10_missing_offline_names_the_folder_and_files(tmp_path):
    message = one_line_error(D.load_dataset, "cifar10", root=tmp_path)
    assert message == (f"{tmp_path}/CIFAR10: cannot read cifar10: missing cifar-10-python.tar.gz (or its unpacked "
                       f"cifar-10-batches-py/), and GENSWEEP_OFFLINE=1 forbids downloading; put the file(s) there "
                       f"or set GENSWEEP_DATA to a folder holding CIFAR10/")


def test_cifar10_download_failure_is_one_line(tmp_path, monkeypatch):
    import torchvision.datasets.utils as tv_utils

    calls = []

    def no_network(url, *args, **kwargs):
        calls.append(url)
        raise urllib.error.URLError("network disabled in tests")

    monkeypatch.delenv("GENSWEEP_OFFLINE")
    monkeypatch.setattr(tv_utils, "download_url", no_network)
    monkeypatch.setenv("GENSWEEP_DATA", str(tmp_path))
    message = one_line_error(D.load_dataset, "cifar10")
    assert message.startswith(f"{tmp_path}/CIFAR10: cannot read cifar10: missing cifar-10-python.tar.gz")
    assert "downloading failed (<urlopen error network disabled in tests>)" in message
    assert calls, "torchvision was expected to try (and fail) to download"


def test_cifar10_one_batch_missing_or_damaged(tmp_path, monkeypatch):
    write_cifar(tmp_path, monkeypatch)
    batches = tmp_path / "CIFAR10" / "cifar-10-batches-py"
    content = (batches / "data_batch_2").read_bytes()
    (batches / "data_batch_2").write_bytes(content[:-10] + b"\x00" * 10)
    message = one_line_error(D.load_dataset, "cifar10", root=tmp_path)
    assert message.startswith(f"{batches / 'data_batch_2'}: checksum mismatch")
    (batches / "data_batch_2").unlink()
    message = one_line_error(D.load_dataset, "cifar10", root=tmp_path)
    assert "missing cifar-10-batches-py/data_batch_2 (or cifar-10-python.tar.gz)" in message


# --------------------------------------------------------------------- KMNIST


def write_idx_gz(path: Path, array: np.ndarray) -> None:
    """The idx format: magic (0x0803 images / 0x0801 labels), big-endian dims, uint8 data."""
    header = struct.pack(">I", 0x800 + array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.astype(np.uint8).tobytes())


def write_kmnist(root: Path, monkeypatch) -> dict[str, np.ndarray]:
    from torchvision.datasets import KMNIST

    raw = root / "KMNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(1)
    arrays = {"train-images-idx3-ubyte": rng.integers(0, 256, (12, 28, 28)),
              "train-labels-idx1-ubyte": rng.integers(0, 10, 12),
              "t10k-images-idx3-ubyte": rng.integers(0, 256, (5, 28, 28)),
              "t10k-labels-idx1-ubyte": rng.integers(0, 10, 5)}
    for name, array in arrays.items():
        write_idx_gz(raw / f"{name}.gz", array)
    monkeypatch.setattr(KMNIST, "resources", [(f"{n}.gz", md5(raw / f"{n}.gz")) for n in arrays])
    shrink(monkeypatch, "kmnist", 12, 5)
    return arrays


def test_kmnist_reads_the_idx_files(tmp_path, monkeypatch):
    arrays = write_kmnist(tmp_path, monkeypatch)
    ds = D.load_dataset("kmnist", root=tmp_path)
    assert ds.train_x.shape == (12, 28, 28) and ds.test_x.shape == (5, 28, 28) and ds.train_x.dtype == np.uint8
    assert ds.input_shape == (1, 28, 28) and ds.num_classes == 10
    assert ds.train_x[3, 10, 20] == arrays["train-images-idx3-ubyte"][3, 10, 20]
    assert np.array_equal(ds.test_x, arrays["t10k-images-idx3-ubyte"])
    assert ds.train_y.dtype == np.int64 and ds.train_y.tolist() == arrays["train-labels-idx1-ubyte"].tolist()
    assert ds.mean == pytest.approx((0.1918,)) and ds.std == pytest.approx((0.3483,))
    assert (tmp_path / "KMNIST" / "raw" / "train-images-idx3-ubyte").exists()  # unpacked offline
    check_inputs_normalized_per_channel(ds)


def test_kmnist_missing_offline_names_the_raw_folder_and_files(tmp_path):
    message = one_line_error(D.load_dataset, "kmnist", root=tmp_path)
    assert message.startswith(f"{tmp_path}/KMNIST/raw: cannot read kmnist: missing train-images-idx3-ubyte.gz, "
                              f"train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz, "
                              f"and GENSWEEP_OFFLINE=1 forbids downloading")
    assert message.endswith("or set GENSWEEP_DATA to a folder holding KMNIST/raw/")


# ----------------------------------------------------------------------- SVHN


def write_svhn(root: Path, monkeypatch) -> dict[str, dict[str, np.ndarray]]:
    """SVHN's cropped digits: a MATLAB file per split, X uint8 [32, 32, 3, n] and
    y [n, 1] with 10 for the digit 0."""
    import scipy.io
    from torchvision.datasets import SVHN

    folder = root / "SVHN"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(2)
    mats = {}
    for split, n in (("train", 6), ("test", 3)):
        y = rng.integers(1, 11, size=(n, 1)).astype(np.uint8)
        y[0] = 10
        mats[split] = {"X": rng.integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8), "y": y}
        scipy.io.savemat(folder / f"{split}_32x32.mat", mats[split])
    monkeypatch.setattr(SVHN, "split_list", {
        **SVHN.split_list,
        **{s: [SVHN.split_list[s][0], f"{s}_32x32.mat", md5(folder / f"{s}_32x32.mat")] for s in mats}})
    shrink(monkeypatch, "svhn", 6, 3)
    return mats


def test_svhn_reads_the_mat_files_with_label_10_as_0(tmp_path, monkeypatch):
    mats = write_svhn(tmp_path, monkeypatch)
    ds = D.load_dataset("svhn", root=tmp_path)
    assert ds.train_x.shape == (6, 3, 32, 32) and ds.test_x.shape == (3, 3, 32, 32)
    assert ds.train_x.dtype == np.uint8 and ds.train_x.flags.c_contiguous
    assert ds.input_shape == (3, 32, 32) and ds.num_classes == 10
    expected = mats["train"]["y"][:, 0].astype(np.int64) % 10
    assert ds.train_y.dtype == np.int64 and ds.train_y.tolist() == expected.tolist() and ds.train_y[0] == 0
    # X[row, column, channel, image] is image's [channel, row, column]
    assert ds.train_x[1, 2, 5, 7] == mats["train"]["X"][5, 7, 2, 1]
    assert np.array_equal(ds.test_x, mats["test"]["X"].transpose(3, 2, 0, 1))
    assert ds.mean == pytest.approx((0.4377, 0.4438, 0.4728))
    check_inputs_normalized_per_channel(ds)


def test_svhn_missing_offline_names_the_folder_and_files(tmp_path):
    message = one_line_error(D.load_dataset, "svhn", root=tmp_path)
    assert message.startswith(f"{tmp_path}/SVHN: cannot read svhn: missing train_32x32.mat, test_32x32.mat, "
                              f"and GENSWEEP_OFFLINE=1 forbids downloading")


# ---------------------------------------------------------------------- MNIST


def test_mnist_offline_with_only_the_archives_never_downloads(tmp_path, monkeypatch, mnist):
    import shutil

    import torchvision.datasets.utils as tv_utils

    monkeypatch.setattr(tv_utils, "download_url", lambda *a, **k: pytest.fail("offline must not download"))
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for archive in (D.REPO_DATA_DIR / "MNIST" / "raw").glob("*.gz"):
        shutil.copyfile(archive, raw / archive.name)
    ds = D.load_dataset("mnist", root=tmp_path)
    assert np.array_equal(ds.train_x, mnist.train_x) and np.array_equal(ds.test_y, mnist.test_y)
    (raw / "t10k-labels-idx1-ubyte.gz").unlink()
    (raw / "t10k-labels-idx1-ubyte").unlink()
    message = one_line_error(D.load_dataset, "mnist", root=tmp_path)
    assert message.startswith(f"{raw}: cannot read mnist: missing t10k-labels-idx1-ubyte.gz, and GENSWEEP_OFFLINE=1 "
                              f"forbids downloading; put the file(s) there (restore it with `git checkout")


def test_mnist_inputs_are_bit_identical_to_the_old_formula(mnist):
    from trainables.numpy_mlp import ArraySplit

    x, y = D.as_tensor(mnist.train_x, CPU), D.as_tensor(mnist.train_y, CPU)
    split = D.Split(x, y, torch.arange(60_000), mnist.mean, mnist.std)
    rows = torch.as_tensor(D.training_split(mnist.train_y, 512, 0, data_seed=3)[0])
    old = x[rows].unsqueeze(1).to(torch.float32).sub_(255.0 * 0.1307).div_(255.0 * 0.3081)
    assert torch.equal(split.inputs(rows), old)
    # the old scalar form of Split still works, and gives the same
    assert torch.equal(D.Split(x, y, rows, 0.1307, 0.3081).inputs(rows), old)
    arrays, r = ArraySplit(split), rows.numpy()
    old_np = (mnist.train_x.reshape(60_000, 784)[r].astype(np.float32) - np.float32(255.0 * 0.1307)) \
        / np.float32(255.0 * 0.3081)
    assert np.array_equal(arrays.inputs(r), old_np)


def test_array_split_normalizes_per_channel():
    from trainables.numpy_mlp import ArraySplit

    x = torch.randint(0, 256, (6, 3, 4, 5), dtype=torch.uint8)
    split = D.Split(x, torch.zeros(6, dtype=torch.int64), torch.arange(6), (0.1, 0.5, 0.9), (0.2, 0.3, 0.4))
    arrays = ArraySplit(split)
    assert np.allclose(arrays.inputs(np.arange(6)), split.inputs(split.idx).reshape(6, -1).numpy(), atol=1e-5)


def test_float_split_never_writes_the_shared_array():
    x = torch.rand(5, 2, 3, 3)
    before = x.clone()
    split = D.Split(x, torch.zeros(5, dtype=torch.int64), torch.arange(5), (0.5, 0.25), (2.0, 4.0))
    out = split.inputs(slice(0, 5))  # a slice is a view of x
    assert torch.allclose(out[:, 1], (before[:, 1] - 0.25) / 4.0)
    split.inputs(torch.arange(5))
    assert torch.equal(x, before)


# ---------------------------------------------------------------------- .npz


def save_npz(path: Path, compressed: bool = False, **arrays) -> str:
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    return D.NPZ_PREFIX + str(path)


def image_set(rng, n_train=20, n_test=8, shape=(8, 8), classes=4, dtype=np.uint8) -> dict[str, np.ndarray]:
    def images(n):
        if dtype == np.uint8:
            return rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
        return rng.normal(3.0, 2.0, size=(n, *shape)).astype(dtype)

    train_y = np.arange(n_train) % classes
    return {"train_x": images(n_train), "train_y": train_y, "test_x": images(n_test),
            "test_y": np.arange(n_test) % classes}


def test_npz_uint8_one_channel(tmp_path):
    arrays = image_set(np.random.default_rng(0))
    ref = save_npz(tmp_path / "digits.npz", **arrays)
    info = D.dataset_info(ref)
    assert info == D.DatasetInfo((1, 8, 8), 4, 20, 8)
    ds = D.load_dataset(ref)
    assert ds.name == ref and ds.info() == info and ds.num_classes == 4
    assert ds.train_x.dtype == np.uint8 and np.array_equal(ds.train_x, arrays["train_x"])
    assert ds.train_y.dtype == np.int64 and ds.train_y.flags.c_contiguous
    assert ds.mean == pytest.approx((arrays["train_x"].mean() / 255,))
    assert ds.std == pytest.approx((arrays["train_x"].std() / 255,))
    check_inputs_normalized_per_channel(ds)


def test_npz_float_channels_first_compressed(tmp_path):
    arrays = image_set(np.random.default_rng(1), shape=(3, 5, 6), dtype=np.float64)
    ref = save_npz(tmp_path / "f.npz", compressed=True, **arrays)
    ds = D.load_dataset(ref)
    assert ds.train_x.dtype == np.float32 and ds.input_shape == (3, 5, 6)
    assert np.allclose(ds.train_x, arrays["train_x"])
    assert ds.mean == pytest.approx(tuple(arrays["train_x"].mean(axis=(0, 2, 3))), rel=1e-6)  # own scale
    assert ds.std == pytest.approx(tuple(arrays["train_x"].std(axis=(0, 2, 3))), rel=1e-6)
    check_inputs_normalized_per_channel(ds)


def test_npz_channels_last_is_converted(tmp_path):
    arrays = image_set(np.random.default_rng(2), shape=(5, 6, 3))
    ref = save_npz(tmp_path / "rgb.npz", **arrays)
    assert D.dataset_info(ref).input_shape == (3, 5, 6)
    ds = D.load_dataset(ref)
    assert ds.train_x.shape == (20, 3, 5, 6) and ds.train_x.flags.c_contiguous
    assert ds.train_x[7, 2, 4, 1] == arrays["train_x"][7, 4, 1, 2]
    assert np.array_equal(ds.test_x, arrays["test_x"].transpose(0, 3, 1, 2))


def test_npz_with_100_classes(tmp_path):
    rng = np.random.default_rng(3)
    arrays = image_set(rng, n_train=300, n_test=100, shape=(4, 4), classes=100)
    ds = D.load_dataset(save_npz(tmp_path / "c100.npz", **arrays))
    assert ds.num_classes == 100 and set(ds.train_y.tolist()) == set(range(100))
    # the file may declare more classes than its labels use
    arrays["train_y"] = arrays["train_y"] % 60
    arrays["test_y"] = arrays["test_y"] % 60
    ref = save_npz(tmp_path / "declared.npz", num_classes=np.array(100), **arrays)
    assert D.dataset_info(ref).num_classes == 100 and D.load_dataset(ref).num_classes == 100


def _bad(**changes):
    """A valid file's arrays with `changes` (None removes an array)."""

    def arrays(rng):
        base = image_set(rng)
        base.update(changes)
        return {k: v for k, v in base.items() if v is not None}

    return arrays


BAD_NPZ = {
    "missing_arrays": (_bad(test_x=None, test_y=None),
                       "missing array(s) test_x, test_y (the file holds train_x, train_y)"),
    "train_lengths": (_bad(train_y=np.arange(19) % 4), "train_x has 20 images but train_y has 19 labels"),
    "test_lengths": (_bad(test_y=np.arange(9) % 4), "test_x has 8 images but test_y has 9 labels"),
    "flat_images": (_bad(train_x=np.zeros((20, 64), np.uint8)), "train_x has shape (20, 64); images are 3-d"),
    "five_d_images": (_bad(test_x=np.zeros((8, 1, 1, 8, 8), np.uint8)), "test_x has shape (8, 1, 1, 8, 8)"),
    "shapes_differ": (_bad(test_x=np.zeros((8, 9, 9), np.uint8)),
                      "train_x holds 1x8x8 images but test_x holds 1x9x9 images"),
    "int_images": (_bad(train_x=np.zeros((20, 8, 8), np.int32)),
                   "train_x has dtype int32; images are uint8 (0-255) or floating point"),
    "mixed_dtypes": (_bad(test_x=np.zeros((8, 8, 8), np.float32)), "train_x is uint8 but test_x is float32"),
    "float_labels": (_bad(train_y=np.zeros(20)), "train_y has dtype float64; labels are integers"),
    "2d_labels": (_bad(test_y=np.zeros((8, 1), np.int64)), "test_y has shape (8, 1); labels are 1-d [N]"),
    "negative_label": (_bad(train_y=np.array([0, 1, 2, -1, 3] * 4)), "train_y[3] is label -1, outside 0..3"),
    "test_label_out_of_range": (_bad(test_y=np.array([4, 0, 1, 2, 3, 0, 1, 2])),
                                "test_y[0] is label 4, outside 0..3 (num_classes 4: max(train_y) + 1)"),
    "declared_too_few": (_bad(num_classes=np.array(3)),
                         "train_y[3] is label 3, outside 0..2 (num_classes 3: the file's num_classes)"),
    "declared_not_an_int": (_bad(num_classes=np.array([10.0])), "num_classes must be one positive integer"),
}


@pytest.mark.parametrize("case", BAD_NPZ)
def test_bad_npz_is_a_one_line_data_error_naming_file_and_problem(tmp_path, case):
    make, expected = BAD_NPZ[case]
    path = tmp_path / f"{case}.npz"
    ref = save_npz(path, **make(np.random.default_rng(4)))
    for call in (D.dataset_info, D.load_dataset):
        message = one_line_error(call, ref)
        assert message.startswith(f"{path}: "), message
        assert expected in message, message


def test_npz_that_is_missing_or_not_a_zip(tmp_path):
    path = tmp_path / "nothere.npz"
    assert one_line_error(D.dataset_info, D.NPZ_PREFIX + str(path)).startswith(f"{path}: no such file")
    path.write_text("train_x,train_y\n1,2\n")
    message = one_line_error(D.load_dataset, D.NPZ_PREFIX + str(path))
    assert message.startswith(f"{path}: not an .npz file (File is not a zip file)")


def test_npz_float_images_with_nan_are_refused_at_load(tmp_path):
    arrays = image_set(np.random.default_rng(5), dtype=np.float32)
    arrays["train_x"][3, 2, 1] = np.nan
    ref = save_npz(tmp_path / "nan.npz", **arrays)
    assert D.dataset_info(ref).train_count == 20  # headers and labels are fine
    assert one_line_error(D.load_dataset, ref) == f"{tmp_path / 'nan.npz'}: train_x holds NaN or infinite values"


def test_npz_is_checked_once_per_version_of_the_file(tmp_path, monkeypatch):
    calls = []
    real = D._inspect_npz
    monkeypatch.setattr(D, "_inspect_npz", lambda path: calls.append(path) or real(path))
    path = tmp_path / "cached.npz"
    ref = save_npz(path, **image_set(np.random.default_rng(6)))
    infos = {D.dataset_info(ref) for _ in range(100)}
    D.load_dataset(ref)
    assert len(infos) == 1 and calls == [path]
    save_npz(path, **image_set(np.random.default_rng(6), n_train=24))  # rewritten: a new size and mtime
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1_000_000))
    assert D.dataset_info(ref).train_count == 24 and len(calls) == 2


# ------------------------------------------------------------- dataset_ref


def test_dataset_ref_names_and_npz_paths(tmp_path):
    assert D.dataset_ref("mnist", tmp_path) == "mnist"
    assert D.dataset_ref("cifar10", tmp_path) == "cifar10"
    expected = "npz:" + str((tmp_path / "data" / "mine.npz").resolve())
    assert D.dataset_ref({"npz": "data/mine.npz"}, tmp_path) == expected
    assert D.dataset_ref({"npz": "data/../data/mine.npz"}, tmp_path) == expected
    assert D.dataset_ref({"npz": str(tmp_path / "data" / "mine.npz")}, Path("/elsewhere")) == expected
    assert D.dataset_ref(expected, Path("/elsewhere")) == expected  # a reference stays itself


@pytest.mark.parametrize("value, expected", [
    ("cifar", ("unknown dataset 'cifar' (did you mean 'cifar10'?); known: cifar10, fashion_mnist, kmnist, mnist, "
               "svhn, or a file: dataset: {npz: path/to/file.npz}")),
    ({"file": "x.npz"}, ("a mapping with keys 'file'; a file is given as dataset: {npz: path/to/file.npz} "
                         "(one key, npz)")),
    ({"npz": "x.npz", "shape": [1]}, "a mapping with keys 'npz', 'shape'; a file is given as dataset: {npz:"),
    ({"npz": 3}, "npz: expected a file path, got int 3"),
    ({"npz": ""}, "npz: the file path is empty"),
    (42, ("expected a dataset name (cifar10, fashion_mnist, kmnist, mnist, svhn) or "
          "dataset: {npz: path/to/file.npz}, got int 42")),
])
def test_dataset_ref_bad_forms_are_one_line_value_errors(tmp_path, value, expected):
    with pytest.raises(ValueError) as info:
        D.dataset_ref(value, tmp_path)
    assert str(info.value).startswith(expected) and "\n" not in str(info.value)


# ----------------------------------------------------------------- registry


def test_register_dataset_plugin(tmp_path):
    rng = np.random.default_rng(7)
    arrays = image_set(rng, shape=(2, 6, 6), classes=5)
    info = D.DatasetInfo((2, 6, 6), 5, 20, 8)
    loads = []

    def load(root: Path) -> D.ImageData:
        loads.append(root)
        return D.ImageData("tiny_plugin", **arrays, mean=(0.5, 0.5), std=(0.25, 0.25), num_classes=5)

    entry = D.register_dataset("tiny_plugin", load, info)
    try:
        assert D.DATASETS["tiny_plugin"] is entry and entry.info == info and entry.source is None
        assert D.dataset_info("tiny_plugin") == info and not loads  # no loading
        assert D.dataset_ref("tiny_plugin", tmp_path) == "tiny_plugin"
        ds = D.load_dataset("tiny_plugin", root=tmp_path)
        assert loads == [tmp_path] and ds.input_shape == (2, 6, 6)
        with pytest.raises(ValueError, match="dataset 'tiny_plugin' is registered twice"):
            D.register_dataset("tiny_plugin", load, info)
    finally:
        del D.DATASETS["tiny_plugin"]


def test_plugin_loader_that_disagrees_with_its_info_is_a_data_error():
    arrays = image_set(np.random.default_rng(8))
    entry = D.register_dataset("liar", lambda root: D.ImageData("liar", **arrays, mean=0.5, std=0.25),
                               D.DatasetInfo((1, 8, 8), 4, 20, 8))
    try:
        # ImageData's num_classes defaults to 10: not the 4 it registered
        assert one_line_error(D.load_dataset, "liar") == (
            "dataset 'liar': its load returned 20+8 images of 1x8x8, 10 classes, but it is registered as "
            "20+8 images of 1x8x8, 4 classes")
    finally:
        del D.DATASETS[entry.name]


def test_builtin_infos_and_unknown_names():
    assert D.dataset_info("mnist") == D.DatasetInfo((1, 28, 28), 10, 60_000, 10_000)
    assert D.dataset_info("kmnist") == D.DatasetInfo((1, 28, 28), 10, 60_000, 10_000)
    assert D.dataset_info("svhn") == D.DatasetInfo((3, 32, 32), 10, 73_257, 26_032)
    assert D.DATASETS["mnist"].source.folder == "MNIST"
    message = one_line_error(D.dataset_info, "svnh")
    assert message.startswith("unknown dataset 'svnh' (did you mean 'svhn'?); known: cifar10,")
