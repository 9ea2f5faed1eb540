"""Benchmark 1: gensweep's engine vs the notebook baseline, one epoch on CPU.

The engine (`trainables.engine.fit`, splits from `trainables.classifier.make_splits`:
uint8 tensors indexed by a permutation, normalized per batch) and the notebook loop
(`bench.notebook`: torchvision transforms per sample, DataLoader) train the same
model from the same initialization, with the same optimizer (the engine's
`make_optimizer`, so the optimizer kernel is not part of the difference), batch size,
number of batches and torch thread count, in the same process; then both evaluate the
whole training split and the test split (eval batch 256, the engine's default, for both).
Each repetition times both; the figure is the median of the per-repetition ratios
notebook seconds / engine seconds (higher: the engine is faster).

    python -m bench --only datapath
"""

from __future__ import annotations

import contextlib
import functools
import time
from dataclasses import dataclass
from typing import Iterator, NamedTuple

import torch

from bench.record import Figure, median, repeat
from trainables import engine
from trainables.classifier import ClassifierConfig, make_splits, parse_config
from trainables.data import ImageData, load_dataset
from trainables.models import build_model

# The MLP: 784-512-10, Adam, batch 128, one epoch on all 60k training images,
# evaluated on all 60k + the 10k test images.
MLP = {"model": "mlp", "hidden": [512], "optimizer": "adam", "lr": 1e-3, "batch_size": 128, "epochs": 1}
# cnn_overparam as the weight-decay study trains it (SGD 0.02, momentum 0.9, batch 64)
# on a 1k subset, tested on the 2000 images of that study's quick profile.
CNN = {"model": "cnn_overparam", "optimizer": "sgd", "lr": 0.02, "momentum": 0.9, "batch_size": 64, "epochs": 1,
       "train_size": 1000, "test_size": 2000}
# --quick: a few batches, to check the plumbing.
QUICK = {"mlp": {"train_size": 2048, "test_size": 512}, "cnn": {"train_size": 128, "test_size": 128}}

CASES = {"mlp": MLP, "cnn": CNN}


class EpochTimes(NamedTuple):
    train_s: float  # one training epoch
    eval_s: float  # evaluation of the training split and the test split

    @property
    def total_s(self) -> float:
        return self.train_s + self.eval_s


@functools.cache
def mnist() -> ImageData:
    return load_dataset("mnist")


def case_config(name: str, quick: bool) -> dict:
    return {**CASES[name], **(QUICK[name] if quick else {})}


@dataclass
class _Stopwatch:
    seconds: float = 0.0


@contextlib.contextmanager
def _time_calls(module, name: str) -> Iterator[_Stopwatch]:
    """Sum the wall seconds spent in `module.name` while the block runs (the engine
    reports training and evaluation time together; this separates them)."""
    original = getattr(module, name)
    watch = _Stopwatch()

    def timed(*args, **kwargs):
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            watch.seconds += time.perf_counter() - started

    setattr(module, name, timed)
    try:
        yield watch
    finally:
        setattr(module, name, original)


def engine_epoch(config: dict) -> EpochTimes:
    """One epoch of `trainables.engine.fit` with its end-of-epoch evaluation."""
    cfg, model_args = parse_config(ClassifierConfig, config)
    splits = make_splits(mnist(), cfg, torch.device("cpu"))
    train = splits.pop("train")
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, **model_args)
    with _time_calls(engine, "evaluate_split") as evaluating:
        started = time.perf_counter()
        engine.fit(model, train, splits, cfg, lambda metrics, state: None)
        total = time.perf_counter() - started
    return EpochTimes(total - evaluating.seconds, evaluating.seconds)


class NotebookRun:
    """The notebook baseline on the same images as the engine's splits. The
    datasets and loaders are built once (a notebook builds them in an earlier cell)."""

    def __init__(self, config: dict) -> None:
        from torch.utils.data import DataLoader

        from bench import notebook

        self.cfg, self.model_args = parse_config(ClassifierConfig, config)
        splits = make_splits(mnist(), self.cfg, torch.device("cpu"))
        train_rows, test_rows = splits["train"].idx.numpy(), splits["test"].idx.numpy()
        train, test = notebook.mnist_datasets(
            None if len(train_rows) == len(mnist().train_y) else train_rows,
            None if len(test_rows) == len(mnist().test_y) else test_rows)
        self.train_loader = DataLoader(train, batch_size=self.cfg.batch_size, shuffle=True)
        self.eval_loaders = [DataLoader(train, batch_size=self.cfg.eval_batch_size),
                             DataLoader(test, batch_size=self.cfg.eval_batch_size)]

    def epoch(self) -> EpochTimes:
        from bench import notebook

        torch.manual_seed(self.cfg.seed)
        model = build_model(self.cfg.model, **self.model_args)
        optimizer = engine.make_optimizer(model.parameters(), self.cfg)
        started = time.perf_counter()
        notebook.train_epoch(model, self.train_loader, optimizer)
        trained = time.perf_counter()
        for loader in self.eval_loaders:
            notebook.evaluate(model, loader)
        return EpochTimes(trained - started, time.perf_counter() - trained)


def compare(name: str, reps: int, quick: bool) -> list[tuple[EpochTimes, EpochTimes]]:
    """(engine, notebook) epoch times per repetition, after one warm-up of each."""
    config = case_config(name, quick)
    baseline = NotebookRun(config)
    return repeat(lambda: (engine_epoch(config), baseline.epoch()), reps)


def _context(runs: list[tuple[EpochTimes, EpochTimes]]) -> str:
    engine_train = median([e.train_s for e, _ in runs])
    engine_eval = median([e.eval_s for e, _ in runs])
    notebook_train = median([n.train_s for _, n in runs])
    notebook_eval = median([n.eval_s for _, n in runs])
    return (f"median seconds: engine {engine_train:.2f} train + {engine_eval:.2f} eval, "
            f"notebook {notebook_train:.2f} train + {notebook_eval:.2f} eval")


def run(reps: int, quick: bool) -> list[Figure]:
    threads = torch.get_num_threads()
    figures = []
    for name, what, target in (("mlp", "784-512-10 MLP, Adam, batch 128, 60k images", 5.0),
                               ("cnn", "cnn_overparam, SGD, batch 64, 1k images, 2k test images", None)):
        runs = compare(name, reps, quick)
        config = case_config(name, quick)
        size = f"train_size {config.get('train_size', 'all')}, test_size {config.get('test_size', 'all')}"
        common = f"{what} ({size}); {threads} torch threads; {_context(runs)}"
        # cnn_overparam is compute-bound (about 65 MFLOP per image forward): the data
        # path is a small share of its epoch, so no speed-up target applies.
        why_no_target = "" if target else "; no target: the epoch is dominated by convolutions, not data"
        figures.append(Figure.of(f"datapath_{name}_train_x", [n.train_s / e.train_s for e, n in runs], unit="x",
                                 target=target, notes=f"training epoch, notebook/engine; {common}{why_no_target}"))
        figures.append(Figure.of(f"datapath_{name}_train_eval_x", [n.total_s / e.total_s for e, n in runs],
                                 unit="x", target=target,
                                 notes=f"epoch + evaluation of train and test splits, notebook/engine; {common}"
                                       f"{why_no_target}"))
    return figures

