"""The `classifier` family: an image classifier from the model registry, trained by
the engine on a (sub)set of an image dataset (MNIST, Fashion-MNIST, CIFAR-10, ...,
an .npz file, or a plugin's; trainables/data.py). The model is built for the
dataset's input shape and class count.

Config keys: the engine's (`EngineConfig`), the data's (`DataConfig`), `model`, and
the chosen model's own arguments (e.g. `width` for `cnn_overparam`).
"""

from __future__ import annotations

import json
import math
from functools import lru_cache

import torch
from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveInt

from trainables import data as datasets
from trainables.engine import EngineConfig, fit
from trainables.errors import ConfigError
from trainables.families import Family, register_family, suggest, validate_model
from trainables.models import MODELS, build_model, count_params
from trainables.registry import shown_path
from trainables.packed import PackedModels
from trainables.trial import restored_state, trial_device, tune_reporter


class DataConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # A registered dataset's name, or "npz:<absolute path>" (the spec loader turns
    # `dataset: {npz: file.npz}` into that; trainables.data.dataset_ref).
    dataset: str = "mnist"
    train_size: PositiveInt | None = None  # images in the training subset; None: all that remain
    val_size: NonNegativeInt = 0  # held out of the 60k training images (for searches)
    test_size: PositiveInt | None = None  # fixed balanced subset of the 10k test images; None: all
    data_seed: NonNegativeInt = 0  # which subset; fixed by default so seeds vary only the training
    # Fraction of training labels replaced by uniformly random ones (drawn once from
    # data_seed: the same in every epoch, restart and seed); test labels never change.
    label_noise: float = Field(default=0.0, ge=0.0, le=1.0)


class ClassifierConfig(EngineConfig, DataConfig):
    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    model: str = "mlp"


def check_keys(family: str, schema: type[BaseModel], own_keys, config: dict) -> tuple[str, type[BaseModel]]:
    """(model name, its argument schema); a ConfigError for an unknown model, or for
    a key that is neither the family's (`own_keys`) nor the model's argument.
    `schema` (the family's config model) gives the default model."""
    model = config.get("model", schema.model_fields["model"].default)
    if model not in MODELS:
        raise ConfigError("model", f"unknown model {model!r}{suggest(model, MODELS)}; known: {', '.join(sorted(MODELS))}")
    arg_schema = MODELS[model].args
    for key in config:
        if key not in own_keys and key not in arg_schema.model_fields:
            known = [*own_keys, *arg_schema.model_fields]
            raise ConfigError(key, f"unknown key for family {family!r} with model {model!r}{suggest(key, known)}")
    return model, arg_schema


def validate(config: dict) -> dict:
    """One trial's config with defaults filled in; raises ConfigError naming the key."""
    _, arg_schema = check_keys("classifier", ClassifierConfig, ClassifierConfig.model_fields, config)
    own = {k: v for k, v in config.items() if k in ClassifierConfig.model_fields}
    rest = {k: v for k, v in config.items() if k not in own}
    resolved = validate_model(ClassifierConfig, own)
    args = validate_model(arg_schema, rest)
    if resolved.criterion != "cross_entropy":
        raise ConfigError("criterion", f"{resolved.criterion!r} is for regression (family function_fit); "
                                       "a classifier trains with 'cross_entropy'")
    source = dataset_info(resolved.dataset)
    available = source.train_count - resolved.val_size
    if available <= 0:
        raise ConfigError("val_size", f"{resolved.val_size} leaves no training images (of {source.train_count})")
    if resolved.train_size is not None and resolved.train_size > available:
        raise ConfigError("train_size", f"{resolved.train_size} exceeds the {available} training images left after val_size")
    if resolved.batch_size > (resolved.train_size or available):
        raise ConfigError("batch_size", f"{resolved.batch_size} is larger than the training subset "
                                        f"({resolved.train_size or available} images)")
    if resolved.test_size is not None and resolved.test_size > source.test_count:
        raise ConfigError("test_size", f"{resolved.test_size} exceeds the {source.test_count} test images")
    from trainables.probes import PROBES

    for i, probe in enumerate(resolved.probes):
        if probe not in PROBES:
            raise ConfigError(f"probes[{i}]", f"unknown probe {probe!r}{suggest(probe, PROBES)}; known: {', '.join(sorted(PROBES))}")
    given = args.model_dump(include=set(arg_schema.model_fields))  # not computed fields (cnn_target's channels)
    check_forward(MODELS[resolved.model].build, resolved.model, json.dumps(given, sort_keys=True),
                  source.input_shape, source.num_classes)
    return {**resolved.model_dump(), **args.model_dump()}


