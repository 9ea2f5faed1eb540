"""The `interpolation` family: train two solutions of one CNN with the engine -- A with
small batches, B with large batches -- then evaluate the straight line between them,

    theta(alpha) = (1 - alpha) * theta_A + alpha * theta_B,   alpha from -1 to 2,

on the training subset and the test set (Goodfellow et al. 2015, "Qualitatively
characterizing neural network optimization problems"; Keskar et al. 2017, figure 3).

    make sweep-interpolation PROFILE=quick
    .venv/bin/python -m sweeps run sweeps/interpolation.yaml --profile quick

Config keys: the classifier family's (data, `model` and its arguments, `optimizer`,
`epochs`, `weight_decay`, `seed`, ...), except `lr`, `batch_size` and `max_steps`:
each solution has its own `lr_a`/`batch_size_a` and `lr_b`/`batch_size_b`; both train
for the same `epochs`. Plus `alphas` (a list, or `{start, stop, num}` as in
numpy.linspace) and `same_init`.

Same initialization (`same_init: true`, the default): A and B start from the same
theta_0 and draw the same data order, so what separates them is the batch size and
learning rate alone. Networks trained from independent initializations are
permuted copies of each other (hidden units can be relabelled), and the line between
such networks crosses a loss barrier whatever the training settings (Frankle et al.
2020; Entezari et al. 2022); that barrier would hide the effect under study.
`same_init: false` gives B its own initialization, to see that barrier.

BatchNorm: the default model, `cnn_small`, has none, so theta(alpha) is the whole
network. For a model with BatchNorm (e.g. `cnn_overparam`) the interpolated running
statistics are not the statistics of the interpolated network, so they are
recomputed at every alpha (endpoints included) from the training subset; alpha = 0
and 1 then differ slightly from A's and B's own final evaluations.

History rows (the output contract, plus columns): every evaluated epoch of A
(`phase` = "A") and then of B (`phase` = "B"), each with that solution's `lr` and
`batch_size`; then one row per alpha (`phase` = "interpolation", `alpha`, train/test
loss and accuracy, gaps, `weight_norm`; `epoch` = the training epochs). The last
row also carries `barrier_train_loss`, `barrier_test_loss` (see `loss_barrier`) and
`distance_ab` (||theta_B - theta_A||_2).
"""

from __future__ import annotations

import math
import time
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt
from torch import nn

from trainables import classifier
from trainables.classifier import ClassifierConfig, make_splits, parse_config
from trainables.data import DatasetInfo, Split
from trainables.contract import Report, metric_row
from trainables.engine import EngineConfig, evaluate_split, fit, weight_norm
from trainables.errors import ConfigError
from trainables.families import Family, register_family, validate_model
from trainables.models import count_params
from trainables.trial import restored_state, trial_device, tune_reporter

# Keys the two solutions do not share; the message says what to set instead.
PER_SOLUTION = {
    "lr": "lr_a and lr_b",
    "batch_size": "batch_size_a and batch_size_b",
    "max_steps": "epochs (A and B train for the same number of epochs)",
}


