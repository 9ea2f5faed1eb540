"""The `function_fit` family: an MLP fits a 1-D function by regression (MSE), trained
by the one engine (`criterion="mse"`).

    make sweep-function PROFILE=quick
    .venv/bin/python -m sweeps run sweeps/function_fit.yaml --profile quick

Targets (config key `target`) on x in (0.01, 1]:
- `sinc`: f(x) = sin(5 pi x) / (5 pi x), a damped oscillation (smooth);
- `square_wave`: f(x) = sign(sin(5 pi x)), the same zeros but jumps of 2 (rough).

Training points: `train_size` x values drawn uniformly from (0.01, 1] (by
`data_seed`, so every seed fits the same points); the test set is a dense evenly
spaced grid of `test_size` points over the same interval.

The network 1 -> hidden... -> 1 is given either by its widths (`hidden: [5, 10, 5]`)
or by a shape and a parameter budget (`shape: [1, 2, 2, 2, 1]`, `params: 350`):
`trainables/widths.py` scales the relative widths until the parameter count is
closest to `params`, and the config records the widths found as `hidden`. A budget
the shape cannot reach within `params_tolerance` (5 %) is a config error, so models
compared at "equal parameters" really are.

History rows: the engine's (`train_loss`, `test_loss` = MSE on the grid, `gap_loss`,
`weight_norm`, `grad_norm`, `time_s`; no accuracies). The last row also carries the
fitted curve: `curve_x` and `curve_y` (lists of `curve_points` values; figure kind
`function_fit` in analysis/studies/function_fit.py draws them over the target).
"""

from __future__ import annotations

import math
from typing import Callable, ClassVar, Literal

import torch
from pydantic import Field, NonNegativeInt, PositiveFloat, PositiveInt
from torch import nn

from trainables.contract import member_rows
from trainables.data import TensorSplit
from trainables.engine import EngineConfig, ModelSet, SingleModel, fit
from trainables.errors import ConfigError
from trainables.families import Family, register_family, validate_model
from trainables.models import count_params
from trainables.packed import PackedModels
from trainables.widths import fit_widths, mlp_param_count, relative_error

X_LOW, X_HIGH = 0.01, 1.0  # the input interval (X_LOW excluded: sinc's 0/0 is at 0)
FREQUENCY = 5 * math.pi  # 2.5 periods of sin(5 pi x) over (0, 1]


def sinc(x: torch.Tensor) -> torch.Tensor:
    return torch.sin(FREQUENCY * x) / (FREQUENCY * x)


def square_wave(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(torch.sin(FREQUENCY * x))


TARGETS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"sinc": sinc, "square_wave": square_wave}
ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh}
# Engine keys that only mean something for image classifiers.
_CLASSIFIER_ONLY = ("criterion", "per_class", "probes", "probe_size")


class FunctionFitConfig(EngineConfig):
    """Engine keys with this study's defaults, the data and the network."""

    # Widths when neither `hidden` nor `shape` + `params` is given: the issue's
    # deep-and-narrow example, 1-5-10-10-10-5-1 (351 parameters).
    DEFAULT_HIDDEN: ClassVar[list[int]] = [5, 10, 10, 10, 5]
    criterion: Literal["cross_entropy", "mse"] = "mse"
    optimizer: Literal["sgd", "adam"] = "adam"
    # Measured: with 1e-3 the shallower nets were still at MSE 0.4-0.6 on the square
    # wave after 10k steps (0.1-0.25 with 3e-3); 1e-2 makes the loss jumpy.
    lr: PositiveFloat = 3e-3
    batch_size: PositiveInt | None = 100  # 10 steps per epoch on the default 1000 points
    # Thousands of Adam steps: the small networks need them to resolve the oscillations.
    max_steps: PositiveInt | None = 10_000
    eval_every: PositiveInt = 20  # epochs (200 steps at the defaults): 50 reports per trial
    eval_batch_size: PositiveInt = 4096  # scalars: one batch holds the whole grid

    target: Literal["sinc", "square_wave"] = "sinc"
    train_size: PositiveInt = 1000  # training points
    test_size: PositiveInt = 1000  # evaluation grid points (dense, evenly spaced)
    data_seed: NonNegativeInt = 0  # which training points; fixed so seeds vary only the training
    activation: Literal["relu", "tanh"] = "relu"
    # Either hidden widths, or a relative shape scaled to a parameter budget.
    hidden: list[PositiveInt] | None = None
    shape: list[PositiveFloat] | None = None
    params: PositiveInt | None = None
    params_tolerance: float = Field(default=0.05, gt=0.0, lt=1.0)  # |count - params| / params allowed
    curve_points: PositiveInt = 200  # x values of the fitted curve in the last report