def dataset_info(ref: str) -> datasets.DatasetInfo:
    """The dataset's shape, classes and sizes, without loading it; a ConfigError for
    an unknown name or a bad .npz file."""
    try:
        return datasets.dataset_info(ref)
    except (datasets.DataError, ValueError) as exc:
        raise ConfigError("dataset", str(exc)) from None


# Images in the validation forward pass: 2, so BatchNorm in train mode would work too.
_PROBE_BATCH = 2


@lru_cache(maxsize=256)
def _sized(net: torch.nn.Module) -> int:
    """Parameters of a model built on the meta device; 0 for one with lazy modules
    (nn.LazyLinear: sized at its first forward pass), which is then built for real."""
    try:
        return count_params(net)
    except ValueError:  # "Attempted to use an uninitialized parameter"
        return 0


def check_forward(builder, model: str, args_json: str, input_shape: tuple[int, int, int], num_classes: int) -> None:
    """Build the model for the dataset and run one forward pass on a tiny batch of
    zeros, so a model that does not fit the dataset's shape (a plugin's, or a
    built-in's arguments) is refused at validation, not in every trial. Cached: a
    grid's cells share a handful of distinct models (`builder`, the registered
    function, is in the key so that an edited plugin's model is checked again)."""
    from trainables import cost, plugins

    shape = "x".join(map(str, input_shape))

    def build() -> torch.nn.Module:
        return build_model(model, input_shape=input_shape, num_classes=num_classes, **json.loads(args_json))

    try:
        # A model too big to build here (sweeps/feasibility.py refuses it with its
        # numbers) is checked on the meta device: shapes only, nothing allocated.
        net = cost.on_meta(lambda: [build()])[0]
        if _sized(net) <= cost.REAL_PROBE_PARAMS:
            net = build()  # a real forward pass also runs what the meta device cannot (values)
        net.eval()
        with torch.no_grad(), torch.device(next((p.device for p in net.parameters()), torch.device("cpu"))):
            out = net(torch.zeros(_PROBE_BATCH, *input_shape))
    except Exception as exc:
        # The line in the user's code when the traceback passes through it, else the
        # file that registered the model.
        where = plugins.where(exc, shown_path(MODELS.origin(model)))
        raise ConfigError("model", f"{model!r} ({where}) fails on the dataset's {shape} images: "
                                   f"{plugins.describe(exc)}") from None
    if tuple(getattr(out, "shape", ())) != (_PROBE_BATCH, num_classes):
        got = tuple(out.shape) if hasattr(out, "shape") else type(out).__name__
        raise ConfigError("model", f"{model!r} returns {got} for a batch of {_PROBE_BATCH} {shape} images; "
                                   f"a classifier returns [batch, {num_classes}] logits (the dataset's classes)")


def load_data(configs: list[dict]) -> dict[str, datasets.ImageData]:
    """Every dataset any trial uses, read once."""
    return {name: datasets.load_dataset(name) for name in sorted({c["dataset"] for c in configs})}


def parse_config(schema: type[ClassifierConfig], config: dict) -> tuple:
    """A trial's flat config -> (the family's config model, the model's arguments).
    Keys of neither (e.g. a variant axis's name) are labels for the results only."""
    cfg = schema(**{k: v for k, v in config.items() if k in schema.model_fields})
    return cfg, {k: v for k, v in config.items() if k in MODELS[cfg.model].args.model_fields}


def train(config: dict, data: dict[str, datasets.ImageData]) -> None:
    """One Tune trial: build the splits on the trial's device, the model, and train."""
    cfg, model_args = parse_config(ClassifierConfig, config)
    device, info = trial_device()
    ds = data[cfg.dataset]
    splits = make_splits(ds, cfg, device)
    torch.manual_seed(cfg.seed)  # initialization
    model = build_for(ds, cfg, model_args).to(device)
    report = tune_reporter({**info, "n_params": count_params(model)})
    train_split = splits.pop("train")
    fit(model, train_split, splits, cfg, report, resume=restored_state(config))


