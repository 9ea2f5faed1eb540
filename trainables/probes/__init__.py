"""End-of-training measurements ("probes") of a trained classifier.

Probes live in the modules of this package, one per kind of measurement. A probe
is a function `(model, train, test, cfg) -> dict of metrics`, registered by name; a spec asks for probes with `probes: [sensitivity, sharpness]`, and the
engine reports their metrics with the last evaluation. Probes see `cfg.probe_size`
images: a fixed, class-balanced set, the same in every trial.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from trainables.data import Split
from trainables.registry import Registry

Probe = Callable[[nn.Module, Split, Split, "object"], dict]
PROBES: Registry[Probe] = Registry("probe")
register_probe = PROBES.register


def first_rows(split: Split, n: int) -> Split:
    """The first n rows of a split (test splits are balanced prefixes, so this is a
    fixed, class-balanced subset)."""
    return Split(split.x, split.y, split.idx[:n], split.mean, split.std)


def run_probes(names: list[str], model: nn.Module, train: Split, test: Split, cfg) -> dict:
    metrics: dict = {}
    was_training = model.training
    for name in names:
        metrics.update(PROBES[name](model, train, test, cfg))
    model.train(was_training)
    return metrics


def _register_all() -> None:
    """Import every module of this package: each registers its probes."""
    import importlib
    import pkgutil

    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")


_register_all()