class AlphaRange(BaseModel):
    """`alphas: {start, stop, num}`: num evenly spaced points, both ends included."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # -1..2 shows the basin around both solutions and beyond them; 31 points are
    # steps of 0.1, so 0 (A) and 1 (B) are grid points.
    start: float = -1.0
    stop: float = 2.0
    num: int = Field(default=31, ge=2)


def alpha_grid(value: Any) -> list[float]:
    """The alphas a spec asks for (a list, or a mapping for AlphaRange), as floats.
    Rounded to 10 decimals so that linspace's 0.30000000000000004 reads 0.3 and
    0 and 1 are exact. Raises ConfigError naming `alphas...`."""
    if isinstance(value, dict):
        try:
            grid = validate_model(AlphaRange, value)
        except ConfigError as exc:
            raise ConfigError(f"alphas.{exc.key}", exc.message) from None
        if grid.stop <= grid.start:
            raise ConfigError("alphas.stop", f"{grid.stop} must be above start ({grid.start})")
        values = np.linspace(grid.start, grid.stop, grid.num).tolist()
    elif isinstance(value, list):
        if not value:
            raise ConfigError("alphas", "empty list; give at least one alpha")
        for i, a in enumerate(value):
            if isinstance(a, bool) or not isinstance(a, (int, float)) or not math.isfinite(a):
                raise ConfigError(f"alphas[{i}]", f"expected a finite number, got {a!r}")
        values = value
    else:
        raise ConfigError("alphas", f"a list of numbers or {{start, stop, num}}, got {value!r}")
    alphas = [round(float(a), 10) + 0.0 for a in values]  # + 0.0 turns -0.0 into 0.0
    seen: set[float] = set()
    for i, a in enumerate(alphas):
        if a in seen:
            raise ConfigError(f"alphas[{i}]", f"{a:g} appears twice")
        seen.add(a)
    return alphas


class InterpolationConfig(ClassifierConfig):
    """The classifier's keys with this study's defaults, plus the two solutions'
    settings. `lr`, `batch_size` and `max_steps` are inherited but refused by
    `validate` (see PER_SOLUTION)."""

    model: str = "cnn_small"  # no BatchNorm: theta(alpha) is the whole network
    optimizer: Literal["sgd", "adam"] = "adam"
    epochs: PositiveInt = 6  # for A and for B alike
    # A: small batches, small steps (about 94 steps per epoch on 6k images).
    batch_size_a: PositiveInt = 64
    lr_a: PositiveFloat = 1e-3
    # B: 16x the batch, 10x the step size (Keskar et al.'s "large batch" regime;
    # with the same epochs B takes 16x fewer steps).
    batch_size_b: PositiveInt = 1024
    lr_b: PositiveFloat = 1e-2
    alphas: list[float] = Field(default_factory=lambda: alpha_grid({}))
    same_init: bool = True  # B starts from A's initialization (see the module docstring)


def validate(config: dict) -> dict:
    """One trial's config with defaults filled in; raises ConfigError naming the key.
    Data, model arguments and probes are checked by the classifier family's
    `validate`, once per solution (its batch size must fit the training subset)."""
    for key, instead in PER_SOLUTION.items():
        if key in config:
            raise ConfigError(key, f"the interpolation family trains two solutions; set {instead} instead")
    own_keys = [k for k in InterpolationConfig.model_fields if k not in PER_SOLUTION]
    model, arg_schema = classifier.check_keys("interpolation", InterpolationConfig, own_keys, config)
    own = {k: v for k, v in config.items() if k in own_keys}
    own["alphas"] = alpha_grid(config.get("alphas", {}))
    resolved = validate_model(InterpolationConfig, {**own, "model": model})
    shared = resolved.model_dump(include=set(ClassifierConfig.model_fields) - set(PER_SOLUTION))
    args = {k: v for k, v in config.items() if k in arg_schema.model_fields}
    for solution in ("a", "b"):
        try:
            checked = classifier.validate({**shared, **args, "lr": getattr(resolved, f"lr_{solution}"),
                                           "batch_size": getattr(resolved, f"batch_size_{solution}")})
        except ConfigError as exc:
            key = f"{exc.key}_{solution}" if exc.key in PER_SOLUTION else exc.key
            raise ConfigError(key, exc.message) from None
    model_args = {k: v for k, v in checked.items() if k in arg_schema.model_fields}
    return {**resolved.model_dump(exclude=set(PER_SOLUTION)), **model_args}


# ---------------------------------------------------------------------------
# Weights along the line


def interpolate(theta_a: dict[str, torch.Tensor], theta_b: dict[str, torch.Tensor], alpha: float) -> dict:
    """(1 - alpha) * theta_A + alpha * theta_B for every floating-point tensor of a
    state dict; integer buffers (BatchNorm's batch counter) are A's. Written as the
    formula, not torch.lerp, so alpha = 0 and 1 give A and B bit for bit."""
    return {k: ((1.0 - alpha) * a + alpha * theta_b[k]) if a.is_floating_point() else a.clone()
            for k, a in theta_a.items()}


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@torch.no_grad()
def recompute_batchnorm(model: nn.Module, split: Split, batch_size: int) -> None:
    """Replace every BatchNorm layer's running mean and variance by the average over
    the split's batches (in order) of the batch statistics of this very network.
    Only the BatchNorm layers are put in training mode (dropout stays off)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    was_training = model.training
    model.eval()
    momenta = []
    for bn in norms:
        momenta.append(bn.momentum)
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the batches seen
        bn.train()
    for start in range(0, len(split), batch_size):
        model(split.inputs(split.idx[start : start + batch_size]))
    for bn, momentum in zip(norms, momenta):
        bn.momentum = momentum
    model.train(was_training)


def loss_barrier(alphas: list[float], losses: list[float]) -> float:
    """max over the alphas in [0, 1] of L(alpha) - [(1 - alpha) L(0) + alpha L(1)]:
    how far the loss along the line rises above the straight line between the two
    endpoints' losses (0 when it never does; Frankle et al. 2020). NaN when 0 or 1
    is not an evaluated alpha."""
    curve = dict(zip(alphas, losses))
    if 0.0 not in curve or 1.0 not in curve:
        return float("nan")
    l0, l1 = curve[0.0], curve[1.0]
    return max(loss - ((1.0 - a) * l0 + a * l1) for a, loss in curve.items() if 0.0 <= a <= 1.0)


def param_distance(theta_a: dict[str, torch.Tensor], theta_b: dict[str, torch.Tensor], names: list[str]) -> float:
    """||theta_B - theta_A||_2 over the named parameters (buffers excluded)."""
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(theta_b[k] - theta_a[k]) for k in names])))


