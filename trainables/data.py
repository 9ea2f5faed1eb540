"""Datasets as uint8 arrays, read once, and the index splits trials train on.

The driver calls `load_dataset(name)` once per study; the arrays travel to the
trials through Ray's object store (zero-copy on the same node) and each trial moves
them to its device once (`to_device`). Subsets are index arrays into the full
training set, so no trial ever copies images it does not use.

    >>> from trainables.data import load_dataset, training_split
    >>> ds = load_dataset("mnist")
    >>> train_idx, val_idx = training_split(ds.train_y, train_size=1000, val_size=0, data_seed=0)
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from trainables.errors import UserError

# The repository's data/ folder; GENSWEEP_DATA overrides it (e.g. in an image or
# on a cluster node whose checkout lives elsewhere).
REPO_DATA_DIR = Path(__file__).resolve().parent.parent / "data"
NUM_CLASSES = 10


class DataError(UserError):
    """A dataset file is missing or damaged."""


@dataclass(frozen=True)
class DatasetSource:
    """Where a dataset's files live and how to normalize its pixels."""

    folder: str  # torchvision's folder name under the data root
    torchvision_class: str
    mean: float  # pixel mean over the training set, on the [0, 1] scale
    std: float
    train_count: int
    test_count: int
    system_dir: str | None = None  # a Debian package's copy of the .gz files
    restore_hint: str = "delete it so it is fetched again"


DATASETS: dict[str, DatasetSource] = {
    "mnist": DatasetSource("MNIST", "MNIST", 0.1307, 0.3081, 60_000, 10_000,
                           restore_hint="restore it with `git checkout data/MNIST/raw`"),
    "fashion_mnist": DatasetSource(
        "FashionMNIST", "FashionMNIST", 0.2860, 0.3530, 60_000, 10_000,
        system_dir="/usr/share/datasets/fashion-mnist",
    ),
}


@dataclass
class ImageData:
    """A whole dataset in memory: images uint8 [N, 28, 28], labels int64 [N]."""

    name: str
    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    mean: float
    std: float


def data_root() -> Path:
    return Path(os.environ.get("GENSWEEP_DATA", REPO_DATA_DIR))


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_archives(source: DatasetSource, raw_dir: Path) -> None:
    """Fail with the file's name when an archive is present but damaged.

    torchvision would otherwise try to re-download over it (and, offline, bury
    the cause in a long traceback)."""
    from torchvision import datasets

    for filename, md5 in getattr(datasets, source.torchvision_class).resources:
        path = raw_dir / filename
        if not path.exists():
            continue
        got = _md5(path)
        if got != md5:
            raise DataError(
                f"{path}: checksum mismatch (md5 {got}, expected {md5}); the file is damaged: "
                f"{source.restore_hint}"
            )


def _unpack_system_files(source: DatasetSource, raw_dir: Path) -> None:
    """Use a distribution package's copy (e.g. Debian's dataset-fashion-mnist) when the
    data root lacks the files, so no download is needed. Debian recompressed the
    archives (their md5 differs from torchvision's list), so they are unpacked here
    directly into the files torchvision reads; `load_dataset` checks the counts."""
    if source.system_dir is None or not Path(source.system_dir).is_dir():
        return
    from torchvision import datasets

    raw_dir.mkdir(parents=True, exist_ok=True)
    for filename, _ in getattr(datasets, source.torchvision_class).resources:
        src, unpacked = Path(source.system_dir) / filename, raw_dir / Path(filename).stem
        if src.exists() and not (raw_dir / filename).exists() and not unpacked.exists():
            tmp = unpacked.with_name(unpacked.name + ".tmp")
            with gzip.open(src, "rb") as fin, open(tmp, "wb") as fout:
                shutil.copyfileobj(fin, fout)
            os.replace(tmp, unpacked)


