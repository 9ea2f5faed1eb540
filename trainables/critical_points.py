"""The `critical_points` family: where does training stop, a minimum or a saddle?

A tiny MLP (a few hundred parameters) fits the function-fitting task
(trainables/function_fit.py). Each trial then
1. trains it normally with the engine (MSE, Adam, full batches: phase `train`);
2. switches the objective to the squared gradient norm ||grad L||^2 of the
   full-batch training loss and minimizes that, again with the engine
   (`objective="grad_norm_sq"`, one batch = the whole training set), until
   ||grad L|| < `gn_tolerance` or `gn_max_steps` steps (phase `min_grad_norm`);
3. at that point computes the exact Hessian of the training loss with respect to
   all parameters (torch.func.hessian of the loss as a function of the flat
   parameter vector, in float64), its eigenvalues, and the minimal ratio = the
   fraction of positive eigenvalues (1 at a strict local minimum; below 1 at a
   saddle or where the loss is flat). "Positive" means above rounding level
   (P * eps * max|lambda|, `zero_tolerance`): below it the sign is noise.

Phase 2 finds a critical point of L only where ||grad L||^2 can be driven to 0; it
can also stall where H grad L = 0 with grad L != 0 (the gradient along directions in
which L is flat). Such runs end with converged = False and are marked in the figure.

    make sweep-minimal-ratio PROFILE=quick
    .venv/bin/python -m sweeps run sweeps/minimal_ratio.yaml --profile quick

Config keys: function_fit's (data, `target`, `hidden` or `shape` + `params`,
`activation`, the engine keys of phase 1) plus `gn_optimizer`, `gn_lr` (with the
engine's `momentum`), `gn_max_steps` and `gn_tolerance` for phase 2.

History rows: phase 1's, then phase 2's (`phase` column; `step` and `epoch` count on
from phase 1). The last row carries `converged` (phase 2 met the tolerance),
`gn_steps` (phase-2 steps taken), `grad_norm_exact` (float64 full-batch gradient norm
at the final weights), `critical_loss` (float64 training MSE there), `minimal_ratio`,
`minimal_ratio_raw` (the sign count without the rounding tolerance),
`minimal_ratio_curved` (positive / (positive + negative): the flat directions left
out), `n_positive`, `n_negative`, `n_zero`, `eig_min`, `eig_max` and `eigenvalues`
(all of them, as a list). Figure kind `minimal_ratio` (analysis/studies/critical_points.py) plots the
minimal ratio against the loss, one point per trial.
"""

from __future__ import annotations

import copy
import math
import warnings
from typing import Callable, ClassVar, Literal

import torch
from pydantic import PositiveFloat, PositiveInt
from torch import nn
from torch.func import functional_call, hessian

from trainables import function_fit as ff
from trainables.contract import Report
from trainables.engine import EngineConfig, fit
from trainables.families import Family, register_family
from trainables.models import count_params


class CriticalPointsConfig(ff.FunctionFitConfig):
    """function_fit's keys with this study's defaults, plus phase 2's."""

    # 12-12: 193 parameters, a 193 x 193 Hessian (milliseconds to diagonalize).
    DEFAULT_HIDDEN: ClassVar[list[int]] = [12, 12]
    # Smooth: the Hessian exists everywhere, and no dead ReLU units whose exactly
    # flat directions would make up most of the spectrum.
    activation: Literal["relu", "tanh"] = "tanh"
    # Phase 1 in full batches (None: the whole training set): it ends nearer a
    # critical point of the full-batch loss than minibatch noise allows.
    batch_size: PositiveInt | None = None
    lr: PositiveFloat = 3e-3
    max_steps: PositiveInt | None = 3000  # phase 1: a fair fit, not the last digit
    eval_every: PositiveInt = 300  # epochs = steps in full batches: 10 reports in phase 1
    # Phase 2: gradient descent on ||grad L||^2, full batch. Its gradient is 2 H grad L
    # and its curvature 2 H^2 (about 2 * 20^2 here), so heavy-ball SGD with lr 1e-3 is
    # stable. Measured on 6 seeds: the gradient norm falls to a floor within a few
    # hundred steps and stays there. Adam (lr 3e-4) reached the same floors, but its
    # first, sign-sized steps kicked every run out of its minimum (gradient norm
    # up to 2e-2) and it spiked now and then.
    gn_optimizer: Literal["sgd", "adam"] = "sgd"
    gn_lr: PositiveFloat = 1e-3
    gn_max_steps: PositiveInt = 2000
    # Stop when ||grad L||_2 (full batch) falls below this. Phase 1 leaves it at about
    # 3e-5..2e-3 (training MSE 1e-5..1e-3); phase 2's floors were 2e-5..4e-4 on 6
    # seeds, so about a third of the runs get below 1e-4 and the rest are marked.
    gn_tolerance: PositiveFloat = 1e-4


