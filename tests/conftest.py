"""Shared fixtures: one torch thread (deterministic, and fair to the other test
process on 2 cores), MNIST read once per session, and tiny CPU splits. Tests marked
`cuda` skip where torch sees no CUDA device. Nothing here imports Ray: the GPU check
(bench/gpu_check.sh) runs tests on machines without it."""

from __future__ import annotations

from typing import Callable

import pytest
import torch

from trainables import data as D


def pytest_collection_modifyitems(config, items) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="no GPU: torch.cuda.is_available() is False")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def mnist() -> D.ImageData:
    return D.load_dataset("mnist")


@pytest.fixture(scope="session")
def make_splits(mnist) -> Callable[[int, int], tuple[D.Split, D.Split]]:
    """(train, test) CPU splits of the given sizes, built the way
    classifier.make_splits does: balanced, data_seed 0, zero-copy views."""

    def build(train_size: int = 256, test_size: int = 256) -> tuple[D.Split, D.Split]:
        cpu = torch.device("cpu")
        train_idx, _ = D.training_split(mnist.train_y, train_size=train_size, val_size=0, data_seed=0)
        test_idx = D.test_subset(mnist.test_y, test_size)
        train = D.Split(D.as_tensor(mnist.train_x, cpu), D.as_tensor(mnist.train_y, cpu),
                        torch.as_tensor(train_idx), mnist.mean, mnist.std)
        test = D.Split(D.as_tensor(mnist.test_x, cpu), D.as_tensor(mnist.test_y, cpu),
                       torch.as_tensor(test_idx), mnist.mean, mnist.std)
        return train, test

    return build


@pytest.fixture
def kept_figures(monkeypatch):
    """Figure functions close their figure after saving; keep it open to inspect it
    (returns a function listing the open figures)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    real_close = plt.close
    real_close("all")
    monkeypatch.setattr(plt, "close", lambda *args, **kwargs: None)
    yield lambda: [plt.figure(n) for n in plt.get_fignums()]
    real_close("all")