def load_dataset(name: str, root: Path | None = None) -> ImageData:
    """Read a dataset once into uint8 arrays (verifying the archives' md5)."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}")
    source = DATASETS[name]
    root = Path(root) if root is not None else data_root()
    raw_dir = root / source.folder / "raw"
    _unpack_system_files(source, raw_dir)
    _check_archives(source, raw_dir)

    from torchvision import datasets

    tv_class = getattr(datasets, source.torchvision_class)
    try:
        train = tv_class(str(root), train=True, download=True)
        test = tv_class(str(root), train=False, download=True)
    except Exception as exc:  # torchvision raises RuntimeError/URLError/ValueError/...
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        unpacked = [p.name for p in raw_dir.glob("*-ubyte")] if raw_dir.is_dir() else []
        # A file that is neither there nor unpacked, and could not be downloaded.
        absent = [f for f, _ in tv_class.resources if not (raw_dir / f).exists() and not (raw_dir / Path(f).stem).exists()]
        if absent:
            raise DataError(f"{raw_dir}: cannot read {name}: missing {', '.join(absent)}, and downloading failed ({first_line.rstrip(':')}); "
                            f"put the file(s) there ({source.restore_hint}) or set GENSWEEP_DATA to a folder holding "
                            f"{source.folder}/raw/") from exc
        remedy = (f"delete the unpacked files ({', '.join(sorted(unpacked))}) so they are unpacked again from the .gz"
                  if unpacked else f"put the four .gz files there ({source.restore_hint}) or set GENSWEEP_DATA "
                  f"to a folder holding {source.folder}/raw/")
        raise DataError(f"{raw_dir}: cannot read {name} ({first_line}); {remedy}") from exc
    data = ImageData(
        name=name,
        train_x=train.data.numpy(),
        train_y=train.targets.numpy().astype(np.int64),
        test_x=test.data.numpy(),
        test_y=test.targets.numpy().astype(np.int64),
        mean=source.mean,
        std=source.std,
    )
    if len(data.train_y) != source.train_count or len(data.test_y) != source.test_count:
        raise DataError(
            f"{raw_dir}: expected {source.train_count}+{source.test_count} images, "
            f"found {len(data.train_y)}+{len(data.test_y)}; the unpacked files are damaged: delete "
            f"the files without .gz in that folder so they are unpacked again"
        )
    return data


def balanced_order(labels: np.ndarray, seed: int) -> np.ndarray:
    """All indices of `labels`, ordered so that every prefix is class-balanced.

    Each class is shuffled with `seed`, then the classes are interleaved round-robin:
    the first n indices hold n // 10 or n // 10 + 1 of each class (while every class
    still has images left). Taking prefixes makes subsets nested: the first 1000 are
    inside the first 5000."""
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
    labels (a random label may equal the true one, as in Zhang et al. 2017). The
    choice depends only on (idx, fraction, data_seed): identical in every epoch,
    restart and training seed. Returns `labels` itself when fraction is 0."""
    if fraction <= 0:
        return labels
    rng = np.random.default_rng(data_seed + _NOISE_SEED_OFFSET)
    chosen = rng.choice(idx, size=round(fraction * len(idx)), replace=False)
    noisy = labels.copy()
    noisy[chosen] = rng.integers(0, num_classes, size=len(chosen))
    return noisy


@dataclass
class Split:
    """A subset of images as indices into a device-resident uint8 array."""

    x: torch.Tensor  # uint8 [N, 28, 28], the whole array, shared by all splits
    y: torch.Tensor  # int64 [N]
    idx: torch.Tensor  # int64 [n], this split's rows
    mean: float
    std: float

    def __len__(self) -> int:
        return len(self.idx)

    def inputs(self, rows: torch.Tensor) -> torch.Tensor:
        """Normalized float32 [B, 1, 28, 28] for the given rows (of the whole array).
        Normalizing per batch keeps only uint8 data resident: 4x less memory."""
        xb = self.x[rows].unsqueeze(1).to(torch.float32)
        return xb.sub_(255.0 * self.mean).div_(255.0 * self.std)

    def labels(self, rows: torch.Tensor) -> torch.Tensor:
        return self.y[rows]


def as_tensor(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """Zero-copy on CPU (arrays from Ray's object store are read-only; nothing here
    writes to them), one copy onto an accelerator."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        tensor = torch.from_numpy(array)
    return tensor.to(device) if device.type != "cpu" else tensor
