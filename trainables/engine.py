"""The one training loop for every study: classifiers and regressions.

`fit` trains a model on a `Split`, evaluates it on the whole training split (in eval
mode) and on every other split it is given, and hands each epoch's metrics and a
resumable state to a callback (the Tune glue turns that into `tune.report` with a
checkpoint). Nothing here knows about Ray, so it is tested directly.

    >>> status = fit(model, train, {"test": test}, EngineConfig(lr=0.01, epochs=2), on_epoch)

Options beyond plain classification:
- `criterion="mse"`: regression. The split's `labels(rows)` are float targets shaped
  like the model's output (e.g. `trainables.function_fit.TensorSplit`); reports carry
  losses only (no accuracies).
- `log_every_steps=n`: per-step training loss and gradient norm every n optimizer
  steps, reported under the key `steps` (see `fit`; analysis writes steps.parquet).
- `objective="grad_norm_sq"` and `stop_grad_norm=tol`: minimize the squared norm of
  the loss gradient and stop as soon as the gradient norm falls below tol (finding a
  critical point: trainables/critical_points.py).
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
    # Loss: cross-entropy on class labels, or mean squared error on float targets.
    criterion: Literal["cross_entropy", "mse"] = "cross_entropy"
    # Record the minibatch loss and gradient L2 norm of step 1 and of every n-th step
    # (n, 2n, ...); 0 = off. They stay on the device and are converted once per report.
    log_every_steps: NonNegativeInt = 0
    # What the optimizer minimizes: the loss, or the squared L2 norm of its gradient
    # (double backward: about 3x the cost of a step; for finding critical points).
    objective: Literal["loss", "grad_norm_sq"] = "loss"
    # Stop (and report, with converged=True) at the first step whose gradient norm is
    # below this, before updating the weights; None: never. With batch_size >= the
    # training set this is the exact full-batch gradient. Costs a device sync per step.
    stop_grad_norm: PositiveFloat | None = None

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
    # fused: one kernel over all parameters. On CPU, Adam's step for the 784-512-10
    # MLP took 0.22 ms instead of 0.60 (SGD 0.12 instead of 0.14); same arithmetic
    # up to float32 rounding.
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=decay, fused=True)
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=decay, fused=True)


def weight_norm(model: nn.Module) -> float:
    """L2 norm of all parameters together."""
    with torch.no_grad():
        return float(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(list(model.parameters())))))


class Evaluation(NamedTuple):
    loss: float  # mean cross-entropy (mean squared error for criterion "mse")
    acc: float  # fraction correct, in [0, 1] (NaN for "mse")
    per_class_acc: list[float]  # accuracy on each class's images (NaN for an absent class; [] for "mse")


_CRITERIA = {"cross_entropy": F.cross_entropy, "mse": F.mse_loss}


@torch.no_grad()
def evaluate_split(model: nn.Module, split: Split, batch_size: int, num_classes: int = 10,
                   criterion: str = "cross_entropy") -> Evaluation:
    """Loss, accuracy and per-class accuracy over the whole split, in eval mode
    (the mean squared error alone for criterion "mse")."""
    was_training = model.training
    model.eval()
    device = split.x.device
    if criterion == "mse":
        sq_sum = torch.zeros((), device=device, dtype=torch.float64)
        count = 0
        for start in range(0, len(split), batch_size):
            rows = split.idx[start : start + batch_size]
            targets = split.labels(rows)
            sq_sum += F.mse_loss(model(split.inputs(rows)), targets, reduction="sum").double()
            count += targets.numel()
        model.train(was_training)
        return Evaluation(float(sq_sum) / count, float("nan"), [])
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
    criterion = _CRITERIA[cfg.criterion]
    classify = cfg.criterion == "cross_entropy"
    step_log = _StepLog(cfg.log_every_steps)
    converged = False

    last_epoch = cfg.last_epoch(len(train))
    for epoch in range(first_epoch, last_epoch + 1):
        started = time.perf_counter()
        perm = train.idx[torch.randperm(len(train), generator=order_rng).to(device)]
        loss_sum = torch.zeros((), device=device)
        grad_norm_sum = torch.zeros((), device=device)
        n_steps = 0
        n_batches = 0  # n_steps, plus the batch that met stop_grad_norm (no update)
        for start in range(0, len(perm), cfg.batch_size):
            rows = perm[start : start + cfg.batch_size]
            loss = criterion(model(train.inputs(rows)), train.labels(rows))
            objective = loss
            if cfg.l2_mode == "penalty" and cfg.weight_decay > 0:
                objective = loss + cfg.weight_decay * sum(p.square().sum() for p in params)
            optimizer.zero_grad(set_to_none=True)
            if cfg.objective == "loss":
                objective.backward()
                grads = [p.grad for p in params if p.grad is not None]
                grad_norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
            else:  # descend on ||grad||^2: differentiate the gradient itself
                grads = torch.autograd.grad(objective, params, create_graph=True)
                grad_norm_sq = sum(g.square().sum() for g in grads)
                grad_norm = grad_norm_sq.detach().sqrt()
            grad_norm_sum += grad_norm
            loss_sum += loss.detach()
            n_batches += 1
            if cfg.stop_grad_norm is not None and float(grad_norm) < cfg.stop_grad_norm:
                converged = True  # before the update: the weights kept are the ones that met it
                break
            if cfg.objective == "grad_norm_sq":
                grad_norm_sq.backward()
            optimizer.step()
            n_steps += 1
            step_log.add(steps + n_steps, loss, grad_norm)
            if n_steps % _DIVERGENCE_CHECK_STEPS == 0 and not torch.isfinite(loss_sum):
                break
            if cfg.max_steps is not None and steps + n_steps >= cfg.max_steps:
                break
        steps += n_steps
        elapsed += time.perf_counter() - started
        running_loss = float(loss_sum) / n_batches
        if not math.isfinite(running_loss):
            on_epoch(_diverged_metrics(epoch, steps, elapsed, running_loss, evals, classify, step_log.flush()), None)
            return "diverged"
        if converged:
            last_epoch = epoch  # this report is the last
        if epoch % cfg.eval_every and epoch != last_epoch:
            continue

        eval_started = time.perf_counter()
        results = {name: evaluate_split(model, split, cfg.eval_batch_size, criterion=cfg.criterion)
                   for name, split in {"train": train, **evals}.items()}
        probed = {}
        if epoch == last_epoch and cfg.probes and "test" in evals:
            from trainables.probes import run_probes

            probed = run_probes(cfg.probes, model, train, evals["test"], cfg)
        elapsed += time.perf_counter() - eval_started
        metrics = epoch_metrics(cfg, epoch, steps, results, probed, running_loss=running_loss,
                                weight_norm=weight_norm(model), grad_norm=float(grad_norm_sum) / n_batches,
                                elapsed=elapsed, final=epoch == last_epoch)
        if cfg.stop_grad_norm is not None:
            # the gradient norm that met the tolerance (or the last batch's), and whether it did
            metrics.update(converged=converged, last_grad_norm=float(grad_norm))
        if step_log:
            metrics["steps"] = step_log.flush()
        if not math.isfinite(metrics["train_loss"]):
            on_epoch(_diverged_metrics(epoch, steps, elapsed, metrics["train_loss"], evals, classify,
                                       metrics.get("steps")), None)
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
        if converged:
            break
    return "ok"


def epoch_metrics(cfg: EngineConfig, epoch: int, steps: int, results: Mapping[str, Evaluation], probed: dict, *,
                  running_loss: float, weight_norm: float, grad_norm: float, elapsed: float, final: bool) -> dict:
    """One evaluation's report in the output contract: per-split loss (and accuracy),
    the gaps, the probes' measurements, the running loss, weight and gradient norms,
    time and status. Shared by `fit` and the packed trainer (trainables/packed.py)."""
    classify = cfg.criterion == "cross_entropy"
    metrics: dict = {"epoch": epoch, "step": steps}
    for name, result in results.items():
        metrics[f"{name}_loss"] = result.loss
        if classify:
            metrics[f"{name}_acc"] = result.acc
        if classify and cfg.per_class and name == "test":
            metrics.update({f"test_acc_{c}": acc for c, acc in enumerate(result.per_class_acc)})
    metrics.update(probed)
    if "test_acc" in metrics:
        metrics["gap_acc"] = metrics["train_acc"] - metrics["test_acc"]
    if "test_loss" in metrics:
        metrics["gap_loss"] = metrics["test_loss"] - metrics["train_loss"]
    metrics.update(
        running_loss=running_loss,  # mean minibatch loss during the epoch (train mode)
        weight_norm=weight_norm,
        grad_norm=grad_norm,  # mean over the epoch's steps
        time_s=elapsed,  # wall seconds of training + evaluation so far
        status="ok" if final else "running",
    )
    return metrics


def _diverged_metrics(epoch: int, steps: int, elapsed: float, loss: float, evals: Mapping,
                      classify: bool = True, step_records: dict | None = None) -> dict:
    """The last report of a diverged trial: every metric the trial would report, as
    NaN (a search or scheduler still finds its metric), and the status; with the
    per-step records since the last report (they show the blow-up), if any."""
    nan = float("nan")
    metrics = {"epoch": epoch, "step": steps, "running_loss": loss, "time_s": elapsed, "status": "diverged"}
    for name in ("train", *evals, "gap"):
        metrics[f"{name}_loss"] = nan
        if classify:
            metrics[f"{name}_acc"] = nan
    metrics.update(weight_norm=nan, grad_norm=nan)
    if step_records:
        metrics["steps"] = step_records
    return metrics


class _StepLog:
    """Per-step loss and gradient norm of step 1 and every n-th step, kept as device
    tensors (no sync per step) and converted to lists once per report."""

    def __init__(self, every: int) -> None:
        self.every = every
        self.step: list[int] = []
        self.values: list[torch.Tensor] = []  # stacked [loss, grad_norm] per logged step

    def add(self, step: int, loss: torch.Tensor, grad_norm: torch.Tensor) -> None:
        if self.every and (step % self.every == 0 or step == 1):
            self.step.append(step)
            self.values.append(torch.stack([loss.detach().float(), grad_norm.float()]))

    def __bool__(self) -> bool:
        return bool(self.step)

    def flush(self) -> dict | None:
        """{"step": [...], "loss": [...], "grad_norm": [...]} since the last flush
        (the `steps` report key of the shared contract), or None when empty."""
        if not self.step:
            return None
        loss, grad_norm = torch.stack(self.values).cpu().double().T.tolist()
        out = {"step": self.step, "loss": loss, "grad_norm": grad_norm}
        self.step, self.values = [], []
        return out
