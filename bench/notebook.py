"""The baseline: a training loop written the way a typical course notebook writes it.

torchvision's `MNIST` dataset with per-sample `ToTensor()` + `Normalize` transforms, a
`DataLoader(batch_size=..., shuffle=True)` for training and the same loader style
(no shuffle) for evaluation, `loss.item()` every step for the running loss. It is
deliberately not tuned: it is what gensweep's engine is compared against.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset, Subset

from trainables.data import data_root

# MNIST's pixel mean and std on the [0, 1] scale, as every MNIST tutorial writes them.
MNIST_NORMALIZE = ((0.1307,), (0.3081,))


def mnist_datasets(train_rows=None, test_rows=None) -> tuple[Dataset, Dataset]:
    """(train, test) torchvision datasets with the notebook transforms; `*_rows`
    (index arrays) select the same images as the engine's subsets. The files are the
    repository's: `download=True` checks their md5 and unpacks them, offline."""
    from torchvision import datasets, transforms

    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize(*MNIST_NORMALIZE)])
    root = str(data_root())
    train = datasets.MNIST(root, train=True, download=True, transform=transform)
    test = datasets.MNIST(root, train=False, download=True, transform=transform)
    if train_rows is not None:
        train = Subset(train, [int(i) for i in train_rows])
    if test_rows is not None:
        test = Subset(test, [int(i) for i in test_rows])
    return train, test


def train_epoch(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer) -> float:
    """One epoch; returns the mean minibatch loss (read with .item() every step)."""
    model.train()
    running_loss, batches = 0.0, 0
    for images, labels in loader:
        optimizer.zero_grad()
        loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        running_loss += loss.item()
        batches += 1
    return running_loss / batches


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader) -> tuple[float, float]:
    """(mean cross-entropy, accuracy in [0, 1]) over the loader's dataset, in eval mode."""
    model.eval()
    loss_sum, correct, count = 0.0, 0, 0
    for images, labels in loader:
        logits = model(images)
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
        correct += (logits.argmax(dim=1) == labels).sum().item()
        count += len(labels)
    return loss_sum / count, correct / count
