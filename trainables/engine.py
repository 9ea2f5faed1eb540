"""The one training loop for every torch study: classifiers and regressions, one
model or a pack of K.

`fit` trains on a `Split`, evaluates on the whole training split (in eval mode) and
on every other split it is given, and hands each evaluation's metric row
(`trainables.contract.metric_row`) and a resumable state to a callback (the Tune glue
turns that into `tune.report` with a checkpoint). Nothing here knows about Ray, so it
is tested directly.

    >>> status = fit(model, train, {"test": test}, EngineConfig(lr=0.01, epochs=2), on_epoch)

What the loop steps is a `ModelSet`: `SingleModel` (an `nn.Module` and a torch
optimizer; what `fit` makes of a module) or `trainables.packed.PackedModels` (K
models of one architecture with stacked weights and a vmapped step, for a spec's
`pack: K`):

    >>> statuses = fit(PackedModels(modules), train, evals, cfgs, on_report, names=cell_ids)

Options beyond plain classification:
- `criterion="mse"`: regression. The split's `labels(rows)` are float targets shaped
  like the model's output (e.g. `trainables.data.TensorSplit`); reports carry
  losses only (no accuracies).
- `log_every_steps=n`: per-step training loss and gradient norm every n optimizer
  steps, reported under the key `steps` (see `fit`; analysis writes steps.parquet).
- `objective="grad_norm_sq"` and `stop_grad_norm=tol`: minimize the squared norm of
  the loss gradient and stop as soon as the gradient norm falls below tol (finding a
  critical point: trainables/critical_points.py).

Options for GPUs (they run on CPU too; the defaults change nothing):
- `precision="bf16"`: forward passes (training and evaluation) under
  `torch.autocast(dtype=torch.bfloat16)`; weights, gradients, optimizer state and
  losses stay float32.
- `channels_last=True`: convolution weights and 4-D input batches in
  `torch.channels_last` layout (NHWC, which tensor cores prefer); nothing for MLPs.
- `cuda_eval_batch_size=n`: the evaluation batch when the data are on a CUDA device
  (evaluation holds no activations for backward, so a GPU takes thousands at once);
  `eval_batch_size` elsewhere.
"""

from __future__ import annotations

import bisect
import contextlib
import math
import time
from typing import Literal, Mapping, Sequence

import torch
from pydantic import (BaseModel, ConfigDict, Field, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt,
                      model_serializer)
from torch import nn
from torch.nn import functional as F

from trainables.contract import Evaluation, Report, diverged_row, is_diverged, metric_row
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
    # How the device computes, not what is trained (see the module docstring).
    # bf16 keeps 8 significant bits of each activation: metrics are close to fp32's,
    # not bitwise (tests/test_engine_gpu_options.py says how close).
    precision: Literal["fp32", "bf16"] = "fp32"
    channels_last: bool = False
    # Images per evaluation batch on a CUDA device; None: eval_batch_size there too.
    # Without backward a batch holds a layer's output or two at a time: for
    # cnn_overparam's first conv (64x28x28 float32, 200 KB per image) 0.8 GB at 4096.
    cuda_eval_batch_size: PositiveInt | None = None

    @model_serializer(mode="wrap")
    def _without_default_device_options(self, handler):
        # A cell's id hashes its resolved config (this dump). These keys came after
        # studies had results: left out at their defaults, those cells keep their ids.
        dumped = handler(self)
        for key, default in _DEVICE_OPTION_DEFAULTS.items():
            if key in dumped and dumped[key] == default:
                del dumped[key]
        return dumped

    def eval_batch_for(self, device: torch.device, batch_size: int) -> int:
        """The evaluation batch on `device`: cuda_eval_batch_size on a CUDA device when
        set, else `batch_size` (what `fit` passes: eval_batch_size)."""
        if device.type == "cuda" and self.cuda_eval_batch_size is not None:
            return self.cuda_eval_batch_size
        return batch_size

    def last_epoch(self, train_size: int) -> int:
        if self.max_steps is None:
            return self.epochs
        steps_per_epoch = math.ceil(train_size / self.batch_size)
        return math.ceil(self.max_steps / steps_per_epoch)


_DEVICE_OPTION_DEFAULTS = {"precision": "fp32", "channels_last": False, "cuda_eval_batch_size": None}


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The context for forward passes: bfloat16 autocast for precision "bf16" (matmuls
    and convolutions in bfloat16; the weights stay float32), else nothing."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()  # not autocast(enabled=False): no per-step cost at the default


