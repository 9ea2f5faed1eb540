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
engine's `momentum`), `gn_max_steps` and `gn_tolerance` for phase 2, and
`perturb_samples`, `perturb_radius` for the perturbation estimate. A spec's `pack:`
trains K seeds in one trial (trainables/packed.py): each stops phase 2 at its own step.

History rows: phase 1's, then phase 2's (`phase` column; `step` and `epoch` count on
from phase 1). The last row carries `converged` (phase 2 met the tolerance),
`gn_steps` (phase-2 steps taken), `grad_norm_exact` (float64 full-batch gradient norm
at the final weights), `critical_loss` (float64 training MSE there), `minimal_ratio`,
`minimal_ratio_raw` (the sign count without the rounding tolerance),
`minimal_ratio_perturb` (the fraction of `perturb_samples` random perturbations of
norm `perturb_radius` that raise the loss: seed 003's estimate),
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
from pydantic import NonNegativeInt, PositiveFloat, PositiveInt
from torch import nn
from torch.func import functional_call, hessian

from trainables import function_fit as ff
from trainables.contract import Report, member_rows
from trainables.engine import EngineConfig, ModelSet, SingleModel, fit
from trainables.families import Family, register_family
from trainables.models import count_params
from trainables.packed import PackedModels


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
    # The second measure, by perturbation (seed 003's): the fraction of
    # `perturb_samples` random perturbations of the final weights, each of L2 norm
    # `perturb_radius` (parameter units; a uniformly random direction), that raise the
    # training MSE. 0 samples: not measured.
    # 256 samples: a standard error of at most 0.03 on the fraction, for 0.1 s per run.
    perturb_samples: NonNegativeInt = 256
    perturb_radius: PositiveFloat = 1e-3


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


def analyse(model: nn.Module, split: ff.TensorSplit, samples: int = 0, radius: float = 1e-3, seed: int = 0) -> dict:
    """One model's `analyse_many`."""
    return analyse_many([model], split, [seed], samples, radius)[0]


def analyse_many(models: list[nn.Module], split: ff.TensorSplit, seeds: list[int], samples: int = 0,
                 radius: float = 1e-3) -> list[dict]:
    """Gradient norm, loss, Hessian spectrum and minimal ratio of the training MSE at
    each model's current weights (models of one architecture: vmapped over them), in
    float64 on CPU copies. With `samples` > 0 also `minimal_ratio_perturb`: the
    fraction of `samples` random perturbations of L2 norm `radius` (uniform
    directions, drawn from each model's seed) that raise the loss."""
    models64 = [copy.deepcopy(m).to("cpu", torch.float64) for m in models]
    x = split.inputs(split.idx).to("cpu", torch.float64)
    y = split.labels(split.idx).to("cpu", torch.float64)
    loss = loss_of_flat(models64[0], x, y)  # functional: the weights come from theta
    thetas = torch.stack([flat_params(m) for m in models64])  # [K, P]
    grads = torch.vmap(torch.func.grad(loss))(thetas)
    losses = torch.vmap(loss)(thetas)
    # One Hessian at a time: vmap over models was slower per model (0.58 s against
    # 0.27 s for 50 of the 193-parameter nets, 1 thread): it is compute, not overhead.
    spectra = torch.linalg.eigvalsh(torch.stack([hessian_of(loss, theta) for theta in thetas]))  # [K, P], ascending
    out = []
    for k, eigenvalues in enumerate(spectra):
        tol = zero_tolerance(eigenvalues)
        n_positive, n_negative = int((eigenvalues > tol).sum()), int((eigenvalues < -tol).sum())
        row = {
            "critical_loss": float(losses[k]),
            "grad_norm_exact": float(torch.linalg.vector_norm(grads[k])),
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
        if samples:
            row["minimal_ratio_perturb"] = perturbation_ratio(loss, thetas[k], samples, radius, seeds[k])
        out.append(row)
    return out


def perturbation_ratio(loss: Callable[[torch.Tensor], torch.Tensor], theta: torch.Tensor, samples: int,
                       radius: float, seed: int) -> float:
    """Fraction of `samples` perturbations d (|d| = radius, uniform direction) with
    loss(theta + d) > loss(theta): the minimal ratio as estimated by probing the loss
    around the weights instead of counting Hessian eigenvalues. Near a critical point
    L(theta + d) - L(theta) ~ d'Hd / 2, dominated by the stiff positive directions,
    so it reads near 1 where the sign count reads well below."""
    generator = torch.Generator().manual_seed(seed)
    directions = torch.randn(samples, len(theta), generator=generator, dtype=theta.dtype)
    directions *= radius / torch.linalg.vector_norm(directions, dim=1, keepdim=True)
    with torch.no_grad():
        raised = torch.vmap(loss)(theta + directions) > loss(theta)
    return float(raised.double().mean())


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


def run(cfg: CriticalPointsConfig | list[CriticalPointsConfig], models: nn.Module | ModelSet,
        splits: dict[str, ff.TensorSplit], report: Report, resume: dict | None = None,
        names: list[str] | None = None) -> str | dict[str, str]:
    """Phase 1 and phase 2 with the engine, then the Hessian analysis on each model's
    last report. One model (`cfg` its config, `names` None), or a pack (a config
    and a name per model: the engine steps them together, and phase 2 trains the
    models that phase 1 did not see diverge). Checkpoint states say the phase (and
    a pack's members in it), so a restarted trial continues there."""
    cfgs = [cfg] if isinstance(cfg, CriticalPointsConfig) else list(cfg)
    models = models if isinstance(models, ModelSet) else SingleModel(models)
    phases = [_phase_configs(c) for c in cfgs]
    evals = {"test": splits["test"]}
    resume = resume or {"phase": "train"}
    # Phase 1 has no stopping rule: every model that did not diverge ends it at the
    # same step, so one offset serves a pack.
    offset = dict(resume.get("offset", {"step": 0, "epoch": 0, "time_s": 0.0}))

    def reporter(phase: str, model_set: ModelSet, member_names: list[str] | None) -> Report:
        index = {None: 0} if member_names is None else {n: i for i, n in enumerate(member_names)}

        def on_epoch(metrics: dict, state: dict | None) -> None:
            shift = dict(offset)  # this report's: phase 1's end, once phase 2 runs
            rows = member_rows(metrics)
            for name, row in rows.items():
                row = {**row, "phase": phase, "step": row["step"] + shift["step"],
                       "epoch": row["epoch"] + shift["epoch"], "time_s": row["time_s"] + shift["time_s"]}
                if "steps" in row:
                    records = row["steps"]
                    row["steps"] = {**records, "step": [s + shift["step"] for s in records["step"]],
                                    "phase": [phase] * len(records["step"])}
                if phase == "train" and row["status"] == "ok":
                    row["status"] = "running"  # phase 2 follows
                rows[name] = row
            if phase == "train":
                ended = [r for r in rows.values() if r["status"] == "running" and metrics["status"] == "ok"]
                if ended:
                    offset.update(step=ended[0]["step"], epoch=ended[0]["epoch"], time_s=ended[0]["time_s"])
            else:
                ending = [name for name, row in rows.items() if row["status"] == "ok"]
                if ending:
                    c = cfgs[0]
                    found = analyse_many([model_set.module(index[n]) for n in ending], splits["train"],
                                         [cfgs[index[n]].seed for n in ending], c.perturb_samples, c.perturb_radius)
                    for name, analysis in zip(ending, found):
                        rows[name] = {**rows[name], "gn_steps": rows[name]["step"] - shift["step"], **analysis}
            if None not in rows:  # a pack's own position counts on from phase 1 too
                metrics = {**metrics, "step": metrics["step"] + shift["step"], "epoch": metrics["epoch"] + shift["epoch"],
                           "time_s": metrics["time_s"] + shift["time_s"]}
                if phase == "train" and metrics["status"] == "ok":
                    metrics["status"] = "running"
            if state is not None:
                state = {"phase": phase, "engine": state, "offset": dict(offset), "members": member_names}
            report(metrics if None not in rows else rows[None], state)

        return on_epoch

    if resume["phase"] == "train":
        status = fit(models, splits["train"], evals, [p[0] for p in phases], reporter("train", models, names),
                     resume=resume.get("engine"), names=names)
        statuses = {None: status} if names is None else status
        alive = [n for n, s in statuses.items() if s == "ok"]
        if not alive:
            return status
        keep = [names.index(n) for n in alive] if names is not None else [0]
        members = names if names is None else alive
        if names is not None and len(alive) < len(names):
            models = PackedModels([models.module(i) for i in keep])
        engine_state = None
    else:
        members = resume.get("members", names)
        keep = [0] if members is None else [names.index(n) for n in members]
        if members is not None and len(members) < len(names):
            models = PackedModels([models.module(i) for i in keep])  # weights: from the state
        engine_state = resume["engine"]
        statuses = {}
    phase2 = fit(models, splits["train"], evals, [phases[i][1] for i in keep],
                 reporter("min_grad_norm", models, members), resume=engine_state, names=members)
    if names is None:
        return phase2
    return {**{n: s for n, s in statuses.items() if s != "ok"}, **phase2}


def train_packed(configs: list[dict], ids: list[str] | None, data: None = None) -> None:
    """One Tune trial: the points on the trial's device, the tiny MLP (one per config
    for a spec's `pack:`), both phases."""
    from trainables.trial import restored_state, trial_device, tune_reporter  # Ray: trials only

    cfgs = [ff.parse(CriticalPointsConfig, c) for c in configs]
    device, info = trial_device()
    splits = ff.make_splits(cfgs[0], device)
    models = ff.new_models(cfgs, device)
    extra = {"n_params": count_params(models.module(0))} | ({"pack_size": models.k} if ids else {})
    run(cfgs, models, splits, tune_reporter({**info, **extra}), resume=restored_state(configs[0]), names=ids)


def train(config: dict, data: None) -> None:
    train_packed([config], None)


def workload(configs: list[dict]):
    """Cost model (trainables/cost.py): phase 1, phase 2 for all of gn_max_steps (an
    upper bound: a run below the tolerance stops early), and the analysis."""
    from trainables import cost

    cfgs = [ff.parse(CriticalPointsConfig, c) for c in configs]
    train_cfg, gn_cfg = _phase_configs(cfgs[0])
    cfg = cfgs[0]
    splits = ff.make_splits(cfg, torch.device("cpu"))

    def make_analysis():
        models = [ff.new_model(c, torch.device("cpu")) for c in cfgs]
        return lambda: analyse_many(models, splits["train"], [c.seed for c in cfgs], cfg.perturb_samples,
                                    cfg.perturb_radius)

    fits = [ff.fit_phase(cfgs, train_cfg), ff.fit_phase(cfgs, gn_cfg)]
    k, weights = len(cfgs), fits[0].weights  # all K models' parameters
    # K float64 Hessians [P, P], and their stacked copy for eigvalsh: 2 x K x P^2 x 8 bytes
    hessians = 2 * weights * (weights // k) * 8
    analysis = cost.Phase(key=f"critical_points-analysis{cfg.hidden}|n={cfg.train_size}|k={k}"
                              f"|samples={cfg.perturb_samples}", steps=1, eval_samples=0, eval_batch=1,
                          make_step=make_analysis, make_eval=None, extra_bytes={"hessians": hessians})
    return cost.Workload([*fits, analysis], models=k, model_keys=ff.MODEL_KEYS)


register_family(Family(name="critical_points", validate=validate, load_data=ff.load_data, train=train,
                       train_packed=train_packed, workload=workload, default_metric="test_loss",
                       summary_metrics=("train_loss", "grad_norm_exact", "minimal_ratio", "minimal_ratio_perturb",
                                        "converged", "gn_steps")))