def resolve_hidden(cfg: FunctionFitConfig) -> list[int]:
    """The hidden widths: `hidden` as given, or `shape` scaled to `params`.
    Raises ConfigError naming the key at fault."""
    if cfg.hidden is not None:
        if cfg.shape is not None or cfg.params is not None:
            raise ConfigError("hidden", "give either hidden widths or shape + params, not both")
        return list(cfg.hidden)
    if cfg.shape is None and cfg.params is None:
        return list(cfg.DEFAULT_HIDDEN)
    if cfg.shape is None or cfg.params is None:
        missing = "shape" if cfg.shape is None else "params"
        raise ConfigError(missing, "shape and params go together (relative widths and a parameter budget)")
    count = lambda widths: mlp_param_count(1, widths, 1)  # noqa: E731
    try:
        widths = fit_widths(count, cfg.shape, cfg.params)
    except ValueError as exc:
        raise ConfigError("params", str(exc)) from None
    error = relative_error(count(widths), cfg.params)
    if error > cfg.params_tolerance:
        raise ConfigError("params", f"shape {cfg.shape} reaches {count(widths)} parameters at best "
                                    f"({error:.1%} from {cfg.params}; tolerance {cfg.params_tolerance:.0%})")
    return widths


def _compact(values: list[float] | None) -> list[float] | None:
    """[1.0, 2.0] -> [1, 2]: shapes read as written in the spec (and in result columns)."""
    return None if values is None else [int(v) if float(v).is_integer() else v for v in values]


def validate_config(schema: type[FunctionFitConfig], config: dict, family: str) -> dict:
    """One trial's config with defaults filled in and `hidden` resolved; raises
    ConfigError naming the key."""
    for key in _CLASSIFIER_ONLY:
        if key in config:
            raise ConfigError(key, f"applies to image classifiers, not to the {family} family")
    resolved = validate_model(schema, config)
    hidden = resolve_hidden(resolved)
    if resolved.batch_size is not None and resolved.batch_size > resolved.train_size:
        raise ConfigError("batch_size", f"{resolved.batch_size} is larger than the training set "
                                        f"({resolved.train_size} points)")
    out = resolved.model_dump(exclude=set(_CLASSIFIER_ONLY))
    out.update(hidden=hidden, shape=_compact(resolved.shape))
    return out


def validate(config: dict) -> dict:
    return validate_config(FunctionFitConfig, config, "function_fit")


# ---------------------------------------------------------------------------
# Data and model


def grid(n: int) -> torch.Tensor:
    """n evenly spaced points of (X_LOW, X_HIGH], the right end included, [n, 1]."""
    return (X_LOW + (X_HIGH - X_LOW) * torch.arange(1, n + 1, dtype=torch.float64) / n).unsqueeze(1)


def sample(n: int, seed: int) -> torch.Tensor:
    """n points drawn uniformly from (X_LOW, X_HIGH], [n, 1]."""
    u = torch.rand(n, 1, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)  # [0, 1)
    return X_HIGH - (X_HIGH - X_LOW) * u


def split_of(x: torch.Tensor, target: str, device: torch.device, dtype: torch.dtype = torch.float32) -> TensorSplit:
    """The split holding the points `x` [n, 1] and the target's values there
    (computed in float64, then cast)."""
    y = TARGETS[target](x)
    return TensorSplit(x.to(device, dtype), y.to(device, dtype), torch.arange(len(x), device=device))


def make_splits(cfg: FunctionFitConfig, device: torch.device) -> dict[str, TensorSplit]:
    return {"train": split_of(sample(cfg.train_size, cfg.data_seed), cfg.target, device),
            "test": split_of(grid(cfg.test_size), cfg.target, device)}


def regression_mlp(hidden: list[int], activation: str = "relu") -> nn.Sequential:
    """1 -> hidden[0] -> ... -> hidden[-1] -> 1, the activation after each hidden layer."""
    sizes = [1, *hidden]
    layers: list[nn.Module] = []
    for a, b in zip(sizes, sizes[1:]):
        layers += [nn.Linear(a, b), ACTIVATIONS[activation]()]
    layers.append(nn.Linear(sizes[-1], 1))
    return nn.Sequential(*layers)


@torch.no_grad()
def predict(model: nn.Module, n: int, device: torch.device) -> dict[str, list[float]]:
    """The model's curve on `n` grid points: {"curve_x": [...], "curve_y": [...]}."""
    was_training = model.training
    model.eval()
    x = grid(n)
    y = model(x.to(device, torch.float32)).squeeze(1).double().cpu()
    model.train(was_training)
    return {"curve_x": x.squeeze(1).tolist(), "curve_y": y.tolist()}