# ---------------------------------------------------------------------------
# The trial

# Seed offset for B's initialization when same_init is false, far from the seeds
# a spec lists, so B's init is not another trial's A init.
_B_INIT_SEED_OFFSET = 1_000_003


def new_model(cfg: InterpolationConfig, model_args: dict, solution: str, device: torch.device,
              shape: DatasetInfo | None = None) -> nn.Module:
    """A freshly initialized model for solution "A" or "B" (deterministic in the seed),
    built for `shape` (the trial's dataset; default: the registered dataset's info)."""
    offset = _B_INIT_SEED_OFFSET if solution == "B" and not cfg.same_init else 0
    torch.manual_seed(cfg.seed + offset)
    return classifier.build_for(shape or classifier.dataset_info(cfg.dataset), cfg, model_args).to(device)


def _engine_config(cfg: InterpolationConfig, solution: str) -> EngineConfig:
    values = {k: getattr(cfg, k) for k in EngineConfig.model_fields}
    suffix = solution.lower()
    values.update(lr=getattr(cfg, f"lr_{suffix}"), batch_size=getattr(cfg, f"batch_size_{suffix}"), max_steps=None)
    return EngineConfig(**values)


# The endpoints' last evaluations, repeated on the study's last row as a_* / b_*, so
# trials.parquet and the report's table summarize A and B, not the alpha = 2 point.
_ENDPOINT_METRICS = ("train_loss", "train_acc", "test_loss", "test_acc")


def _train_solution(solution: str, cfg: InterpolationConfig, model_args: dict, splits: dict[str, Split],
                    report: Report, done: dict, engine_state: dict | None,
                    shape: DatasetInfo | None) -> tuple[str, dict]:
    """Train A or B with the engine; its epochs are reported with `phase` = solution.
    Returns (status, {"weights": final state dict, "time_s": training seconds,
    "final": its last evaluation's losses and accuracies})."""
    train = splits["train"]
    evals = {name: split for name, split in splits.items() if name != "train"}
    engine_cfg = _engine_config(cfg, solution)
    model = new_model(cfg, model_args, solution, train.x.device, shape)
    offset = sum(d["time_s"] for d in done.values())  # earlier phases' seconds
    seconds = {"time_s": engine_state["elapsed_s"] if engine_state else 0.0}
    final: dict = {}

    def on_epoch(metrics: dict, state: dict | None) -> None:
        row = {**metrics, "phase": solution, "lr": engine_cfg.lr, "batch_size": engine_cfg.batch_size,
               "time_s": offset + metrics["time_s"]}
        if row["status"] == "ok":
            row["status"] = "running"  # the trial goes on after this solution
        final.update({k: metrics[k] for k in _ENDPOINT_METRICS if k in metrics})
        if state is not None:
            seconds["time_s"] = state["elapsed_s"]
            state = {"phase": solution, "engine": state, "done": done}
        report(row, state)

    status = fit(model, train, evals, engine_cfg, on_epoch, resume=engine_state)
    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return status, {"weights": weights, "time_s": seconds["time_s"], "final": final}


