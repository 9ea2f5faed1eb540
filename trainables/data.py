"""Image datasets as arrays read once, the dataset registry, and the index splits
trials train on.

The driver calls `load_dataset(ref)` once per study; the arrays travel to the
trials through Ray's object store (zero-copy on the same node) and each trial moves
them to its device once (`as_tensor`). Subsets are index arrays into the full
training set, so no trial ever copies images it does not use; `Split.inputs`
normalizes one batch at a time, so only the uint8 (or float32) arrays stay resident.

A spec's `dataset:` is one of

- a registered name. Built in (read by torchvision's own classes, from folders under
  `data_root()`: the repository's data/, or $GENSWEEP_DATA):

  | name | images | classes | train + test | folder |
  | --- | --- | --- | --- | --- |
  | mnist | 1x28x28 | 10 | 60000 + 10000 | MNIST/raw/ (in the repo) |
  | fashion_mnist | 1x28x28 | 10 | 60000 + 10000 | FashionMNIST/raw/ (or Debian's dataset-fashion-mnist) |
  | kmnist | 1x28x28 | 10 | 60000 + 10000 | KMNIST/raw/ |
  | cifar10 | 3x32x32 | 10 | 50000 + 10000 | CIFAR10/ (cifar-10-python.tar.gz or cifar-10-batches-py/) |
  | svhn | 3x32x32 | 10 | 73257 + 26032 | SVHN/ (train_32x32.mat, test_32x32.mat) |

  Missing files are downloaded where the network allows; with GENSWEEP_OFFLINE=1
  nothing is downloaded and a missing file is a one-line DataError naming the folder.
- your own arrays: `dataset: {npz: path/to/file.npz}` (relative to the spec's
  folder). The file holds train_x, train_y, test_x, test_y (and optionally a scalar
  num_classes; else max(train_y) + 1). Images uint8 (0-255) or floating point,
  [N, H, W], [N, C, H, W], or channels-last [N, H, W, C] with C = 1, 3 or 4;
  labels integers 0..num_classes-1. `dataset_ref` turns the mapping into the string
  "npz:<absolute path>" that trial configs carry.
- a plugin's dataset: `register_dataset("name", load, DatasetInfo(...))`, where
  `load(root)` returns an `ImageData`.

    >>> from trainables.data import load_dataset, dataset_info, training_split
    >>> dataset_info("cifar10")  # no loading
    DatasetInfo(input_shape=(3, 32, 32), num_classes=10, train_count=50000, test_count=10000)
    >>> ds = load_dataset("mnist")
    >>> train_idx, val_idx = training_split(ds.train_y, train_size=1000, val_size=0, data_seed=0)
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import shutil
import warnings
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from trainables.errors import UserError
from trainables.families import suggest
from trainables.registry import Registry

# The repository's data/ folder; GENSWEEP_DATA overrides it (e.g. in an image or
# on a cluster node whose checkout lives elsewhere).
REPO_DATA_DIR = Path(__file__).resolve().parent.parent / "data"
# MNIST's class count (also every built-in's); a dataset's own is ImageData.num_classes.
NUM_CLASSES = 10
# A trial config's dataset for an .npz file: this prefix and the file's absolute path.
NPZ_PREFIX = "npz:"
NPZ_ARRAYS = ("train_x", "train_y", "test_x", "test_y")
_NPZ_FORM = "dataset: {npz: path/to/file.npz}"


class DataError(UserError):
    """A dataset file is missing or damaged."""


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset is, known without loading it (validation, model building)."""

    input_shape: tuple[int, int, int]  # (channels, height, width) of one image
    num_classes: int
    train_count: int  # images in the training set (validation splits are taken from it)
    test_count: int


def _channels(value) -> tuple[float, ...]:
    """A per-channel statistic as a tuple of floats (a scalar: one value for all)."""
    return tuple(float(v) for v in np.atleast_1d(np.asarray(value, dtype=np.float64)))


