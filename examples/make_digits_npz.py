"""Make examples/data/digits14.npz: 3,000 training and 1,000 test MNIST digits,
shrunk to 14x14 (2x2 mean pooling), as an .npz file with the four arrays gensweep
reads (train_x, train_y, test_x, test_y). It stands in for your own data: any
.npz with those arrays works as `dataset: {npz: file.npz}`.

    python examples/make_digits_npz.py          # rewrites examples/data/digits14.npz

The images are a class-balanced prefix of each MNIST split (trainables.data's
balanced order, seed 0), so the file is the same on every machine.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from trainables.data import balanced_order, load_dataset  # noqa: E402

OUT = Path(__file__).resolve().parent / "data" / "digits14.npz"
TRAIN, TEST = 3000, 1000  # images


def shrink(images: np.ndarray) -> np.ndarray:
    """uint8 [N, 28, 28] -> uint8 [N, 14, 14], the mean of each 2x2 block (rounded)."""
    blocks = images.reshape(len(images), 14, 2, 14, 2).astype(np.float32).mean(axis=(2, 4))
    return np.rint(blocks).astype(np.uint8)


def main() -> None:
    mnist = load_dataset("mnist")
    train = np.sort(balanced_order(mnist.train_y, seed=0)[:TRAIN])
    test = np.sort(balanced_order(mnist.test_y, seed=0)[:TEST])
    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT, train_x=shrink(mnist.train_x[train].reshape(-1, 28, 28)), train_y=mnist.train_y[train],
                        test_x=shrink(mnist.test_x[test].reshape(-1, 28, 28)), test_y=mnist.test_y[test])
    print(f"wrote {OUT} ({OUT.stat().st_size / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()