def evaluate_alpha(model: nn.Module, theta_a: dict, theta_b: dict, alpha: float, splits: dict[str, Split],
                   cfg: InterpolationConfig) -> dict:
    """Load theta(alpha) into `model` and evaluate it on every split (loss, accuracy,
    gaps, weight norm)."""
    model.load_state_dict(interpolate(theta_a, theta_b, alpha))
    recompute_batchnorm(model, splits["train"], cfg.eval_batch_size)
    evaluations = {name: evaluate_split(model, split, cfg.eval_batch_size) for name, split in splits.items()}
    return metric_row({"epoch": cfg.epochs, "phase": "interpolation", "alpha": alpha}, evaluations,
                      per_class=cfg.per_class, measures={"weight_norm": weight_norm(model)}, status=None)


def run(cfg: InterpolationConfig, model_args: dict, splits: dict[str, Split], report: Report,
        resume: dict | None = None, shape: DatasetInfo | None = None) -> Literal["ok", "diverged"]:
    """Train A, train B, evaluate every alpha; report each row with a checkpoint
    state from which `run(..., resume=state)` continues where it stood (a restarted
    trial re-reports only what came after its checkpoint, with the same numbers).
    `shape`: the dataset's (a trial passes its ImageData's, so no file is read on its node)."""
    resume = resume or {"phase": "A"}
    done = dict(resume.get("done", {}))
    for solution in ("A", "B"):
        if solution in done:
            continue
        engine_state = resume.get("engine") if resume["phase"] == solution else None
        status, done[solution] = _train_solution(solution, cfg, model_args, splits, report, dict(done), engine_state,
                                                 shape)
        if status != "ok":
            return status  # a diverged endpoint: its last row says so; nothing to interpolate

    theta_a, theta_b = done["A"]["weights"], done["B"]["weights"]
    device = splits["train"].x.device
    model = new_model(cfg, model_args, "A", device, shape)  # a holder for theta(alpha)
    names = [name for name, _ in model.named_parameters()]
    in_line = resume["phase"] == "interpolation"
    curve = list(resume["curve"]) if in_line else []  # (alpha, train_loss, test_loss) so far
    elapsed = resume["interp_time_s"] if in_line else 0.0
    trained_s = done["A"]["time_s"] + done["B"]["time_s"]
    for i in range(len(curve), len(cfg.alphas)):
        started = time.perf_counter()
        row = evaluate_alpha(model, theta_a, theta_b, cfg.alphas[i], splits, cfg)
        elapsed += time.perf_counter() - started
        curve.append((row["alpha"], row["train_loss"], row["test_loss"]))
        row["time_s"] = trained_s + elapsed
        last = i == len(cfg.alphas) - 1
        if last:
            alphas, train_losses, test_losses = (list(c) for c in zip(*curve))
            row.update(barrier_train_loss=loss_barrier(alphas, train_losses),
                       barrier_test_loss=loss_barrier(alphas, test_losses),
                       distance_ab=param_distance(theta_a, theta_b, names))
            for solution in ("A", "B"):
                endpoint = done[solution].get("final") or {}
                row.update({f"{solution.lower()}_{k}": endpoint.get(k, float("nan")) for k in _ENDPOINT_METRICS})
        row["status"] = "ok" if last else "running"
        report(row, {"phase": "interpolation", "done": done, "curve": list(curve), "interp_time_s": elapsed})
    return "ok"


def _parse(config: dict) -> tuple[InterpolationConfig, dict]:
    return parse_config(InterpolationConfig, config)


def train(config: dict, data: dict) -> None:
    """One Tune trial: splits on the trial's device, then `run` reporting to Tune."""
    cfg, model_args = _parse(config)
    device, info = trial_device()
    shape = data[cfg.dataset].info()
    splits = make_splits(data[cfg.dataset], cfg, device)
    n_params = count_params(classifier.build_for(shape, cfg, model_args))
    run(cfg, model_args, splits, tune_reporter({**info, "n_params": n_params}), resume=restored_state(config),
        shape=shape)


register_family(Family(name="interpolation", validate=validate, load_data=classifier.load_data, train=train,
                       summary_metrics=("a_test_acc", "b_test_acc", "barrier_train_loss", "barrier_test_loss",
                                        "distance_ab"),
                       count_params=classifier.model_params))