def uses_channels_last(model: nn.Module, channels_last: bool) -> bool:
    """Whether channels_last applies: asked for, and the model has 4-D (convolution) weights."""
    return channels_last and any(p.dim() == 4 for p in model.parameters())


def in_layout(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """A 4-D batch in channels_last layout when asked (for 1-channel images the same
    memory: no copy), anything else as it is."""
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x


# How often (steps) to check the running loss for NaN/inf. Checking forces a device
# sync, so not every step; a diverged model wastes at most this many steps.
_DIVERGENCE_CHECK_STEPS = 50


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


CRITERIA = {"cross_entropy": F.cross_entropy, "mse": F.mse_loss}


@torch.no_grad()
def evaluate_split(model: nn.Module, split: Split, batch_size: int, num_classes: int | None = None,
                   criterion: str = "cross_entropy", precision: str = "fp32",
                   channels_last: bool = False) -> Evaluation:
    """Loss, accuracy and per-class accuracy over the whole split, in eval mode
    (the mean squared error alone for criterion "mse"). `num_classes`: the model's
    outputs (the logits' width) unless given. `precision` and `channels_last` as in
    EngineConfig (the model already in that layout); losses are float32 either way."""
    was_training = model.training
    model.eval()
    device = split.x.device

    def forward(rows: torch.Tensor) -> torch.Tensor:
        with autocast(device, precision):
            out = model(in_layout(split.inputs(rows), channels_last))
        return out.float()

    if criterion == "mse":
        sq_sum = torch.zeros((), device=device, dtype=torch.float64)
        count = 0
        for start in range(0, len(split), batch_size):
            rows = split.idx[start : start + batch_size]
            targets = split.labels(rows)
            sq_sum += F.mse_loss(forward(rows), targets, reduction="sum").double()
            count += targets.numel()
        model.train(was_training)
        return Evaluation(float(sq_sum) / count, float("nan"), [])
    loss_sum = torch.zeros((), device=device)
    correct = count = None
    for start in range(0, len(split), batch_size):
        rows = split.idx[start : start + batch_size]
        logits = forward(rows)
        labels = split.labels(rows)
        if correct is None:
            num_classes = num_classes or logits.shape[1]
            correct = torch.zeros(num_classes, device=device, dtype=torch.long)
            count = torch.zeros(num_classes, device=device, dtype=torch.long)
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


def rng_state(generators: Sequence[torch.Generator], device: torch.device) -> dict:
    """The data-order generators' states and the global RNG (dropout) as a checkpoint
    holds them; `set_rng_state` puts them back."""
    state = {"order": generators[0].get_state(), "torch": torch.get_rng_state()}
    if len(generators) > 1:
        state["orders"] = [g.get_state() for g in generators]
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(generators: Sequence[torch.Generator], state: dict, device: torch.device) -> None:
    for generator, order in zip(generators, state.get("orders") or [state["order"]]):
        generator.set_state(order)
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


class ModelSet:
    """The K models `fit` steps together, each with its own config, data order and
    optimizer state. `fit` calls, per epoch, `shuffle` then, per batch,
    `gradients` and `update`; at an evaluation `evaluate`, `weight_norms` and
    `module` (for probes); for checkpoints `state_dict` / `load_state_dict`.
    Losses and gradient norms are device tensors of shape [K] (no sync per step)."""

    k: int
    cfgs: list[EngineConfig]

    def prepare(self, cfgs: Sequence[EngineConfig], device: torch.device) -> None:
        """Bind the configs (one per model): optimizers, data-order generators."""
        raise NotImplementedError

    def shuffle(self, train: Split) -> None:
        """Draw this epoch's order of the training rows for every model."""
        raise NotImplementedError

    def gradients(self, train: Split, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward and backward on batch [start, stop) of this epoch's order: (losses
        [K], gradient L2 norms [K]); `update` then applies the step."""
        raise NotImplementedError

    def update(self) -> None:
        raise NotImplementedError

    def freeze(self, i: int) -> None:
        """Model i takes no more steps (it met `stop_grad_norm`); the others go on."""
        raise NotImplementedError

    def evaluate(self, split: Split, batch_size: int) -> list[Evaluation]:
        raise NotImplementedError

    def weight_norms(self) -> list[float]:
        raise NotImplementedError

    def module(self, i: int) -> nn.Module:
        """Model i as an ordinary module (for probes)."""
        raise NotImplementedError

    def state_dict(self) -> dict:
        raise NotImplementedError

    def load_state_dict(self, state: dict) -> None:
        raise NotImplementedError


class SingleModel(ModelSet):
    """One `nn.Module` with a torch optimizer: K = 1. Supports every EngineConfig
    option (L2 as a penalty, regression, the gradient-norm objective, bf16,
    channels_last)."""

    k = 1

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def prepare(self, cfgs: Sequence[EngineConfig], device: torch.device) -> None:
        (cfg,) = cfgs
        self.cfgs, self.device = [cfg], device
        self.channels_last = uses_channels_last(self.model, cfg.channels_last)
        if self.channels_last:  # before the optimizer: its state takes the weights' layout
            self.model.to(memory_format=torch.channels_last)
        self.optimizer = make_optimizer(self.model.parameters(), cfg)
        self.order_rng = torch.Generator().manual_seed(cfg.seed)  # data order, on CPU: same on any device
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.criterion = CRITERIA[cfg.criterion]
        self.double_backward = cfg.objective == "grad_norm_sq"
        self.penalty = cfg.weight_decay if cfg.l2_mode == "penalty" and cfg.weight_decay > 0 else 0.0
        self.model.train()

    def shuffle(self, train: Split) -> None:
        self.perm = train.idx[torch.randperm(len(train), generator=self.order_rng).to(train.idx.device)]

    def gradients(self, train: Split, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self.perm[start:stop]
        with autocast(self.device, self.cfgs[0].precision):
            outputs = self.model(in_layout(train.inputs(rows), self.channels_last))
        loss = self.criterion(outputs.float(), train.labels(rows))  # float32 loss (a no-op at fp32)
        objective = loss
        if self.penalty:
            objective = loss + self.penalty * sum(p.square().sum() for p in self.params)
        self.optimizer.zero_grad(set_to_none=True)
        if not self.double_backward:
            objective.backward()
            grads = [p.grad for p in self.params if p.grad is not None]
            grad_norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
            self.grad_norm_sq = None
        else:  # descend on ||grad||^2: differentiate the gradient itself
            grads = torch.autograd.grad(objective, self.params, create_graph=True)
            self.grad_norm_sq = sum(g.square().sum() for g in grads)
            grad_norm = self.grad_norm_sq.detach().sqrt()
        return loss.detach().view(1), grad_norm.view(1)

    def update(self) -> None:
        if self.grad_norm_sq is not None:
            self.grad_norm_sq.backward()
        self.optimizer.step()

    def freeze(self, i: int) -> None:
        pass  # K = 1: fit stops stepping as soon as its only model is frozen

    def evaluate(self, split: Split, batch_size: int) -> list[Evaluation]:
        cfg = self.cfgs[0]
        return [evaluate_split(self.model, split, cfg.eval_batch_for(split.x.device, batch_size),
                               criterion=cfg.criterion, precision=cfg.precision, channels_last=self.channels_last)]

    def weight_norms(self) -> list[float]:
        return [weight_norm(self.model)]

    def module(self, i: int) -> nn.Module:
        return self.model

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "rng": rng_state([self.order_rng], self.device)}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        set_rng_state([self.order_rng], state["rng"], self.device)


def fit(
    model: nn.Module | ModelSet,
    train: Split,
    evals: Mapping[str, Split],
    cfg: EngineConfig | Sequence[EngineConfig],
    on_epoch: Report,
    resume: dict | None = None,
    *,
    names: Sequence[str] | None = None,
) -> str | dict[str, str]:
    """Train (the data and the models already on one device) and report after every
    evaluation.

    One model (`model` a module, `cfg` its config): `on_epoch(metrics, state)` gets
    the output contract's metric row and a state dict from which `fit(...,
    resume=state)` continues exactly where this run stood. On a non-finite loss it
    reports once with status "diverged" and no state. Returns "ok" or "diverged".

    A pack (`model` a ModelSet of K models, `cfg` one config per model, `names` the
    name each reports under): `on_epoch(report, state)` gets {"epoch", "step",
    "time_s", "status", "members": {name: metric row}}; a model that diverges
    appears once, with status "diverged", and not after, while the others go on.
    Returns {name: "ok" | "diverged"}."""
    models = model if isinstance(model, ModelSet) else SingleModel(model)
    cfgs = [cfg] if isinstance(cfg, EngineConfig) else list(cfg)
    if len(cfgs) != models.k or (names is not None and len(names) != models.k) or (names is None and models.k > 1):
        raise ValueError(f"fit: {models.k} model(s) need as many configs and, when more than one, names")
    device = train.x.device
    models.prepare(cfgs, device)
    cfg, k = cfgs[0], models.k  # what the models share: epochs, batches, evaluation, criterion
    classify = cfg.criterion == "cross_entropy"
    first_epoch, elapsed, steps = 1, 0.0, 0
    status = ["running"] * k
    if resume is not None:
        models.load_state_dict(resume)
        first_epoch, elapsed, steps = resume["epoch"] + 1, resume["elapsed_s"], resume["steps"]
        saved = resume.get("status") or status
        status = [saved[n] for n in names] if isinstance(saved, dict) else list(saved)  # a dict: older packs
    step_log = StepLog(cfg.log_every_steps, k)
    last_epoch = cfg.last_epoch(len(train))
    # stop_grad_norm, per model: the step at which each met it (None: not yet) and the
    # gradient norm that did. A model that met it is frozen (a pack steps the others
    # on) and reports its last row at that step, as it would alone.
    stopped_at: list[int | None] = [None] * k
    stop_norm = [float("nan")] * k

    for epoch in range(first_epoch, last_epoch + 1):
        started = time.perf_counter()
        models.shuffle(train)
        loss_sum = torch.zeros(k, device=device)
        grad_norm_sum = torch.zeros(k, device=device)
        alive = torch.tensor([s == "running" for s in status], device=device)
        pending = alive.clone()  # still stepping: alive and not stopped
        batches = torch.zeros(k, device=device)  # per model: batches this epoch, incl. the one that met stop_grad_norm
        n_steps = 0
        for start in range(0, len(train), cfg.batch_size):
            losses, grad_norms = models.gradients(train, start, start + cfg.batch_size)
            if cfg.stop_grad_norm is None:  # every model steps every batch: no masks in the hot loop
                grad_norm_sum += grad_norms
                loss_sum += losses
                batches += 1
            else:  # a model that met stop_grad_norm counts no more batches
                grad_norm_sum += torch.where(pending, grad_norms, 0.0)
                loss_sum += torch.where(pending, losses, 0.0)
                batches += pending
                met = (pending & (grad_norms < cfg.stop_grad_norm)).tolist()
                for i in (i for i in range(k) if met[i]):
                    # before the update: the weights kept are the ones that met it
                    stopped_at[i], stop_norm[i] = steps + n_steps, float(grad_norms[i])
                    pending[i] = False
                    models.freeze(i)
                if not pending.any():
                    break
            models.update()
            n_steps += 1
            step_log.add(steps + n_steps, losses, grad_norms)
            # A model's non-finite loss does not end the epoch of the others; once
            # every live model has diverged the rest of it is wasted.
            if n_steps % _DIVERGENCE_CHECK_STEPS == 0 and not torch.isfinite(loss_sum[alive]).any():
                break
            if cfg.max_steps is not None and steps + n_steps >= cfg.max_steps:
                break
        steps += n_steps
        elapsed += time.perf_counter() - started
        running = (loss_sum / batches.clamp(min=1)).tolist()
        mean_grad_norm = (grad_norm_sum / batches.clamp(min=1)).tolist()
        stopping = {i for i in range(k) if status[i] == "running" and stopped_at[i] is not None}
        final = epoch == last_epoch or not pending.any()
        rows: dict[int, dict] = {}
        for i in range(k):  # models whose loss went non-finite report once, as diverged
            if status[i] == "running" and is_diverged(running[i]):
                status[i] = "diverged"
                stopping.discard(i)
                rows[i] = diverged_row({"epoch": epoch, "step": steps}, ["train", *evals], running_loss=running[i],
                                       time_s=elapsed, classify=classify, steps=step_log.take(i, last=True))
        # Models due to report: all live ones at an evaluation epoch or the end,
        # else only those that met stop_grad_norm in this epoch.
        due = [i for i in range(k) if status[i] == "running" and (final or epoch % cfg.eval_every == 0 or i in stopping)]
        if due:
            eval_started = time.perf_counter()
            results = {name: models.evaluate(split, cfg.eval_batch_size) for name, split in {"train": train, **evals}.items()}
            ending = [i for i in due if final or i in stopping]
            probed = [{} for _ in range(k)]
            if cfg.probes and "test" in evals:
                from trainables.probes import run_probes

                for i in ending:
                    probed[i] = run_probes(cfg.probes, models.module(i), train, evals["test"], cfgs[i])
            elapsed += time.perf_counter() - eval_started
            norms = models.weight_norms()
            for i in due:
                ends = i in ending
                measures = {**probed[i], "running_loss": running[i],  # mean minibatch loss of the epoch (train mode)
                            "weight_norm": norms[i], "grad_norm": mean_grad_norm[i],  # mean over steps
                            "time_s": elapsed}  # wall seconds of training + evaluation so far
                if cfg.stop_grad_norm is not None:
                    # the gradient norm that met the tolerance (or the last batch's), and whether it did
                    met = stopped_at[i] is not None
                    measures.update(converged=met, last_grad_norm=stop_norm[i] if met else float(grad_norms[i]))
                position = {"epoch": epoch, "step": stopped_at[i] if stopped_at[i] is not None else steps}
                row = metric_row(position, {s: r[i] for s, r in results.items()}, classify=classify,
                                 per_class=cfgs[i].per_class, measures=measures, status="ok" if ends else "running")
                records = step_log.take(i, last=ends, until=position["step"])
                if records:
                    row["steps"] = records
                if is_diverged(row["train_loss"]):
                    status[i] = "diverged"
                    step_log.take(i, last=True)  # reports no more
                    row = diverged_row(position, ["train", *evals], running_loss=row["train_loss"], time_s=elapsed,
                                       classify=classify, steps=records)
                elif ends:
                    status[i] = "ok"
                rows[i] = row
        if not rows:
            continue  # not an evaluation epoch, and nobody diverged
        done = all(s != "running" for s in status)
        # No checkpoint once every model has diverged: nothing is left to continue.
        state = None if all(s == "diverged" for s in status) else {
            "epoch": epoch, "steps": steps, "elapsed_s": elapsed, "status": list(status), **models.state_dict()}
        if names is None:
            on_epoch(rows[0], state)
        else:
            on_epoch({"epoch": epoch, "step": steps, "time_s": elapsed, "status": "ok" if done else "running",
                      "members": {names[i]: row for i, row in sorted(rows.items())}}, state)
        if done:
            break
    return status[0] if names is None else dict(zip(names, status))


class StepLog:
    """Per-step loss and gradient norm of step 1 and every n-th step for K models,
    kept as device tensors (no sync per step) and converted to lists when a model
    reports (`take`)."""

    def __init__(self, every: int, k: int = 1) -> None:
        self.every = every
        self.step: list[int] = []
        self.values: list[torch.Tensor] = []  # [2, K] per logged step: losses, gradient norms
        self.taken: list[int | None] = [0] * k  # per model: entries reported so far; None: reports no more

    def add(self, step: int, losses: torch.Tensor, grad_norms: torch.Tensor) -> None:
        if self.every and (step % self.every == 0 or step == 1):
            self.step.append(step)
            self.values.append(torch.stack([losses.detach().float(), grad_norms.float()]))

    def take(self, i: int, last: bool = False, until: int | None = None) -> dict | None:
        """Model i's {"step": [...], "loss": [...], "grad_norm": [...]} since it last
        reported (the `steps` report key of the contract), or None when empty.
        `last`: model i reports no more (ended or diverged); `until`: its last step
        (a pack's frozen model: later entries are the others')."""
        first = self.taken[i]
        self.taken[i] = None if last else len(self.step)
        out = None
        stop = len(self.step) if until is None else bisect.bisect_right(self.step, until)
        if first is not None and first < stop:
            loss, grad_norm = torch.stack(self.values[first:stop])[:, :, i].cpu().double().T.tolist()
            out = {"step": self.step[first:stop], "loss": loss, "grad_norm": grad_norm}
        reporting = [t for t in self.taken if t is not None]
        if not reporting or min(reporting) == len(self.step):  # every reporting model has these: drop them
            self.step, self.values = [], []
            self.taken = [None if t is None else 0 for t in self.taken]
        return out