def validate(config: dict) -> dict:
    return ff.validate_config(CriticalPointsConfig, config, "critical_points")


def batch_size(cfg: CriticalPointsConfig) -> int:
    return cfg.batch_size or cfg.train_size


# ---------------------------------------------------------------------------
# Hessian and minimal ratio


def flat_params(model: nn.Module) -> torch.Tensor:
    """All parameters as one detached vector, in `named_parameters` order."""
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def loss_of_flat(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """theta -> mean squared error of `model` with the flat parameter vector theta
    on (x, y); the model's own weights are left alone (torch.func.functional_call)."""
    names = [name for name, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    sizes = [math.prod(s) for s in shapes]

    def loss(theta: torch.Tensor) -> torch.Tensor:
        pieces = torch.split(theta, sizes)
        params = {n: piece.reshape(s) for n, piece, s in zip(names, pieces, shapes)}
        return torch.mean((functional_call(model, params, (x,)) - y) ** 2)

    return loss


def hessian_of(fn: Callable[[torch.Tensor], torch.Tensor], theta: torch.Tensor) -> torch.Tensor:
    """The exact Hessian [P, P] of a scalar function of a vector, symmetrized
    (forward-over-reverse differentiation is symmetric only up to rounding)."""
    with warnings.catch_warnings():
        # torch's forward-mode AD scripts its decompositions on first use and warns
        # that torch.jit.script is deprecated: torch's own business, not the caller's.
        warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)
        h = hessian(fn)(theta)
    return (h + h.T) / 2


def zero_tolerance(eigenvalues: torch.Tensor) -> float:
    """Eigenvalues within this of 0 are 0 up to rounding: a symmetric eigensolver's
    error is about P * eps * max|lambda|. A sign below that is noise (at a ReLU net's
    dead unit, or along a symmetry of the network, most of the spectrum sits there)."""
    return len(eigenvalues) * torch.finfo(eigenvalues.dtype).eps * float(eigenvalues.abs().max())


def minimal_ratio(eigenvalues: torch.Tensor, tolerance: float = 0.0) -> float:
    """Fraction of eigenvalues above `tolerance` (positive): 1 at a strict local minimum."""
    return float((eigenvalues > tolerance).double().mean())


def analyse(model: nn.Module, split: ff.TensorSplit) -> dict:
    """Gradient norm, loss, Hessian spectrum and minimal ratio of the training MSE at
    the model's current weights, in float64 on a CPU copy."""
    model64 = copy.deepcopy(model).to("cpu", torch.float64)
    x = split.inputs(split.idx).to("cpu", torch.float64)
    y = split.labels(split.idx).to("cpu", torch.float64)
    loss = loss_of_flat(model64, x, y)
    theta = flat_params(model64)
    grad = torch.func.grad(loss)(theta)
    eigenvalues = torch.linalg.eigvalsh(hessian_of(loss, theta))
    tol = zero_tolerance(eigenvalues)
    n_positive, n_negative = int((eigenvalues > tol).sum()), int((eigenvalues < -tol).sum())
    return {
        "critical_loss": float(loss(theta)),
        "grad_norm_exact": float(torch.linalg.vector_norm(grad)),
        # positive = above rounding level; the raw sign count is kept for comparison
        "minimal_ratio": minimal_ratio(eigenvalues, tol),
        "minimal_ratio_raw": minimal_ratio(eigenvalues),
        # among the curved directions only: how much of the curvature is a minimum's
        "minimal_ratio_curved": n_positive / max(1, n_positive + n_negative),
        "n_positive": n_positive,
        "n_negative": n_negative,
        "n_zero": len(eigenvalues) - n_positive - n_negative,
        "eig_min": float(eigenvalues[0]),
        "eig_max": float(eigenvalues[-1]),
        "eigenvalues": eigenvalues.tolist(),
    }


# ---------------------------------------------------------------------------
# The trial


def _phase_configs(cfg: CriticalPointsConfig) -> tuple[EngineConfig, EngineConfig]:
    train = ff.engine_config(cfg.model_copy(update={"batch_size": batch_size(cfg)}))
    # Phase 2: full batch (the exact gradient), one step per "epoch"; about 10
    # reports whatever gn_max_steps is.
    grad_norm = train.model_copy(update=dict(
        objective="grad_norm_sq", stop_grad_norm=cfg.gn_tolerance, optimizer=cfg.gn_optimizer, lr=cfg.gn_lr,
        max_steps=cfg.gn_max_steps, batch_size=cfg.train_size, eval_every=max(1, cfg.gn_max_steps // 10),
        weight_decay=0.0))  # the plain MSE's gradient: the loss the Hessian is taken of
    return train, grad_norm


def run(cfg: CriticalPointsConfig, model: nn.Module, splits: dict[str, ff.TensorSplit], report: Report,
        resume: dict | None = None) -> Literal["ok", "diverged"]:
    """Phase 1 and phase 2 with the engine, then the Hessian analysis on the last
    report. Checkpoint states say the phase, so a restarted trial continues there."""
    train_cfg, gn_cfg = _phase_configs(cfg)
    evals = {"test": splits["test"]}
    resume = resume or {"phase": "train"}
    offset = dict(resume.get("offset", {"step": 0, "epoch": 0, "time_s": 0.0}))

    def reporter(phase: str) -> Report:
        def on_epoch(metrics: dict, state: dict | None) -> None:
            row = {**metrics, "phase": phase, "step": metrics["step"] + offset["step"],
                   "epoch": metrics["epoch"] + offset["epoch"], "time_s": metrics["time_s"] + offset["time_s"]}
            if "steps" in row:
                records = row["steps"]
                row["steps"] = {**records, "step": [s + offset["step"] for s in records["step"]],
                                "phase": [phase] * len(records["step"])}
            if phase == "train" and row["status"] == "ok":
                row["status"] = "running"  # phase 2 follows
                offset.update(step=row["step"], epoch=row["epoch"], time_s=row["time_s"])
            if phase == "min_grad_norm" and row["status"] == "ok":
                row.update(gn_steps=metrics["step"], **analyse(model, splits["train"]))
            if state is not None:
                state = {"phase": phase, "engine": state, "offset": dict(offset)}
            report(row, state)

        return on_epoch

    if resume["phase"] == "train":
        status = fit(model, splits["train"], evals, train_cfg, reporter("train"), resume=resume.get("engine"))
        if status != "ok":
            return status
        engine_state = None
    else:
        engine_state = resume["engine"]
    return fit(model, splits["train"], evals, gn_cfg, reporter("min_grad_norm"), resume=engine_state)


def train(config: dict, data: None) -> None:
    """One Tune trial: the points on the trial's device, the tiny MLP, both phases."""
    from trainables.trial import restored_state, trial_device, tune_reporter  # Ray: trials only

    cfg = ff.parse(CriticalPointsConfig, config)
    device, info = trial_device()
    splits = ff.make_splits(cfg, device)
    model = ff.new_model(cfg, device)
    run(cfg, model, splits, tune_reporter({**info, "n_params": count_params(model)}), resume=restored_state(config))


register_family(Family(name="critical_points", validate=validate, load_data=ff.load_data, train=train,
                       default_metric="test_loss",
                       summary_metrics=("train_loss", "grad_norm_exact", "minimal_ratio", "converged", "gn_steps")))