def train_packed(configs: list[dict], ids: list[str], data: dict[str, datasets.ImageData]) -> None:
    """One Tune trial training several cells at once (a spec's `pack:`): each model
    built after seeding with its own seed, as `train` does, and reported under its
    cell's id (see trainables/packed.py)."""
    parsed = [parse_config(ClassifierConfig, c) for c in configs]
    cfgs = [cfg for cfg, _ in parsed]
    device, info = trial_device()
    ds = data[cfgs[0].dataset]
    splits = make_splits(ds, cfgs[0], device)  # data keys are shared by the pack
    models = []
    for cfg, model_args in parsed:
        torch.manual_seed(cfg.seed)  # initialization
        models.append(build_for(ds, cfg, model_args).to(device))
    report = tune_reporter({**info, "n_params": count_params(models[0]), "pack_size": len(models)})
    train_split = splits.pop("train")
    # every cell of a pack carries the pack's checkpoint folder, if any
    fit(PackedModels(models), train_split, splits, cfgs, report, resume=restored_state(configs[0]), names=ids)


def make_splits(ds: datasets.ImageData, cfg: ClassifierConfig, device: torch.device) -> dict[str, datasets.Split]:
    """train / val (when val_size > 0) / test splits as indices into device tensors."""
    train_idx, val_idx = datasets.training_split(ds.train_y, cfg.train_size, cfg.val_size, cfg.data_seed)
    test_idx = datasets.test_subset(ds.test_y, cfg.test_size)
    train_labels = datasets.noisy_labels(ds.train_y, train_idx, cfg.label_noise, cfg.data_seed, ds.num_classes)
    train_x, train_y = datasets.as_tensor(ds.train_x, device), datasets.as_tensor(train_labels, device)
    test_x, test_y = datasets.as_tensor(ds.test_x, device), datasets.as_tensor(ds.test_y, device)

    def split(x, y, idx):
        return datasets.Split(x, y, torch.as_tensor(idx, device=device), ds.mean, ds.std)

    splits = {"train": split(train_x, train_y, train_idx)}
    if len(val_idx):  # validation labels are never noisy
        splits["val"] = split(train_x, datasets.as_tensor(ds.train_y, device), val_idx)
    splits["test"] = split(test_x, test_y, test_idx)
    return splits


def build_for(ds: datasets.ImageData | datasets.DatasetInfo, cfg, model_args: dict) -> torch.nn.Module:
    """The config's model, built for the dataset's input shape and classes."""
    return build_model(cfg.model, input_shape=ds.input_shape, num_classes=ds.num_classes, **model_args)


def evaluated_sizes(cfg: DataConfig, info: datasets.DatasetInfo) -> tuple[int, int]:
    """(training images, images one evaluation forwards: train + validation + test)."""
    n_train = cfg.train_size or info.train_count - cfg.val_size
    return n_train, n_train + cfg.val_size + min(cfg.test_size or info.test_count, info.test_count)


def workload(configs: list[dict]):
    """A trial's cost model (trainables/cost.py): one engine phase of the config's
    model(s) on the dataset's shapes, evaluated on train, validation and test."""
    from trainables import cost

    parsed = [parse_config(ClassifierConfig, c) for c in configs]
    cfg, model_args = parsed[0]
    info = dataset_info(cfg.dataset)
    n_train, n_eval = evaluated_sizes(cfg, info)
    phase = cost.engine_phase(f"{cfg.model}{json.dumps(model_args, sort_keys=True)}",
                              lambda: [build_for(info, c, a) for c, a in parsed], cfg, info.input_shape,
                              info.num_classes, cost.engine_steps(cfg, n_train), cost.evaluations(cfg, n_train) * n_eval)
    image_bytes = math.prod(info.input_shape)  # uint8 pixels
    # a trial holds the whole dataset (shared zero-copy from the object store) plus labels
    return cost.Workload([phase], data_bytes=(info.train_count + info.test_count) * (image_bytes + 8),
                         models=len(parsed), model_keys=("model", *model_args))


def model_params(config: dict) -> int:
    """Parameter count of the model a (validated) trial config builds (on the meta
    device where it can: a huge model is counted, not allocated)."""
    from trainables import cost

    cfg, model_args = parse_config(ClassifierConfig, config)
    return count_params(cost.on_meta(lambda: [build_for(dataset_info(cfg.dataset), cfg, model_args)])[0])


register_family(Family(name="classifier", validate=validate, load_data=load_data, train=train,
                       count_params=model_params, train_packed=train_packed, workload=workload))
