"""The `numpy_mlp` family: a fully connected network written from scratch in NumPy
(no autograd): Glorot-uniform initialization, sigmoid / tanh / relu hidden layers,
softmax cross-entropy, minibatch gradient descent with optional L2, every operation
vectorized over the batch.

    .venv/bin/python -m sweeps run sweeps/numpy_mlp.yaml --profile quick

It trains on the same data as the engine (trainables/data.py: the uint8 images from
Ray's object store, the same subsets, normalized per batch the same way) and draws
its minibatches in the engine's order (a torch.Generator seeded with `seed`, one
`randperm` per epoch), so with the same initial weights it follows the same path as
`build_model("mlp", hidden=..., activation=...)` trained by `trainables.engine.fit`
with plain SGD (momentum 0): tests/test_numpy_mlp.py checks both that and its
gradients against torch autograd.

Reports follow the output contract (train/test loss and accuracy, gaps,
`weight_norm`, `grad_norm`, `time_s`), plus `steps` (per-step minibatch loss and
gradient norm of step 1 and every `log_every_steps`-th step; analysis writes them to
steps.parquet) and, with the last evaluation, the 10x10 confusion matrices
`train_confusion` and `confusion` (test; rows true class, columns predicted), from
which the report's classification table is computed.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Literal

import numpy as np
import torch
from pydantic import Field, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt

from trainables import classifier
from trainables import data as datasets
from trainables.contract import Evaluation, Report, diverged_row, is_diverged, metric_row
from trainables.classifier import DataConfig
from trainables.families import Family, register_family, validate_model
from trainables.trial import restored_state, trial_device, tune_reporter

# MNIST's sizes (the defaults); a trial's network takes its dataset's (`train`).
INPUTS = 28 * 28
NUM_CLASSES = datasets.NUM_CLASSES


class NumpyMLPConfig(DataConfig):
    # The contract's `model` column; only this network exists here.
    model: Literal["numpy_mlp"] = "numpy_mlp"
    hidden: list[PositiveInt] = Field(default_factory=lambda: [500, 250, 100], min_length=1)  # units per layer
    activation: Literal["sigmoid", "tanh", "relu"] = "relu"
    lr: PositiveFloat = 0.01  # plain gradient descent step size
    batch_size: PositiveInt = 64
    epochs: PositiveInt = 15
    # L2: lambda * w is added to every gradient (weights and biases), as torch's SGD
    # weight_decay and the engine's default l2_mode do; the reported loss excludes it.
    weight_decay: NonNegativeFloat = 0.0
    seed: NonNegativeInt = 0  # initialization and data order
    eval_every: PositiveInt = 1  # epochs between evaluations (the last epoch always is one)
    # Forward passes of 1000 images keep the [1000, 500] activations cache-sized.
    eval_batch_size: PositiveInt = 1000
    # Per-step records (step 1 and every n-th step); 0: none. Every 10th of about 940
    # steps per epoch (60k images) is enough for a loss-vs-iteration curve.
    log_every_steps: NonNegativeInt = 10


def engine_equivalent(config: dict) -> dict:
    """The classifier-family config of the same network and training: `mlp` with these
    hidden layers and activation, SGD without momentum, L2 in the optimizer."""
    own = {k: v for k, v in config.items() if k in NumpyMLPConfig.model_fields and k not in ("model", "log_every_steps")}
    return {**own, "model": "mlp", "optimizer": "sgd", "momentum": 0.0, "l2_mode": "optimizer"}


def validate(config: dict) -> dict:
    """One trial's config with defaults filled in; raises ConfigError naming the key.
    Data sizes are checked by the classifier family, on the equivalent torch config."""
    resolved = validate_model(NumpyMLPConfig, config)
    classifier.validate(engine_equivalent(resolved.model_dump()))
    return resolved.model_dump()


# ---------------------------------------------------------------------------
# The network


def _sigmoid(z: np.ndarray) -> np.ndarray:
    # The identity sigmoid(z) = (1 + tanh(z / 2)) / 2: no overflow for large |z|
    # (1 / (1 + exp(-z)) warns at z = -1000) and no masking, so as fast as tanh.
    return 0.5 * (1.0 + np.tanh(0.5 * z))


# activation(z) and its derivative written with the activation's output a (and z).
ACTIVATIONS: dict[str, tuple[Callable, Callable]] = {
    "sigmoid": (_sigmoid, lambda z, a: a * (1.0 - a)),
    "tanh": (np.tanh, lambda z, a: 1.0 - a * a),
    "relu": (lambda z: np.maximum(z, 0.0), lambda z, a: (z > 0).astype(z.dtype)),
}


def glorot_uniform(rng: np.random.Generator, fan_in: int, fan_out: int, dtype) -> np.ndarray:
    """U(-a, a) with a = sqrt(6 / (fan_in + fan_out)) (Glorot & Bengio 2010): keeps the
    variance of activations and gradients about equal across layers. Shape [in, out]."""
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, size=(fan_in, fan_out)).astype(dtype)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


class NumpyMLP:
    """inputs [B, n_in] -> (x @ W + b, activation) per hidden layer -> x @ W + b logits.

    `params` is [W1, b1, W2, b2, ...], W of shape [in, out] (torch's Linear stores the
    transpose), b of shape [out]."""

    def __init__(self, sizes: list[int], activation: str, seed: int = 0, dtype=np.float32) -> None:
        self.sizes, self.activation, self.dtype = list(sizes), activation, np.dtype(dtype)
        rng = np.random.default_rng(seed)
        self.params: list[np.ndarray] = []
        for fan_in, fan_out in zip(sizes, sizes[1:]):
            self.params += [glorot_uniform(rng, fan_in, fan_out, self.dtype), np.zeros(fan_out, self.dtype)]

    @property
    def n_params(self) -> int:
        return sum(p.size for p in self.params)

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, tuple[list[np.ndarray], list[np.ndarray]]]:
        """(logits, (each layer's input, each hidden layer's pre-activation z)); the
        second part is what backward needs."""
        act = ACTIVATIONS[self.activation][0]
        inputs, zs = [x], []
        for w, b in zip(self.params[0:-2:2], self.params[1:-2:2]):
            zs.append(inputs[-1] @ w + b)
            inputs.append(act(zs[-1]))
        return inputs[-1] @ self.params[-2] + self.params[-1], (inputs, zs)

    def logits(self, x: np.ndarray) -> np.ndarray:
        return self.forward(x)[0]

    def loss_and_grads(self, x: np.ndarray, y: np.ndarray) -> tuple[float, list[np.ndarray]]:
        """Mean softmax cross-entropy over the batch and its gradient for every parameter.

        Backward: d loss / d logits = (softmax - onehot) / B; then per layer, from the
        top, dW = input^T @ delta, db = sum of delta over the batch, and the delta of
        the layer below = (delta @ W^T) * activation'(z below)."""
        d_act = ACTIVATIONS[self.activation][1]
        logits, (inputs, zs) = self.forward(x)
        logp = log_softmax(logits)
        rows = np.arange(len(y))
        loss = float(-logp[rows, y].mean())
        delta = np.exp(logp)
        delta[rows, y] -= 1.0
        delta /= len(y)
        grads: list[np.ndarray] = []
        for i in range(len(self.params) // 2 - 1, -1, -1):
            grads[:0] = [inputs[i].T @ delta, delta.sum(axis=0)]
            if i > 0:  # inputs[i] is the activation of zs[i - 1]
                delta = (delta @ self.params[2 * i].T) * d_act(zs[i - 1], inputs[i])
        return loss, grads

    def sgd_step(self, grads: list[np.ndarray], lr: float, weight_decay: float = 0.0) -> None:
        """p <- p - lr * (g + weight_decay * p), in place."""
        for p, g in zip(self.params, grads):
            if weight_decay:
                g = g + weight_decay * p
            p -= lr * g


def weight_norm(params: list[np.ndarray]) -> float:
    return float(math.sqrt(sum(float(np.vdot(p, p)) for p in params)))


# ---------------------------------------------------------------------------
# Data: the engine's splits, as NumPy views


class ArraySplit:
    """A datasets.Split seen from NumPy: the whole image array flattened to
    [N, C*H*W] (zero-copy), labels, this split's rows; inputs normalized per batch
    as Split.inputs does (per channel; uint8 on the 0..255 scale)."""

    def __init__(self, split: datasets.Split, dtype=np.float32) -> None:
        self.x = split.x.numpy().reshape(len(split.x), -1)
        self.y, self.idx = split.y.numpy(), split.idx.numpy()
        self.dtype = np.dtype(dtype)
        self.shift, self.scale = (self._per_feature(v) for v in split.normalization())

    def _per_feature(self, value) -> np.ndarray | np.floating:
        """Split's shift or scale for flattened rows: one value for all pixels (MNIST's
        arithmetic, unchanged), else each channel's repeated over its H*W pixels."""
        if isinstance(value, float):
            return self.dtype.type(value)
        per_channel = value.flatten().cpu().numpy()
        return np.repeat(per_channel, self.x.shape[1] // len(per_channel)).astype(self.dtype)

    def __len__(self) -> int:
        return len(self.idx)

    def inputs(self, rows: np.ndarray) -> np.ndarray:
        return (self.x[rows].astype(self.dtype) - self.shift) / self.scale


def evaluate(net: NumpyMLP, split: ArraySplit, batch_size: int) -> tuple[float, float, np.ndarray]:
    """(mean cross-entropy, accuracy, KxK confusion counts for K classes: rows true,
    columns predicted)."""
    classes = net.sizes[-1]
    loss_sum, confusion = 0.0, np.zeros((classes, classes), dtype=np.int64)
    for start in range(0, len(split), batch_size):
        rows = split.idx[start : start + batch_size]
        logits, labels = net.logits(split.inputs(rows)), split.y[rows]
        logp = log_softmax(logits)
        loss_sum += float(-logp[np.arange(len(rows)), labels].sum())
        np.add.at(confusion, (labels, logits.argmax(axis=1)), 1)
    return loss_sum / len(split), float(np.trace(confusion)) / len(split), confusion


def epoch_order(generator: torch.Generator, split: ArraySplit) -> np.ndarray:
    """This epoch's rows, drawn as the engine draws them (trainables/engine.py `fit`:
    `train.idx[torch.randperm(len(train), generator=order_rng)]`), so both see the same
    batches for the same seed."""
    return split.idx[torch.randperm(len(split), generator=generator).numpy()]


# ---------------------------------------------------------------------------
# The trial

def run(cfg: NumpyMLPConfig, net: NumpyMLP, splits: dict[str, ArraySplit], report: Report,
        resume: dict | None = None) -> Literal["ok", "diverged"]:
    """Train `net` by minibatch gradient descent; evaluate and report every
    `eval_every` epochs with a state from which `run(..., resume=state)` continues."""
    train = splits["train"]
    order_rng = torch.Generator().manual_seed(cfg.seed)
    first_epoch, elapsed, steps = 1, 0.0, 0
    if resume is not None:
        net.params = [t.numpy().astype(net.dtype) for t in resume["params"]]
        order_rng.set_state(resume["order_rng"])
        first_epoch, elapsed, steps = resume["epoch"] + 1, resume["elapsed_s"], resume["steps"]
    log: dict[str, list] = {"step": [], "loss": [], "grad_norm": []}
    for epoch in range(first_epoch, cfg.epochs + 1):
        started = time.perf_counter()
        perm = epoch_order(order_rng, train)
        loss_sum = grad_norm_sum = 0.0
        n_steps = 0
        for start in range(0, len(perm), cfg.batch_size):
            rows = perm[start : start + cfg.batch_size]
            loss, grads = net.loss_and_grads(train.inputs(rows), train.y[rows])
            grad_norm = weight_norm(grads)
            net.sgd_step(grads, cfg.lr, cfg.weight_decay)
            steps += 1
            n_steps += 1
            loss_sum += loss
            grad_norm_sum += grad_norm
            if cfg.log_every_steps and (steps % cfg.log_every_steps == 0 or steps == 1):
                log["step"].append(steps)
                log["loss"].append(loss)
                log["grad_norm"].append(grad_norm)
            if is_diverged(loss):
                break
        elapsed += time.perf_counter() - started
        running_loss = loss_sum / n_steps
        last = epoch == cfg.epochs
        position = {"epoch": epoch, "step": steps}
        if is_diverged(running_loss):
            report(diverged_row(position, list(splits), running_loss=running_loss, time_s=elapsed,
                                steps=log if log["step"] else None), None)
            return "diverged"
        if epoch % cfg.eval_every and not last:
            continue
        eval_started = time.perf_counter()
        evaluations, confusions = {}, {}
        for name, split in splits.items():
            loss, acc, confusion = evaluate(net, split, cfg.eval_batch_size)
            evaluations[name] = Evaluation(loss, acc, [])
            if last and name in ("train", "test"):
                confusions["confusion" if name == "test" else "train_confusion"] = confusion.tolist()
        elapsed += time.perf_counter() - eval_started
        metrics = metric_row(position, evaluations, status="ok" if last else "running", measures={
            **confusions, "running_loss": running_loss, "weight_norm": weight_norm(net.params),
            "grad_norm": grad_norm_sum / n_steps, "time_s": elapsed})
        if log["step"]:
            metrics["steps"] = log
            log = {"step": [], "loss": [], "grad_norm": []}
        state = {"epoch": epoch, "steps": steps, "elapsed_s": elapsed, "order_rng": order_rng.get_state(),
                 "params": [torch.from_numpy(p.copy()) for p in net.params]}
        report(metrics, state)
    return "ok"


def train(config: dict, data: dict[str, datasets.ImageData]) -> None:
    """One Tune trial: the engine's splits (on CPU, as NumPy views), the network, `run`."""
    # keys of no field (e.g. a variant axis's name) are labels for the results only
    cfg = NumpyMLPConfig(**{k: v for k, v in config.items() if k in NumpyMLPConfig.model_fields})
    _, info = trial_device()  # records the host; NumPy runs on the CPU whatever Ray assigned
    info = {**info, "device": "cpu", "gpu_name": ""}
    ds = data[cfg.dataset]
    splits = classifier.make_splits(ds, cfg, torch.device("cpu"))
    arrays = {name: ArraySplit(split) for name, split in splits.items()}
    net = NumpyMLP([math.prod(ds.input_shape), *cfg.hidden, ds.num_classes], cfg.activation, cfg.seed)
    run(cfg, net, arrays, tune_reporter({**info, "n_params": net.n_params}), resume=restored_state(config))


def workload(configs: list[dict]):
    """Cost model (trainables/cost.py): the NumPy network's own step and evaluation
    batch, timed on random data; FLOPs counted from the layer sizes (2 per
    multiply-add; a training step is about 3 forward passes)."""
    from trainables import cost

    (config,) = configs
    cfg = NumpyMLPConfig(**{k: v for k, v in config.items() if k in NumpyMLPConfig.model_fields})
    info = classifier.dataset_info(cfg.dataset)
    sizes = [math.prod(info.input_shape), *cfg.hidden, info.num_classes]
    forward = 2 * sum(a * b for a, b in zip(sizes, sizes[1:]))  # FLOPs per sample
    rng = np.random.default_rng(0)

    def make_step():
        net = NumpyMLP(sizes, cfg.activation, cfg.seed)
        x = rng.standard_normal((cfg.batch_size, sizes[0]), dtype=np.float32)
        y = rng.integers(0, info.num_classes, cfg.batch_size)
        return lambda: net.sgd_step(net.loss_and_grads(x, y)[1], cfg.lr, cfg.weight_decay)

    def make_eval():
        net = NumpyMLP(sizes, cfg.activation, cfg.seed)
        x = rng.standard_normal((cfg.eval_batch_size, sizes[0]), dtype=np.float32)
        return lambda: net.logits(x)

    n_train, n_eval = classifier.evaluated_sizes(cfg, info)
    epochs = cfg.epochs
    evals = epochs // cfg.eval_every + (0 if epochs % cfg.eval_every == 0 else 1)
    n_params = sum(a * b + b for a, b in zip(sizes, sizes[1:]))
    phase = cost.Phase(key=f"numpy_mlp{sizes}{cfg.activation}|batch={cfg.batch_size}|eval={cfg.eval_batch_size}",
                       steps=-(-n_train // cfg.batch_size) * epochs, eval_samples=evals * n_eval,
                       eval_batch=cfg.eval_batch_size, make_step=make_step, make_eval=make_eval, weights=n_params,
                       optimizer_states=0, activations=cfg.batch_size * sum(sizes[1:]),
                       eval_activations=cfg.eval_batch_size * sum(sizes[1:]),
                       flops=(3.0 * forward * cfg.batch_size, float(forward * cfg.eval_batch_size)))
    # float32 copies of the images (ArraySplit) on top of the uint8 dataset
    return cost.Workload([phase], data_bytes=(info.train_count + info.test_count) * sizes[0] * 5,
                         model_keys=("hidden", "activation"))


register_family(Family(name="numpy_mlp", validate=validate, load_data=classifier.load_data, train=train,
                       workload=workload))
