"""The `trajectory` family: train one CNN with the engine (as the classifier family
does) and save its weights every `snapshot_every` epochs, so the optimization paths
of several seeds can be projected together onto their first two principal
components (analysis/studies/trajectory.py).

    .venv/bin/python -m sweeps run sweeps/trajectory.yaml --profile quick

Config keys: the classifier family's (data, `model` and its arguments, engine keys),
with this study's defaults (`cnn_small`, Adam), plus `snapshot_every` (epochs).

Snapshots are trial artifacts: `snapshots/epoch_0000.npz`, ... in the trial's working
directory, which Tune syncs into `results/<study>/tune/<trial_id>/` (sweeps/tuneconfig.py sets
`SyncConfig(sync_artifacts=True)`). Each file holds every parameter of the model as
float16 under its state-dict name (half the size of float32; PCA of a path does not
need more than 3 significant digits), `epoch`, and `first_layer`, the names of the
first layer's parameters. The initial weights (epoch 0) are always saved, and so is
the last epoch. Read them with `load_snapshot` (np.load without pickle: data only).

History rows: an epoch-0 row (the initial network evaluated; no steps taken, so
`grad_norm` is NaN), then the engine's rows; rows of snapshot epochs carry the file's
name in `snapshot`.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import PositiveFloat, PositiveInt
from torch import nn

from trainables import classifier
from trainables.classifier import ClassifierConfig, make_splits, parse_config
from trainables.data import Split
from trainables.contract import Report, metric_row
from trainables.engine import evaluate_split, fit, weight_norm
from trainables.errors import ConfigError
from trainables.families import Family, register_family, validate_model
from trainables.models import count_params
from trainables.trial import restored_state, trial_device, tune_reporter

SNAPSHOT_DIR = "snapshots"
FIRST_LAYER_KEY = "first_layer"
EPOCH_KEY = "epoch"


class TrajectoryConfig(ClassifierConfig):
    """The classifier's keys with this study's defaults, plus the snapshot interval."""

    model: str = "cnn_small"  # no BatchNorm: the parameters are the whole network
    optimizer: Literal["sgd", "adam"] = "adam"
    lr: PositiveFloat = 1e-3
    # Epochs between weight snapshots (epoch 0 and the last epoch are always saved).
    # Must be a multiple of eval_every, so every snapshot has its test accuracy.
    snapshot_every: PositiveInt = 1


OWN_KEYS = ("snapshot_every",)


def validate(config: dict) -> dict:
    """One trial's config with defaults filled in; raises ConfigError naming the key.
    Data, model and engine keys are checked by the classifier family's `validate`."""
    model, arg_schema = classifier.check_keys("trajectory", TrajectoryConfig, TrajectoryConfig.model_fields, config)
    own = {k: v for k, v in config.items() if k in TrajectoryConfig.model_fields}
    resolved = validate_model(TrajectoryConfig, {**own, "model": model})
    args = {k: v for k, v in config.items() if k in arg_schema.model_fields}
    checked = classifier.validate({**resolved.model_dump(exclude=set(OWN_KEYS)), **args})
    if resolved.snapshot_every % resolved.eval_every:
        raise ConfigError("snapshot_every", f"{resolved.snapshot_every} is not a multiple of eval_every "
                                            f"({resolved.eval_every}): a snapshot needs its evaluation")
    return {**checked, **resolved.model_dump(include=set(OWN_KEYS))}


# ---------------------------------------------------------------------------
# Snapshots


def first_layer_names(model: nn.Module) -> list[str]:
    """Parameter names of the first module (in registration order) that has parameters
    of its own: the first conv of a CNN, the first Linear of an MLP."""
    for prefix, module in model.named_modules():
        own = [name for name, _ in module.named_parameters(recurse=False)]
        if own:
            return [f"{prefix}.{name}" if prefix else name for name in own]
    raise ValueError("the model has no parameters")


def snapshot_name(epoch: int) -> str:
    return f"{SNAPSHOT_DIR}/epoch_{epoch:04d}.npz"


def save_snapshot(folder: Path, epoch: int, model: nn.Module) -> str:
    """Write the model's parameters (float16) to folder/snapshots/epoch_NNNN.npz;
    returns the name relative to `folder`. Atomic: a crash never leaves half a file."""
    name = snapshot_name(epoch)
    path = Path(folder) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {k: p.detach().cpu().numpy().astype(np.float16) for k, p in model.named_parameters()}
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez(tmp, **arrays, **{EPOCH_KEY: np.array(epoch), FIRST_LAYER_KEY: np.array(first_layer_names(model))})
    os.replace(tmp, path)
    return name


def load_snapshot(path: Path) -> tuple[int, dict[str, np.ndarray], list[str]]:
    """(epoch, parameter name -> float16 array in saved order, first-layer names)."""
    with np.load(path, allow_pickle=False) as npz:
        params = {k: npz[k] for k in npz.files if k not in (EPOCH_KEY, FIRST_LAYER_KEY)}
        return int(npz[EPOCH_KEY]), params, [str(n) for n in npz[FIRST_LAYER_KEY]]


def snapshot_paths(trial_dir: Path) -> list[Path]:
    """A trial folder's snapshots, in epoch order."""
    return sorted((Path(trial_dir) / SNAPSHOT_DIR).glob("epoch_*[0-9].npz"))


# ---------------------------------------------------------------------------
# The trial


def initial_row(model: nn.Module, splits: dict[str, Split], cfg: TrajectoryConfig) -> dict:
    """Epoch 0: the untrained network evaluated like the engine's epochs."""
    started = time.perf_counter()
    evaluations = {name: evaluate_split(model, split, cfg.eval_batch_size) for name, split in splits.items()}
    return metric_row({"epoch": 0, "step": 0}, evaluations, measures={
        "weight_norm": weight_norm(model), "grad_norm": float("nan"), "time_s": time.perf_counter() - started})


def run(model: nn.Module, splits: dict[str, Split], cfg: TrajectoryConfig, report: Report, folder: Path,
        resume: dict | None = None) -> Literal["ok", "diverged"]:
    """Snapshot and report the initial network (unless resuming), then train with the
    engine, snapshotting every `snapshot_every` epochs and at the last one."""
    train = splits["train"]
    evals = {name: split for name, split in splits.items() if name != "train"}
    if resume is None:
        row = initial_row(model, splits, cfg)
        row["snapshot"] = save_snapshot(folder, 0, model)
        report(row, None)
    last_epoch = cfg.last_epoch(len(train))

    def on_epoch(metrics: dict, state: dict | None) -> None:
        epoch = metrics["epoch"]
        if state is not None and (epoch % cfg.snapshot_every == 0 or epoch == last_epoch):
            metrics = {**metrics, "snapshot": save_snapshot(folder, epoch, model)}
        report(metrics, state)

    return fit(model, train, evals, cfg, on_epoch, resume=resume)


def train(config: dict, data: dict) -> None:
    """One Tune trial. Tune runs it in the trial's working directory, whose files it
    syncs to the trial's folder of the study: snapshots go there."""
    cfg, model_args = parse_config(TrajectoryConfig, config)
    device, info = trial_device()
    ds = data[cfg.dataset]
    splits = make_splits(ds, cfg, device)
    torch.manual_seed(cfg.seed)  # initialization
    model = classifier.build_for(ds, cfg, model_args).to(device)
    report = tune_reporter({**info, "n_params": count_params(model)})
    run(model, splits, cfg, report, Path.cwd(), resume=restored_state(config))


register_family(Family(name="trajectory", validate=validate, load_data=classifier.load_data, train=train,
                       count_params=classifier.model_params))