@dataclass
class ImageData:
    """A whole dataset in memory: images uint8 or float32, [N, H, W] (one channel)
    or [N, C, H, W], C-contiguous; labels int64 [N] in 0..num_classes-1."""

    name: str
    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    # Per-channel pixel mean and std of the training set: on the [0, 1] scale for
    # uint8 images (pixel / 255), on the array's own scale for float images.
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_classes: int = NUM_CLASSES

    def __post_init__(self) -> None:
        self.mean, self.std = _channels(self.mean), _channels(self.std)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of one image."""
        shape = tuple(int(s) for s in self.train_x.shape[1:])
        return (1, *shape) if len(shape) == 2 else shape  # type: ignore[return-value]

    def info(self) -> DatasetInfo:
        return DatasetInfo(self.input_shape, int(self.num_classes), len(self.train_y), len(self.test_y))


# ---------------------------------------------------------------------------
# The registry


@dataclass(frozen=True)
class Dataset:
    """A registered dataset: what it is (`info`, without loading) and how to read it
    (`load(root)`, root being `data_root()` or load_dataset's `root`)."""

    name: str
    info: DatasetInfo
    load: Callable[[Path], ImageData]

    @property
    def source(self) -> object | None:
        """The object `load` is a method of: for a built-in its TorchvisionSource
        (folder, files, system_dir); None for a plain function."""
        return getattr(self.load, "__self__", None)


DATASETS: Registry[Dataset] = Registry("dataset")


def register_dataset(name: str, load: Callable[[Path], ImageData], info: DatasetInfo) -> Dataset:
    """Add a dataset under `name` (the plugin API; the built-ins use it too).
    `load(root: Path) -> ImageData` reads it (root: the data folder, for a loader
    that keeps its files there); `info` says what it is without loading, and
    `load_dataset` checks what `load` returns against it. A duplicate name raises
    ValueError."""
    if not isinstance(name, str) or not name or name.startswith(NPZ_PREFIX):
        raise ValueError(f"dataset name {name!r}: give a non-empty name not starting with {NPZ_PREFIX!r}")
    if not isinstance(info, DatasetInfo):
        raise TypeError(f"register_dataset({name!r}, load, info): info must be a DatasetInfo, got {info!r}")
    if not callable(load):
        raise TypeError(f"register_dataset({name!r}, load, info): load must be a function of the data root")
    return DATASETS.add(name, Dataset(name, info, load))  # the registry names load's file


def data_root() -> Path:
    return Path(os.environ.get("GENSWEEP_DATA", REPO_DATA_DIR))


def offline() -> bool:
    """GENSWEEP_OFFLINE=1: never try to download (a missing file fails at once)."""
    return os.environ.get("GENSWEEP_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


# ---------------------------------------------------------------------------
# Built-in datasets: torchvision's classes read (and, online, download) the files


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0].rstrip(":") if text else type(exc).__name__


def _torchvision_class(name: str):
    from torchvision import datasets

    return getattr(datasets, name)


@dataclass(frozen=True)
class TorchvisionSource:
    """A built-in dataset: read by a torchvision class from a folder under the data
    root, normalized with the standard constants. `load` is the registry's loader."""

    name: str
    info: DatasetInfo
    folder: str  # under the data root
    torchvision_class: str
    mean: tuple[float, ...]  # per-channel pixel mean over the training set, on the [0, 1] scale
    std: tuple[float, ...]
    system_dir: str | None = None  # a Debian package's copy of the .gz files
    restore_hint: str = "delete it so it is fetched again"

    @property
    def train_count(self) -> int:
        return self.info.train_count

    @property
    def test_count(self) -> int:
        return self.info.test_count

    def load(self, root: Path) -> ImageData:
        raise NotImplementedError

    def _data(self, train_x, train_y, test_x, test_y) -> ImageData:
        return ImageData(self.name, np.ascontiguousarray(train_x), np.asarray(train_y, dtype=np.int64),
                         np.ascontiguousarray(test_x), np.asarray(test_y, dtype=np.int64),
                         self.mean, self.std, self.info.num_classes)

    def _checked_files(self, folder: Path, expected: list[tuple[str, str]]) -> None:
        """A present file whose md5 differs is damaged: say which (torchvision would
        re-download over it, or, offline, fail with a long traceback)."""
        for filename, md5 in expected:
            path = folder / filename
            if not path.is_file():
                continue
            got = _md5(path)
            if got != md5:
                raise DataError(f"{path}: checksum mismatch (md5 {got}, expected {md5}); the file is damaged: "
                                f"{self.restore_hint}")

    def _missing_error(self, folder: Path, missing: str, exc: BaseException | None, hint: str = "",
                       holding: str = "") -> DataError:
        """Files that are not there and could not be downloaded (`exc`; None: offline)."""
        why = ("GENSWEEP_OFFLINE=1 forbids downloading" if exc is None
               else f"downloading failed ({_first_line(exc)})")
        return DataError(f"{folder}: cannot read {self.name}: missing {missing}, and {why}; put the file(s) there"
                         f"{f' ({hint})' if hint else ''} or set GENSWEEP_DATA to a folder holding "
                         f"{holding or self.folder + '/'}")

    def _check_counts(self, folder: Path, data: ImageData) -> None:
        if (len(data.train_y), len(data.test_y)) != (self.train_count, self.test_count) \
                or data.input_shape != self.info.input_shape:
            raise DataError(f"{folder}: expected {self.train_count}+{self.test_count} images of "
                            f"{_shape_text(self.info.input_shape)}, found {len(data.train_y)}+{len(data.test_y)} of "
                            f"{_shape_text(data.input_shape)}; the files are damaged: delete them so they are "
                            f"fetched again")


@dataclass(frozen=True)
class MnistLike(TorchvisionSource):
    """MNIST and its look-alikes: four idx .gz files in <root>/<folder>/raw/."""

    def load(self, root: Path) -> ImageData:
        """Read the dataset once into uint8 arrays (verifying the archives' md5)."""
        raw_dir = Path(root) / self.folder / "raw"
        tv_class = _torchvision_class(self.torchvision_class)
        _unpack_system_files(self, raw_dir)
        self._checked_files(raw_dir, tv_class.resources)
        download = not offline()
        if not download:
            _unpack_archives(tv_class.resources, raw_dir)  # what download=True would do with local files
        try:
            train = tv_class(str(root), train=True, download=download)
            test = tv_class(str(root), train=False, download=download)
        except Exception as exc:  # torchvision raises RuntimeError/URLError/ValueError/...
            unpacked = [p.name for p in raw_dir.glob("*-ubyte")] if raw_dir.is_dir() else []
            # A file that is neither there nor unpacked, and could not be downloaded.
            absent = [f for f, _ in tv_class.resources
                      if not (raw_dir / f).exists() and not (raw_dir / Path(f).stem).exists()]
            if absent:
                raise self._missing_error(raw_dir, ", ".join(absent), exc if download else None,
                                          self.restore_hint, f"{self.folder}/raw/") from exc
            remedy = (f"delete the unpacked files ({', '.join(sorted(unpacked))}) so they are unpacked again from "
                      f"the .gz" if unpacked else f"put the four .gz files there ({self.restore_hint}) or set "
                      f"GENSWEEP_DATA to a folder holding {self.folder}/raw/")
            raise DataError(f"{raw_dir}: cannot read {self.name} ({_first_line(exc)}); {remedy}") from exc
        data = self._data(train.data.numpy(), train.targets.numpy(), test.data.numpy(), test.targets.numpy())
        if len(data.train_y) != self.train_count or len(data.test_y) != self.test_count:
            raise DataError(
                f"{raw_dir}: expected {self.train_count}+{self.test_count} images, "
                f"found {len(data.train_y)}+{len(data.test_y)}; the unpacked files are damaged: delete "
                f"the files without .gz in that folder so they are unpacked again"
            )
        return data


def _unpack_archives(resources: list[tuple[str, str]], raw_dir: Path) -> None:
    """Unpack each present .gz whose unpacked file is missing (offline, torchvision
    would only do this inside its download step)."""
    for filename, _ in resources:
        src, unpacked = raw_dir / filename, raw_dir / Path(filename).stem
        if src.exists() and not unpacked.exists():
            _gunzip(src, unpacked)


def _unpack_system_files(source: TorchvisionSource, raw_dir: Path) -> None:
    """Use a distribution package's copy (e.g. Debian's dataset-fashion-mnist) when the
    data root lacks the files, so no download is needed. Debian recompressed the
    archives (their md5 differs from torchvision's list), so they are unpacked here
    directly into the files torchvision reads; `load` checks the counts."""
    if source.system_dir is None or not Path(source.system_dir).is_dir():
        return
    raw_dir.mkdir(parents=True, exist_ok=True)
    for filename, _ in _torchvision_class(source.torchvision_class).resources:
        src, unpacked = Path(source.system_dir) / filename, raw_dir / Path(filename).stem
        if src.exists() and not (raw_dir / filename).exists() and not unpacked.exists():
            _gunzip(src, unpacked)


def _gunzip(src: Path, dst: Path) -> None:
    """Unpack a .gz beside, then rename: a crash never leaves half a file under `dst`."""
    tmp = dst.with_name(dst.name + ".tmp")
    with gzip.open(src, "rb") as fin, open(tmp, "wb") as fout:
        shutil.copyfileobj(fin, fout)
    os.replace(tmp, dst)


@dataclass(frozen=True)
class Cifar10Source(TorchvisionSource):
    """CIFAR-10: <root>/CIFAR10/ (torchvision's root) holds cifar-10-batches-py/ or
    the archive cifar-10-python.tar.gz it unpacks from."""

    def load(self, root: Path) -> ImageData:
        from torchvision.datasets.utils import extract_archive

        folder = Path(root) / self.folder
        tv = _torchvision_class(self.torchvision_class)
        batches = folder / tv.base_folder
        members = [*tv.train_list, *tv.test_list, [tv.meta["filename"], tv.meta["md5"]]]
        unpacked = all((batches / f).is_file() for f, _ in members)
        archive = folder / tv.filename
        if not unpacked and archive.is_file():
            self._checked_files(folder, [(tv.filename, tv.tgz_md5)])
            extract_archive(str(archive), str(folder))  # what torchvision's download step does with a local archive
            unpacked = all((batches / f).is_file() for f, _ in members)
        # Download only what is missing: a damaged file is named, not fetched over.
        download = not unpacked and not offline()
        try:
            train = tv(str(folder), train=True, download=download)
            test = tv(str(folder), train=False, download=download)
        except Exception as exc:
            self._checked_files(batches, members)
            absent = [f for f, _ in members if not (batches / f).is_file()]
            if absent:
                missing = (f"{tv.filename} (or its unpacked {tv.base_folder}/)" if len(absent) == len(members)
                           else f"{', '.join(f'{tv.base_folder}/{f}' for f in absent)} (or {tv.filename})")
                raise self._missing_error(folder, missing, exc if download else None) from exc
            raise DataError(f"{folder}: cannot read {self.name} ({_first_line(exc)}); delete {tv.base_folder}/ "
                            f"so it is unpacked or fetched again") from exc
        # torchvision keeps CIFAR as [N, 32, 32, 3]; the models take channels first.
        data = self._data(train.data.transpose(0, 3, 1, 2), train.targets, test.data.transpose(0, 3, 1, 2),
                          test.targets)
        self._check_counts(folder, data)
        return data


@dataclass(frozen=True)
class SvhnSource(TorchvisionSource):
    """SVHN (cropped digits): <root>/SVHN/ holds train_32x32.mat and test_32x32.mat;
    torchvision gives the digit 0 label 0 (the files use 10)."""

    def load(self, root: Path) -> ImageData:
        folder = Path(root) / self.folder
        tv = _torchvision_class(self.torchvision_class)
        files = [(tv.split_list[split][1], tv.split_list[split][2]) for split in ("train", "test")]
        download = not all((folder / f).is_file() for f, _ in files) and not offline()
        try:
            train = tv(str(folder), split="train", download=download)
            test = tv(str(folder), split="test", download=download)
        except Exception as exc:
            self._checked_files(folder, files)
            absent = [f for f, _ in files if not (folder / f).is_file()]
            if absent:
                raise self._missing_error(folder, ", ".join(absent), exc if download else None) from exc
            raise DataError(f"{folder}: cannot read {self.name} ({_first_line(exc)}); delete the .mat files so "
                            f"they are fetched again") from exc
        data = self._data(train.data, train.labels, test.data, test.labels)  # torchvision gives [N, 3, 32, 32]
        self._check_counts(folder, data)
        return data


_MNIST_SHAPE, _RGB32 = (1, 28, 28), (3, 32, 32)
_BUILTINS: tuple[TorchvisionSource, ...] = (
    MnistLike("mnist", DatasetInfo(_MNIST_SHAPE, 10, 60_000, 10_000), "MNIST", "MNIST", (0.1307,), (0.3081,),
              restore_hint="restore it with `git checkout data/MNIST/raw`"),
    MnistLike("fashion_mnist", DatasetInfo(_MNIST_SHAPE, 10, 60_000, 10_000), "FashionMNIST", "FashionMNIST",
              (0.2860,), (0.3530,), system_dir="/usr/share/datasets/fashion-mnist"),
    MnistLike("kmnist", DatasetInfo(_MNIST_SHAPE, 10, 60_000, 10_000), "KMNIST", "KMNIST", (0.1918,), (0.3483,)),
    Cifar10Source("cifar10", DatasetInfo(_RGB32, 10, 50_000, 10_000), "CIFAR10", "CIFAR10",
                  (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    SvhnSource("svhn", DatasetInfo(_RGB32, 10, 73_257, 26_032), "SVHN", "SVHN",
               (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
)
for _source in _BUILTINS:
    register_dataset(_source.name, _source.load, _source.info)


# ---------------------------------------------------------------------------
# Dataset references: names and .npz files


def _unknown(name: object) -> str:
    return f"unknown dataset {name!r}{suggest(name, DATASETS)}; known: {', '.join(sorted(DATASETS))}, or a file: {_NPZ_FORM}"


def dataset_ref(value: object, base_dir: Path) -> str:
    """A spec's `dataset:` value as a trial config carries it: a registered name as
    it is; `{npz: file}` as "npz:<absolute path>" (a relative path is relative to
    `base_dir`, the spec's folder). ValueError (one line) for anything else."""
    if isinstance(value, str):
        if value in DATASETS:
            return value
        if value.startswith(NPZ_PREFIX):  # already a reference (e.g. a resolved config)
            return _npz_ref(value[len(NPZ_PREFIX):], base_dir)
        raise ValueError(_unknown(value))
    if isinstance(value, Mapping):
        if list(value) == ["npz"]:
            if isinstance(value["npz"], (str, os.PathLike)):
                return _npz_ref(value["npz"], base_dir)
            raise ValueError(f"npz: expected a file path, got {type(value['npz']).__name__} {value['npz']!r}; "
                             f"the form is {_NPZ_FORM}")
        keys = ", ".join(repr(k) for k in value) or "none"
        raise ValueError(f"a mapping with keys {keys}; a file is given as {_NPZ_FORM} (one key, npz)")
    raise ValueError(f"expected a dataset name ({', '.join(sorted(DATASETS))}) or {_NPZ_FORM}, "
                     f"got {type(value).__name__} {value!r}")


def _npz_ref(path: str | os.PathLike, base_dir: Path) -> str:
    if not str(path).strip():
        raise ValueError(f"npz: the file path is empty; the form is {_NPZ_FORM}")
    return NPZ_PREFIX + str((Path(base_dir) / Path(path).expanduser()).resolve())


def dataset_info(ref: str) -> DatasetInfo:
    """What `load_dataset(ref)` would give (shape, classes, counts), without loading
    the images: a registered name's info, or an .npz file's, checked (DataError)."""
    if isinstance(ref, str) and ref.startswith(NPZ_PREFIX):
        return _npz_layout(Path(ref[len(NPZ_PREFIX):])).info
    if isinstance(ref, str) and ref in DATASETS:
        return DATASETS[ref].info
    raise DataError(_unknown(ref))


def load_dataset(ref: str, root: Path | None = None) -> ImageData:
    """Read a dataset once into arrays: a registered name (its loader, given `root`,
    default data_root()) or an "npz:<path>" reference (root unused)."""
    if isinstance(ref, str) and ref.startswith(NPZ_PREFIX):
        return _load_npz(Path(ref[len(NPZ_PREFIX):]), ref)
    if not (isinstance(ref, str) and ref in DATASETS):
        raise DataError(_unknown(ref))
    entry = DATASETS[ref]
    data = entry.load(Path(root) if root is not None else data_root())
    _check_loaded(entry, data)
    return data


def _shape_text(shape) -> str:
    return "x".join(str(s) for s in shape)


def _describe(info: DatasetInfo) -> str:
    return (f"{info.train_count}+{info.test_count} images of {_shape_text(info.input_shape)}, "
            f"{info.num_classes} classes")


def _check_loaded(entry: Dataset, data: object) -> None:
    """What a (plugin's) loader returned agrees with its registered info and holds
    arrays the trials can use."""
    where = f"dataset {entry.name!r}"
    if not isinstance(data, ImageData):
        raise DataError(f"{where}: its load returned {type(data).__name__}, not an ImageData")
    for array in ("train_x", "test_x"):
        x = getattr(data, array)
        if not isinstance(x, np.ndarray) or x.ndim not in (3, 4) or not (x.dtype == np.uint8 or x.dtype.kind == "f"):
            got = f"{x.dtype} {x.shape}" if isinstance(x, np.ndarray) else type(x).__name__
            raise DataError(f"{where}: {array} is {got}; images are uint8 or float arrays [N, H, W] or [N, C, H, W]")
    if data.train_x.shape[1:] != data.test_x.shape[1:]:
        raise DataError(f"{where}: train_x images are {data.train_x.shape[1:]} but test_x images are "
                        f"{data.test_x.shape[1:]}")
    got = data.info()
    if got != entry.info:
        raise DataError(f"{where}: its load returned {_describe(got)}, but it is registered as {_describe(entry.info)}")
    for array in ("train_y", "test_y"):
        y = getattr(data, array)
        if not (isinstance(y, np.ndarray) and y.dtype.kind in "iu" and y.ndim == 1):
            raise DataError(f"{where}: {array} must be 1-d integer labels")
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= data.num_classes):
            bad = int(y.min()) if int(y.min()) < 0 else int(y.max())
            raise DataError(f"{where}: {array} holds label {bad}, outside 0..{data.num_classes - 1}")
    if len(data.mean) not in (1, data.input_shape[0]) or len(data.std) not in (1, data.input_shape[0]):
        raise DataError(f"{where}: mean/std have {len(data.mean)}/{len(data.std)} values for "
                        f"{data.input_shape[0]} channel(s)")


# ---------------------------------------------------------------------------
# .npz files: checked from the zip's headers (and the labels), then loaded


@dataclass(frozen=True)
class _NpzLayout:
    info: DatasetInfo
    channels_last: tuple[bool, bool]  # train_x, test_x stored [N, H, W, C]


# (path, mtime in ns, size in bytes) -> layout: validating 100 cells reads a file once.
_NPZ_CACHE: dict[tuple[str, int, int], _NpzLayout] = {}


def _npz_layout(path: Path) -> _NpzLayout:
    try:
        stat = path.stat()
    except OSError:
        stat = None
    if stat is None or not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "no such file"
        raise DataError(f"{path}: {what}; an .npz dataset is a file written by numpy.savez(train_x=..., "
                        f"train_y=..., test_x=..., test_y=...)")
    key = (str(path), stat.st_mtime_ns, stat.st_size)
    if key not in _NPZ_CACHE:
        _NPZ_CACHE[key] = _inspect_npz(path)
    return _NPZ_CACHE[key]


def _npy_header(zf: zipfile.ZipFile, member: str) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) from an .npy member's header, without reading its data."""
    fmt = np.lib.format
    with zf.open(member) as fp:
        version = fmt.read_magic(fp)
        read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
        shape, _, dtype = read(fp)
    return tuple(int(s) for s in shape), np.dtype(dtype)


def _read_member(zf: zipfile.ZipFile, member: str) -> np.ndarray:
    with zf.open(member) as fp:
        return np.lib.format.read_array(fp, allow_pickle=False)


def _image_shape(path: Path, array: str, shape: tuple[int, ...]) -> tuple[tuple[int, int, int], bool]:
    """((C, H, W), stored channels-last?) of an image array's shape. A 4-d array is
    [N, C, H, W] unless its last axis looks like channels (1, 3 or 4) and its second
    does not."""
    if len(shape) == 3:
        return (1, shape[1], shape[2]), False
    if len(shape) == 4:
        if shape[3] in (1, 3, 4) and shape[1] not in (1, 3, 4):
            return (shape[3], shape[1], shape[2]), True
        return (shape[1], shape[2], shape[3]), False
    raise DataError(f"{path}: {array} has shape {shape}; images are 3-d [N, H, W] or 4-d [N, C, H, W] "
                    f"(or channels-last [N, H, W, C] with C = 1, 3 or 4)")


def _inspect_npz(path: Path) -> _NpzLayout:
    """Check an .npz dataset: the arrays there, their shapes and dtypes (from the
    headers), and the labels (read in full: they are small)."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"{path}: not an .npz file ({_first_line(exc)}); write it with numpy.savez or "
                        f"numpy.savez_compressed") from None
    with zf:
        members = {n[: -len(".npy")]: n for n in zf.namelist() if n.endswith(".npy")}
        missing = [a for a in NPZ_ARRAYS if a not in members]
        if missing:
            there = ", ".join(sorted(members)) or "no arrays"
            raise DataError(f"{path}: missing array(s) {', '.join(missing)} (the file holds {there}); "
                            f"an .npz dataset holds {', '.join(NPZ_ARRAYS)} and optionally num_classes")
        try:
            headers = {a: _npy_header(zf, members[a]) for a in NPZ_ARRAYS}
        except (ValueError, OSError, zipfile.BadZipFile) as exc:
            raise DataError(f"{path}: damaged array header ({_first_line(exc)})") from None
        shapes, layout = {}, {}
        for array in ("train_x", "test_x"):
            shape, dtype = headers[array]
            if not (dtype == np.uint8 or dtype.kind == "f"):
                raise DataError(f"{path}: {array} has dtype {dtype}; images are uint8 (0-255) or floating point")
            shapes[array], layout[array] = _image_shape(path, array, shape)
            if shape[0] == 0:
                raise DataError(f"{path}: {array} holds no images")
        if (headers["train_x"][1] == np.uint8) != (headers["test_x"][1] == np.uint8):
            raise DataError(f"{path}: train_x is {headers['train_x'][1]} but test_x is {headers['test_x'][1]}; "
                            f"both uint8 or both floating point (they are normalized alike)")
        if shapes["train_x"] != shapes["test_x"]:
            raise DataError(f"{path}: train_x holds {_shape_text(shapes['train_x'])} images but test_x holds "
                            f"{_shape_text(shapes['test_x'])} images; both must have the same (C, H, W)")
        for images, labels in (("train_x", "train_y"), ("test_x", "test_y")):
            shape, dtype = headers[labels]
            if dtype.kind not in "iu":
                raise DataError(f"{path}: {labels} has dtype {dtype}; labels are integers (class indices 0..K-1)")
            if len(shape) != 1:
                raise DataError(f"{path}: {labels} has shape {shape}; labels are 1-d [N]")
            if shape[0] != headers[images][0][0]:
                raise DataError(f"{path}: {images} has {headers[images][0][0]} images but {labels} has "
                                f"{shape[0]} labels")
        try:
            labels = {a: _read_member(zf, members[a]) for a in ("train_y", "test_y")}
            declared = _read_member(zf, members["num_classes"]) if "num_classes" in members else None
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
            raise DataError(f"{path}: damaged labels ({_first_line(exc)})") from None
    if declared is not None:
        if declared.size != 1 or declared.dtype.kind not in "iu" or int(declared.reshape(-1)[0]) < 1:
            raise DataError(f"{path}: num_classes must be one positive integer, got {declared.dtype} "
                            f"{declared.tolist()!r}")
        num_classes, origin = int(declared.reshape(-1)[0]), "the file's num_classes"
    else:
        num_classes, origin = int(labels["train_y"].max()) + 1, "max(train_y) + 1"
    for array in ("train_y", "test_y"):
        y = labels[array]
        bad = np.flatnonzero((y < 0) | (y >= num_classes))
        if len(bad):
            row = int(bad[0])
            raise DataError(f"{path}: {array}[{row}] is label {int(y[row])}, outside 0..{num_classes - 1} "
                            f"(num_classes {num_classes}: {origin})")
    info = DatasetInfo(shapes["train_x"], num_classes, int(headers["train_y"][0][0]), int(headers["test_y"][0][0]))
    return _NpzLayout(info, (layout["train_x"], layout["test_x"]))


def _channel_stats(x: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of images [N, C, H, W] or [N, H, W], in float64,
    two passes over chunks (no float64 copy of the whole array)."""
    x4 = x[:, None] if x.ndim == 3 else x
    rows = max(1, 4_000_000 // max(1, math.prod(x4.shape[1:])))  # about 32 MB of float64 per chunk
    count = x4.shape[0] * x4.shape[2] * x4.shape[3]
    total = np.zeros(x4.shape[1])
    for start in range(0, len(x4), rows):
        total += x4[start : start + rows].sum(axis=(0, 2, 3), dtype=np.float64)
    mean = total / count
    squares = np.zeros(x4.shape[1])
    for start in range(0, len(x4), rows):
        chunk = x4[start : start + rows].astype(np.float64) - mean[None, :, None, None]
        squares += np.square(chunk).sum(axis=(0, 2, 3))
    std = np.sqrt(squares / count)
    # A constant channel has nothing to scale: dividing by 1 keeps it at 0, not NaN.
    return tuple(mean.tolist()), tuple(np.where(std > 0, std, 1.0).tolist())


def _load_npz(path: Path, ref: str) -> ImageData:
    layout = _npz_layout(path)
    with zipfile.ZipFile(path) as zf:
        arrays = {a: _read_member(zf, f"{a}.npy") for a in NPZ_ARRAYS}
    for array, channels_last in zip(("train_x", "test_x"), layout.channels_last):
        x = arrays[array]
        if channels_last:
            x = x.transpose(0, 3, 1, 2)
        # one copy at most: to C order [N, C, H, W] and, for float images, float32
        x = np.ascontiguousarray(x, dtype=None if x.dtype == np.uint8 else np.float32)
        if x.dtype != np.uint8 and not np.isfinite(x).all():
            raise DataError(f"{path}: {array} holds NaN or infinite values")
        arrays[array] = x
    for array in ("train_y", "test_y"):
        arrays[array] = np.ascontiguousarray(arrays[array], dtype=np.int64)
    mean, std = _channel_stats(arrays["train_x"])
    if arrays["train_x"].dtype == np.uint8:  # uint8 statistics are kept on the [0, 1] scale
        mean, std = tuple(m / 255.0 for m in mean), tuple(s / 255.0 for s in std)
    data = ImageData(ref, arrays["train_x"], arrays["train_y"], arrays["test_x"], arrays["test_y"], mean, std,
                     layout.info.num_classes)
    if data.info() != layout.info:  # rewritten between the check and the read
        raise DataError(f"{path}: the file changed while it was read; read it again")
    return data


# ---------------------------------------------------------------------------
# Subsets


def balanced_order(labels: np.ndarray, seed: int) -> np.ndarray:
    """All indices of `labels`, ordered so that every prefix is class-balanced.

    Each class is shuffled with `seed`, then the classes are interleaved round-robin:
    with k classes, the first n indices hold n // k or n // k + 1 of each class (while
    every class still has images left). Taking prefixes makes subsets nested: the
    first 1000 are inside the first 5000."""
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    per_class = [rng.permutation(np.flatnonzero(labels == c)) for c in classes]
    rank = np.concatenate([np.arange(len(ix)) for ix in per_class])
    cls = np.concatenate([np.full(len(ix), k) for k, ix in enumerate(per_class)])
    order = np.lexsort((cls, rank))  # by rank within class, then by class
    return np.concatenate(per_class)[order]


# Seed offset for drawing the validation split, so that it does not depend on (or
# overlap the ordering of) the training subsets drawn with the same data seed.
_VALIDATION_SEED_OFFSET = 1_000_003


def training_split(
    labels: np.ndarray, train_size: int | None, val_size: int, data_seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, validation indices) into the training set.

    The validation split is class-balanced and held out first; the training subset
    is a balanced prefix of the rest, so for a fixed `val_size` and `data_seed`
    smaller subsets are nested inside larger ones. `train_size=None` takes all the
    images that remain."""
    available = len(labels) - val_size
    if val_size < 0 or available <= 0:
        raise DataError(f"val_size={val_size} leaves no training images (of {len(labels)})")
    if train_size is not None and train_size > available:
        raise DataError(
            f"train_size={train_size} exceeds the {available} training images left after val_size={val_size}"
        )
    val_idx = balanced_order(labels, data_seed + _VALIDATION_SEED_OFFSET)[:val_size]
    rest = np.setdiff1d(np.arange(len(labels)), val_idx, assume_unique=True)
    train_idx = rest[balanced_order(labels[rest], data_seed)]
    return train_idx[: train_size or available], np.sort(val_idx)


def test_subset(labels: np.ndarray, test_size: int | None) -> np.ndarray:
    """A fixed, class-balanced subset of the test set (the same in every trial and
    study, so test numbers are comparable); `None` means all of it, in order."""
    if test_size is None or test_size >= len(labels):
        return np.arange(len(labels))
    return np.sort(balanced_order(labels, seed=0)[:test_size])


# Seed offset for label noise, so the noisy labels do not correlate with the subset order.
_NOISE_SEED_OFFSET = 2_000_003


def noisy_labels(labels: np.ndarray, idx: np.ndarray, fraction: float, data_seed: int,
                 num_classes: int = NUM_CLASSES) -> np.ndarray:
    """`labels` with round(fraction * len(idx)) of the rows `idx` given uniformly random
    labels in 0..num_classes-1 (a random label may equal the true one, as in Zhang et
    al. 2017). The choice depends only on (idx, fraction, data_seed): identical in
    every epoch, restart and training seed. Returns `labels` itself when fraction is 0."""
    if fraction <= 0:
        return labels
    rng = np.random.default_rng(data_seed + _NOISE_SEED_OFFSET)
    chosen = rng.choice(idx, size=round(fraction * len(idx)), replace=False)
    noisy = labels.copy()
    noisy[chosen] = rng.integers(0, num_classes, size=len(chosen))
    return noisy


# ---------------------------------------------------------------------------
# Splits on a device


@dataclass
class TensorSplit:
    """A split of float tensors: inputs [N, ...] and targets (float regression
    targets [N, 1], e.g. trainables.function_fit's, or class labels [N]) on the trial's
    device, with the row indices the engine batches over (the engine's `Split`
    interface: x, idx, inputs(rows), labels(rows))."""

    x: torch.Tensor
    y: torch.Tensor
    idx: torch.Tensor

    def __len__(self) -> int:
        return len(self.idx)

    def inputs(self, rows: torch.Tensor) -> torch.Tensor:
        return self.x[rows]

    def labels(self, rows: torch.Tensor) -> torch.Tensor:
        return self.y[rows]


@dataclass
class Split:
    """A subset of images as indices into a device-resident image array."""

    x: torch.Tensor  # the whole array, uint8 or float, [N, H, W] or [N, C, H, W]; shared by all splits
    y: torch.Tensor  # int64 [N]
    idx: torch.Tensor  # int64 [n], this split's rows
    # Per-channel (or one for all channels) mean and std: [0, 1] scale for uint8 x,
    # x's own scale for float x (ImageData.mean / .std).
    mean: float | tuple[float, ...]
    std: float | tuple[float, ...]
    # (shift, scale) on x's scale: Python floats for one value (the arithmetic MNIST
    # always had), else float32 tensors [1, C, 1, 1] on x's device; made on first use.
    _norm: tuple | None = field(default=None, init=False, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.idx)

    def normalization(self) -> tuple:
        """(shift, scale) on x's own scale: floats, or float32 tensors [1, C, 1, 1]."""
        if self._norm is None:
            unit = 255.0 if self.x.dtype == torch.uint8 else 1.0  # uint8 pixels are 0..255
            mean, std = _channels(self.mean), _channels(self.std)
            channels = self.x.shape[1] if self.x.dim() == 4 else 1
            if len(mean) not in (1, channels) or len(std) not in (1, channels):
                raise ValueError(f"Split: {len(mean)} means / {len(std)} stds for {channels}-channel images")
            if len(mean) == 1 and len(std) == 1:
                self._norm = (unit * mean[0], unit * std[0])
            else:
                def per_channel(values):
                    full = values * channels if len(values) == 1 else values
                    return torch.tensor([unit * v for v in full], dtype=torch.float32,
                                        device=self.x.device).view(1, channels, 1, 1)

                self._norm = (per_channel(mean), per_channel(std))
        return self._norm

    def inputs(self, rows: torch.Tensor) -> torch.Tensor:
        """Normalized float32 [B, C, H, W] for the given rows (of the whole array):
        (pixel / 255 - mean) / std per channel for uint8, (x - mean) / std for float.
        Normalizing per batch keeps only the uint8 data resident: 4x less memory."""
        shift, scale = self.normalization()
        xb = self.x[rows]
        if self.x.dtype != torch.uint8 and xb.untyped_storage().data_ptr() == self.x.untyped_storage().data_ptr():
            xb = xb.clone()  # `rows` was a slice: a view of the shared array, never written to
        if xb.dim() == 3:
            xb = xb.unsqueeze(1)
        return xb.to(torch.float32).sub_(shift).div_(scale)

    def labels(self, rows: torch.Tensor) -> torch.Tensor:
        return self.y[rows]


def as_tensor(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """Zero-copy on CPU (arrays from Ray's object store are read-only; nothing here
    writes to them), one copy onto an accelerator."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        tensor = torch.from_numpy(array)
    return tensor.to(device) if device.type != "cpu" else tensor
