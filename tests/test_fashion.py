"""Fashion-MNIST loads through the same path as MNIST (from Debian's
dataset-fashion-mnist package here; .ci/run installs it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from trainables.data import DATASETS, load_dataset, training_split

SYSTEM_DIR = Path(DATASETS["fashion_mnist"].source.system_dir)  # the built-in's TorchvisionSource


@pytest.mark.skipif(not SYSTEM_DIR.is_dir(), reason=f"{SYSTEM_DIR} absent: apt-get install dataset-fashion-mnist")
def test_fashion_mnist_loads_offline_from_the_debian_package(tmp_path, monkeypatch):
    monkeypatch.setenv("GENSWEEP_DATA", str(tmp_path))  # a fresh root: nothing unpacked yet
    ds = load_dataset("fashion_mnist")
    assert ds.train_x.shape == (60_000, 28, 28) and ds.test_x.shape == (10_000, 28, 28)
    assert ds.train_x.dtype == np.uint8
    assert np.bincount(ds.train_y).tolist() == [6000] * 10
    # the normalization constants in DATASETS are this training set's
    assert abs(ds.train_x.mean() / 255 - ds.mean[0]) < 1e-3 and abs(ds.train_x.std() / 255 - ds.std[0]) < 1e-3
    train_idx, _ = training_split(ds.train_y, 1000, 0, data_seed=0)
    assert np.bincount(ds.train_y[train_idx]).tolist() == [100] * 10
