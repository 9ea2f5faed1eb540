"""The one training loop for every classifier study.

`fit` trains a model on a `Split`, evaluates it on the whole training split (in eval
mode) and on every other split it is given, and hands each epoch's metrics and a
resumable state to a callback (the Tune glue turns that into `tune.report` with a
checkpoint). Nothing here knows about Ray, so it is tested directly.

    >>> status = fit(model, train, {"test": test}, EngineConfig(lr=0.01, epochs=2), on_epoch)
"""

from __future__ import annotations

import math
import time
from typing import Callable, Literal, Mapping, NamedTuple

import torch
from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt
from torch import nn
from torch.nn import functional as F

from trainables.data import Split


class EngineConfig(BaseModel):
    """Training hyperparameters. Defaults are the common small-image baseline;
    specs override only what they study."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: PositiveFloat = 0.01  # step size
    momentum: float = Field(default=0.9, ge=0.0, lt=1.0)  # SGD only (heavy ball)
    # L2 strength lambda. l2_mode "optimizer": the optimizer adds lambda*w to each
    # gradient (torch's weight_decay; for Adam this is coupled L2, not AdamW).
    # l2_mode "penalty": lambda*||w||^2 is added to the loss (gradient 2*lambda*w).
    # Both act on every parameter, biases and BatchNorm included.
    weight_decay: NonNegativeFloat = 0.0
    l2_mode: Literal["optimizer", "penalty"] = "optimizer"
    batch_size: PositiveInt = 128
    epochs: PositiveInt = 10
    seed: NonNegativeInt = 0  # initialization, data order and dropout
    eval_every: PositiveInt = 1  # epochs between evaluations (the last epoch always is one)
    # 256 keeps CPU activations cache-sized (measured 1.4x faster than 1000 for
    # cnn_overparam on one core); GPUs are indifferent at MNIST scale.
    eval_batch_size: PositiveInt = 256
    # A budget of optimizer steps instead of epochs (batch-size studies compare equal
    # step counts). When set, `epochs` is ignored: training runs ceil(max_steps /
    # steps per epoch) epochs, the last one cut at max_steps, and is evaluated there.
    max_steps: PositiveInt | None = None
    per_class: bool = False  # also report test accuracy per class (test_acc_0 .. test_acc_9)
    # End-of-training measurements from trainables/probes.py, reported with the last
    # evaluation (e.g. sensitivity, sharpness, confusion).
    probes: list[str] = Field(default_factory=list)
    probe_size: PositiveInt = 1000  # test images (or training batch) a probe looks at

    def last_epoch(self, train_size: int) -> int:
        if self.max_steps is None:
            return self.epochs
        steps_per_epoch = math.ceil(train_size / self.batch_size)
        return math.ceil(self.max_steps / steps_per_epoch)


# How often (steps) to check the running loss for NaN/inf. Checking forces a device
# sync, so not every step; a diverged trial wastes at most this many steps.
_DIVERGENCE_CHECK_STEPS = 50

EpochCallback = Callable[[dict, "dict | None"], None]


def make_optimizer(params, cfg: EngineConfig) -> torch.optim.Optimizer:
    decay = cfg.weight_decay if cfg.l2_mode == "optimizer" else 0.0
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=decay)
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=decay)


def weight_norm(model: nn.Module) -> float:
    """L2 norm of all parameters together."""
    with torch.no_grad():
        return float(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(list(model.parameters())))))


class Evaluation(NamedTuple):
    loss: float  # mean cross-entropy
    acc: float  # fraction correct, in [0, 1]
    per_class_acc: list[float]  # accuracy on each class's images (NaN for an absent class)


@torch.no_grad()
def evaluate_split(model: nn.Module, split: Split, batch_size: int, num_classes: int = 10) -> Evaluation:
    """Loss, accuracy and per-class accuracy over the whole split, in eval mode."""
    was_training = model.training
    model.eval()
    device = split.x.device
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros(num_classes, device=device, dtype=torch.long)
    count = torch.zeros(num_classes, device=device, dtype=torch.long)
    for start in range(0, len(split), batch_size):
        rows = split.idx[start : start + batch_size]
        logits = model(split.inputs(rows))
        labels = split.labels(rows)
        loss_sum += F.cross_entropy(logits, labels, reduction="sum")
        correct += torch.bincount(labels[logits.argmax(1) == labels], minlength=num_classes)
        count += torch.bincount(labels, minlength=num_classes)
    model.train(was_training)
    per_class = (correct.double() / count.double()).tolist()  # 0/0 -> NaN for absent classes
    return Evaluation(float(loss_sum) / len(split), int(correct.sum()) / len(split), per_class)


def evaluate(model: nn.Module, split: Split, batch_size: int) -> tuple[float, float]:
    """(mean cross-entropy, accuracy in [0, 1]) over the whole split, in eval mode."""
    result = evaluate_split(model, split, batch_size)
    return result.loss, result.acc


def _rng_state(generator: torch.Generator, device: torch.device) -> dict:
    state = {"order": generator.get_state(), "torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(generator: torch.Generator, state: dict, device: torch.device) -> None:
    generator.set_state(state["order"])
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def fit(
    model: nn.Module,
    train: Split,
    evals: Mapping[str, Split],
    cfg: EngineConfig,
    on_epoch: EpochCallback,
    resume: dict | None = None,
) -> Literal["ok", "diverged"]:
    """Train `model` (already on the data's device) and report after every evaluation.

    `on_epoch(metrics, state)` gets the output-contract metrics and a state dict
    (model, optimizer, epoch, RNG states) from which `fit(..., resume=state)` continues
    exactly where this run stood. On a non-finite loss it reports once with
    `status="diverged"` and no state, then returns "diverged"."""
    device = train.x.device
    optimizer = make_optimizer(model.parameters(), cfg)
    order_rng = torch.Generator().manual_seed(cfg.seed)  # data order, on CPU: same on any device
    first_epoch, elapsed, steps = 1, 0.0, 0
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        _set_rng_state(order_rng, resume["rng"], device)
        first_epoch, elapsed, steps = resume["epoch"] + 1, resume["elapsed_s"], resume["steps"]
    params = [p for p in model.parameters() if p.requires_grad]
    model.train()

    last_epoch = cfg.last_epoch(len(train))
    for epoch in range(first_epoch, last_epoch + 1):
        started = time.perf_counter()
        perm = train.idx[torch.randperm(len(train), generator=order_rng).to(device)]
        loss_sum = torch.zeros((), device=device)
        grad_norm_sum = torch.zeros((), device=device)
        n_steps = 0
        for start in range(0, len(perm), cfg.batch_size):
            rows = perm[start : start + cfg.batch_size]
            loss = F.cross_entropy(model(train.inputs(rows)), train.labels(rows))
            objective = loss
            if cfg.l2_mode == "penalty" and cfg.weight_decay > 0:
                objective = loss + cfg.weight_decay * sum(p.square().sum() for p in params)
            optimizer.zero_grad(set_to_none=True)
            objective.backward()
            grads = [p.grad for p in params if p.grad is not None]
            grad_norm_sum += torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
            optimizer.step()
            loss_sum += loss.detach()
            n_steps += 1
            if n_steps % _DIVERGENCE_CHECK_STEPS == 0 and not torch.isfinite(loss_sum):
                break
            if cfg.max_steps is not None and steps + n_steps >= cfg.max_steps:
                break
        steps += n_steps
        elapsed += time.perf_counter() - started
        running_loss = float(loss_sum) / n_steps
        if not math.isfinite(running_loss):
            on_epoch(_diverged_metrics(epoch, steps, elapsed, running_loss, evals), None)
            return "diverged"
        if epoch % cfg.eval_every and epoch != last_epoch:
            continue

        eval_started = time.perf_counter()
        metrics: dict = {"epoch": epoch, "step": steps}
        metrics["train_loss"], metrics["train_acc"] = evaluate(model, train, cfg.eval_batch_size)
        for name, split in evals.items():
            result = evaluate_split(model, split, cfg.eval_batch_size)
            metrics[f"{name}_loss"], metrics[f"{name}_acc"] = result.loss, result.acc
            if cfg.per_class and name == "test":
                metrics.update({f"test_acc_{c}": acc for c, acc in enumerate(result.per_class_acc)})
        if epoch == last_epoch and cfg.probes and "test" in evals:
            from trainables.probes import run_probes

            metrics.update(run_probes(cfg.probes, model, train, evals["test"], cfg))
        elapsed += time.perf_counter() - eval_started
        if "test_acc" in metrics:
            metrics["gap_acc"] = metrics["train_acc"] - metrics["test_acc"]
            metrics["gap_loss"] = metrics["test_loss"] - metrics["train_loss"]
        metrics.update(
            running_loss=running_loss,  # mean minibatch loss during the epoch (train mode)
            weight_norm=weight_norm(model),
            grad_norm=float(grad_norm_sum) / n_steps,  # mean over the epoch's steps
            time_s=elapsed,  # wall seconds of training + evaluation so far
            status="ok" if epoch == last_epoch else "running",
        )
        if not math.isfinite(metrics["train_loss"]):
            on_epoch(_diverged_metrics(epoch, steps, elapsed, metrics["train_loss"], evals), None)
            return "diverged"
        state = {
            "epoch": epoch,
            "steps": steps,
            "elapsed_s": elapsed,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "rng": _rng_state(order_rng, device),
        }
        on_epoch(metrics, state)
    return "ok"


def _diverged_metrics(epoch: int, steps: int, elapsed: float, loss: float, evals: Mapping) -> dict:
    """The last report of a diverged trial: every metric the trial would report, as
    NaN (a search or scheduler still finds its metric), and the status."""
    nan = float("nan")
    metrics = {"epoch": epoch, "step": steps, "running_loss": loss, "time_s": elapsed, "status": "diverged"}
    for name in ("train", *evals, "gap"):
        metrics.update({f"{name}_loss": nan, f"{name}_acc": nan})
    metrics.update(weight_norm=nan, grad_norm=nan)
    return metrics