def engine_config(cfg: FunctionFitConfig) -> EngineConfig:
    return EngineConfig(**{k: getattr(cfg, k) for k in EngineConfig.model_fields})


def new_model(cfg: FunctionFitConfig, device: torch.device) -> nn.Module:
    torch.manual_seed(cfg.seed)  # initialization
    return regression_mlp(cfg.hidden, cfg.activation).to(device)


def new_models(cfgs: list[FunctionFitConfig], device: torch.device) -> ModelSet:
    """One model per config, each initialized from its own seed: the model itself
    (as a SingleModel) for one config, a PackedModels for several."""
    models = [new_model(cfg, device) for cfg in cfgs]
    return SingleModel(models[0]) if len(models) == 1 else PackedModels(models)


def module_of(models: ModelSet, names: list[str] | None) -> Callable[[str | None], nn.Module]:
    """A report row's name (None for one model, else a cell id) -> its model."""
    index = {None: 0} if names is None else {name: i for i, name in enumerate(names)}
    return lambda name: models.module(index[name])


def with_curve(report, module: nn.Module | Callable[[str | None], nn.Module], cfg: FunctionFitConfig,
               device: torch.device):
    """An engine callback that adds each model's fitted curve to its last report
    (`module`: the model, or a row's name -> its model, see `module_of`)."""
    if isinstance(module, nn.Module):
        module = (lambda model: lambda name: model)(module)

    def on_epoch(metrics: dict, state: dict | None) -> None:
        rows = member_rows(metrics)
        for name, row in rows.items():
            if row["status"] == "ok":
                rows[name] = {**row, **predict(module(name), cfg.curve_points, device)}
        report(metrics if None not in rows else rows[None], state)

    return on_epoch


def parse(schema: type[FunctionFitConfig], config: dict) -> FunctionFitConfig:
    """A trial's flat config (validated, `hidden` resolved) -> the config model; keys
    of neither (a variant axis's name) are labels for the results only."""
    return schema(**{k: v for k, v in config.items() if k in schema.model_fields})


def load_data(configs: list[dict]) -> None:
    """Nothing to read: each trial computes its few thousand points itself."""
    return None


def train_packed(configs: list[dict], ids: list[str] | None, data: None = None) -> None:
    """One Tune trial: the points on the trial's device, the MLP (or, for a spec's
    `pack:`, one per config, differing only in seed and lr: trainables/packed.py),
    and the engine."""
    from trainables.trial import restored_state, trial_device, tune_reporter  # Ray: trials only

    cfgs = [parse(FunctionFitConfig, c) for c in configs]
    device, info = trial_device()
    splits = make_splits(cfgs[0], device)  # data keys are shared by a pack
    models = new_models(cfgs, device)
    extra = {"n_params": count_params(models.module(0))} | ({"pack_size": models.k} if ids else {})
    report = with_curve(tune_reporter({**info, **extra}), module_of(models, ids), cfgs[0], device)
    fit(models, splits["train"], {"test": splits["test"]}, [engine_config(c) for c in cfgs], report,
        resume=restored_state(configs[0]), names=ids)


def train(config: dict, data: None) -> None:
    train_packed([config], None)


# The config keys the network is built from (`hidden`, or `shape` scaled to `params`).
MODEL_KEYS = ("hidden", "shape", "params", "activation")


def fit_phase(cfgs: list[FunctionFitConfig], engine: EngineConfig, name: str = "regression_mlp"):
    """The cost model (trainables/cost.py) of one `engine.fit` of these configs' MLPs
    on their points, evaluated on the training points and the test grid."""
    from trainables import cost

    cfg = cfgs[0]
    return cost.engine_phase(f"{name}{cfg.hidden}{cfg.activation}|n={cfg.train_size}",
                             lambda: [regression_mlp(c.hidden, c.activation) for c in cfgs], engine, (1,), None,
                             cost.engine_steps(engine, cfg.train_size),
                             cost.evaluations(engine, cfg.train_size) * (cfg.train_size + cfg.test_size))


def workload(configs: list[dict]):
    from trainables import cost

    cfgs = [parse(FunctionFitConfig, c) for c in configs]
    return cost.Workload([fit_phase(cfgs, engine_config(cfgs[0]))], models=len(cfgs), model_keys=MODEL_KEYS)


register_family(Family(name="function_fit", validate=validate, load_data=load_data, train=train,
                       train_packed=train_packed, workload=workload, default_metric="test_loss",
                       summary_metrics=("train_loss", "test_loss", "weight_norm")))
