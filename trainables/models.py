"""The model registry: name -> builder, each with a pydantic model of its arguments.

A model takes normalized images [B, C, H, W] and returns logits [B, num_classes];
the builder is given the dataset's `input_shape` (C, H, W) and `num_classes` (the
defaults are MNIST's: (1, 28, 28) and 10), so one spec key, `dataset:`, decides
both. A model's arguments are ordinary spec keys (`width: 2`, `hidden: [512]`), so
they become columns of the results like any other hyperparameter.

    >>> from trainables.models import build_model, count_params
    >>> count_params(build_model("cnn_overparam", width=1.0))
    3584202
    >>> count_params(build_model("mlp", input_shape=(3, 32, 32), num_classes=100, hidden=[64]))
    203172

A plugin adds a model the same way the built-ins below do:

    @register_model("tiny", TinyArgs)
    def tiny(input_shape, num_classes, width): ...
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Callable, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt
from pydantic import NonNegativeInt, computed_field, field_validator
from torch import nn

from trainables.registry import Registry
from trainables.widths import fit_widths

# MNIST's shape: the default when no dataset is given (bench, docs, tests).
IMAGE_SIDE = 28
NUM_CLASSES = 10
MNIST_SHAPE = (1, IMAGE_SIDE, IMAGE_SIDE)


class ModelArgs(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class ModelEntry:
    build: Callable[..., nn.Module]
    args: type[ModelArgs]


MODELS: Registry[ModelEntry] = Registry("model")


def register_model(name: str, args: type[ModelArgs]) -> Callable:
    """Decorator: register a builder `build(input_shape, num_classes, **args)` under
    `name`, with `args` (a ModelArgs subclass) validating its spec keys. A builder
    that does not take `input_shape` / `num_classes` is not given them."""
    if not (isinstance(args, type) and issubclass(args, BaseModel)):
        raise TypeError(f"register_model({name!r}, args): args must be a ModelArgs subclass (pydantic), "
                        f"got {args!r}")

    def decorator(build: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        MODELS.add(name, ModelEntry(build, args))
        return build

    return decorator


def build_model(name: str, input_shape: tuple[int, int, int] = MNIST_SHAPE, num_classes: int = NUM_CLASSES,
                **args) -> nn.Module:
    """Build a registered model for inputs [B, *input_shape] and `num_classes` logits;
    `args` are validated by its argument model."""
    entry = MODELS[name]
    given = entry.args(**args).model_dump()
    accepted = inspect.signature(entry.build).parameters
    for key, value in (("input_shape", tuple(input_shape)), ("num_classes", num_classes)):
        if key in accepted or any(p.kind is p.VAR_KEYWORD for p in accepted.values()):
            given[key] = value
    return entry.build(**given)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}


class NoArgs(ModelArgs):
    pass


@register_model("linear", NoArgs)
def linear(input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """Multinomial logistic regression; on MNIST its 10 weight rows are 28x28 templates."""
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), num_classes))


class MLPArgs(ModelArgs):
    hidden: list[PositiveInt] = Field(default_factory=lambda: [512])  # units per hidden layer
    activation: Literal["relu", "tanh", "sigmoid"] = "relu"
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)  # after each hidden activation


@register_model("mlp", MLPArgs)
def mlp(input_shape: tuple[int, int, int], num_classes: int, hidden: list[int], activation: str,
        dropout: float) -> nn.Module:
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(input_shape)
    for units in hidden:
        layers += [nn.Linear(width, units), ACTIVATIONS[activation]()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = units
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


class CNNOverparamArgs(ModelArgs):
    width: PositiveFloat = 1.0  # multiplies the 64/128/256 channels
    head: PositiveInt = 256  # hidden units of the fully connected head


def _conv_bn_relu(c_in: int, c_out: int) -> list[nn.Module]:
    # No conv bias: BatchNorm's shift makes it redundant.
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]


@register_model("cnn_overparam", CNNOverparamArgs)
def cnn_overparam(input_shape: tuple[int, int, int], num_classes: int, width: float, head: int) -> nn.Module:
    """conv C->64->128->256 (3x3, BN, ReLU), 2x2 max-pools after the first two, then a
    fully connected head 256*(H/4)*(W/4) -> head -> classes. On MNIST at width 1 the
    head holds 3.2M of the 3.58M parameters: far more than a 1k-5k image subset can
    pin down, which is what makes weight decay matter."""
    c1, c2, c3 = (max(1, round(c * width)) for c in (64, 128, 256))
    channels, height, side_w = input_shape
    return nn.Sequential(
        *_conv_bn_relu(channels, c1), nn.MaxPool2d(2),
        *_conv_bn_relu(c1, c2), nn.MaxPool2d(2),
        *_conv_bn_relu(c2, c3),
        nn.Flatten(),
        nn.Linear(c3 * (height // 4) * (side_w // 4), head), nn.ReLU(),  # after two 2x2 pools
        nn.Linear(head, num_classes),
    )


class CNNSmallArgs(ModelArgs):
    channels: list[PositiveInt] = Field(default_factory=lambda: [32, 64], min_length=1)  # per conv layer


@register_model("cnn_small", CNNSmallArgs)
def cnn_small(input_shape: tuple[int, int, int], num_classes: int, channels: list[int]) -> nn.Module:
    """conv3x3 -> ReLU -> 2x2 max-pool per entry of `channels`, then global average
    pooling and a linear layer. No BatchNorm, so weights can be interpolated and
    Hessians taken without batch statistics getting in the way. Parameter count
    grows with the channel widths alone (the head is channels[-1] x classes)."""
    layers: list[nn.Module] = []
    c_in = input_shape[0]
    for c_out in channels:
        layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
        c_in = c_out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, num_classes)]
    return nn.Sequential(*layers)


# 2x2 max-pools a 28x28 image can take (28 -> 14 -> 7 -> 3 -> 1); a fifth has no pixels left.
MAX_POOLS = 4


def cnn_target_param_count(channels: list[int]) -> int:
    """Parameters of `cnn_target` with these channels: 3x3 convs with biases, then the
    linear head (pooling has none). Equal to count_params(build_model(...))."""
    sizes = [1, *channels]
    return sum(9 * a * b + b for a, b in zip(sizes, sizes[1:])) + channels[-1] * NUM_CLASSES + NUM_CLASSES


class CNNTargetArgs(ModelArgs):
    # About 113k: the largest cnn_small of the capacity study ([128, 96], 112,938).
    target_params: PositiveInt = 113_000
    shape: list[PositiveFloat] = Field(default_factory=lambda: [1, 2], min_length=1)  # relative channels per conv
    # 0-based conv layers followed by a 2x2 max-pool; the default pools after the
    # first two, as cnn_small [c1, c2] does, so the shallow default is a cnn_small.
    pool_after: list[NonNegativeInt] = Field(default_factory=lambda: [0, 1])

    @field_validator("pool_after")
    @classmethod
    def _pools_fit(cls, value: list[int], info) -> list[int]:
        depth = len(info.data.get("shape") or [])
        if depth and any(i >= depth for i in value):
            raise ValueError(f"layer indices must be below the {depth} conv layers of `shape`")
        if len(set(value)) > MAX_POOLS:
            raise ValueError(f"at most {MAX_POOLS} pools fit a 28x28 image (28 -> 14 -> 7 -> 3 -> 1)")
        return sorted(set(value))

    @computed_field  # in the validated config, so results record the widths used
    @property
    def channels(self) -> list[int]:
        return fit_widths(cnn_target_param_count, self.shape, self.target_params)


@register_model("cnn_target", CNNTargetArgs)
def cnn_target(input_shape: tuple[int, int, int], num_classes: int, target_params: int, shape: list[float],
               pool_after: list[int], channels: list[int]) -> nn.Module:
    """conv3x3 -> ReLU per entry of `channels` (2x2 max-pool after the layers in
    `pool_after`), global average pool, linear; no BatchNorm. The channels are
    `shape` scaled by trainables.widths.fit_widths until the parameter count is
    closest to `target_params`, so networks of different depth can be compared at
    equal size (the fit counts MNIST's one input channel and 10 classes). Unlike
    cnn_small (a pool after every conv), it can be deep: with pools only where
    asked, later layers still see 7x7 pixels or more."""
    layers: list[nn.Module] = []
    c_in = input_shape[0]
    for i, c_out in enumerate(channels):
        layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU()]
        if i in pool_after:
            layers.append(nn.MaxPool2d(2))
        c_in = c_out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, num_classes)]
    return nn.Sequential(*layers)
