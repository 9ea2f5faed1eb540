"""trainables.models: the registry, exact parameter counts, shapes, gradients, and
argument validation."""

from __future__ import annotations

import math
import uuid

from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from trainables.models import MODELS, ModelArgs, NoArgs, build_model, count_params, register_model

REPO = Path(__file__).resolve().parent.parent

# Small arguments per registered model, so every model is exercised quickly.
SMALL_ARGS = {
    "linear": {},
    "mlp": {"hidden": [32, 16], "dropout": 0.1},
    "cnn_overparam": {"width": 0.125, "head": 16},
    "cnn_small": {"channels": [4, 8]},
    "cnn_target": {"target_params": 2000, "shape": [1, 1, 2], "pool_after": [1]},
}


def test_every_registered_model_has_small_test_arguments():
    """Every built-in model (a plugin's, registered by another test's study, is not gensweep's)."""
    built_in = {name for name in MODELS if MODELS.origin(name).startswith(str(REPO / "trainables"))}
    assert built_in == set(SMALL_ARGS)


@pytest.mark.parametrize(
    "name, args, expected",
    [
        ("linear", {}, 7850),  # 784*10 + 10
        ("mlp", {}, 407_050),  # 784*512 + 512 + 512*10 + 10
        ("mlp", {"hidden": [100, 50]}, 784 * 100 + 100 + 100 * 50 + 50 + 50 * 10 + 10),
        ("cnn_overparam", {"width": 1.0}, 3_584_202),
        ("cnn_overparam", {}, 3_584_202),
        # width 0.5: 32/64/128 channels, head 256
        ("cnn_overparam", {"width": 0.5},
         9 * 32 + 64 + 9 * 32 * 64 + 128 + 9 * 64 * 128 + 256 + 128 * 49 * 256 + 256 + 256 * 10 + 10),
        # cnn_small: conv weights + biases per layer, then the linear head on the last width
        ("cnn_small", {"channels": [8, 8]}, (9 * 8 + 8) + (9 * 8 * 8 + 8) + (8 * 10 + 10)),
        ("cnn_small", {"channels": [128, 96]}, (9 * 128 + 128) + (9 * 128 * 96 + 96) + (96 * 10 + 10)),
        ("cnn_small", {"channels": [32, 64, 128]},
         (9 * 32 + 32) + (9 * 32 * 64 + 64) + (9 * 64 * 128 + 128) + (128 * 10 + 10)),
    ],
)
def test_exact_parameter_counts(name, args, expected):
    assert count_params(build_model(name, **args)) == expected


@pytest.mark.parametrize("name", sorted(SMALL_ARGS))
def test_forward_shape_and_finite_gradients(name):
    torch.manual_seed(0)
    model = build_model(name, **SMALL_ARGS[name])
    model.train()
    x = torch.randn(5, 1, 28, 28)
    y = torch.tensor([0, 1, 2, 3, 9])
    logits = model(x)
    assert logits.shape == (5, 10)
    assert logits.dtype == torch.float32
    loss = nn.functional.cross_entropy(logits, y)
    assert math.isfinite(loss.item())
    loss.backward()
    params = list(model.parameters())
    assert params and all(p.grad is not None for p in params)
    assert all(torch.isfinite(p.grad).all() for p in params)
    assert sum(float(p.grad.abs().sum()) for p in params) > 0
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, 28, 28)).shape == (1, 10)


def _conv_channels(model: nn.Module) -> list[int]:
    return [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]


def test_width_multiplier_scales_channels():
    assert _conv_channels(build_model("cnn_overparam", width=1.0)) == [64, 128, 256]
    assert _conv_channels(build_model("cnn_overparam", width=0.5)) == [32, 64, 128]
    assert _conv_channels(build_model("cnn_overparam", width=2.0)) == [128, 256, 512]
    assert _conv_channels(build_model("cnn_overparam", width=0.3)) == [19, 38, 77]  # rounded to nearest
    assert _conv_channels(build_model("cnn_overparam", width=0.001)) == [1, 1, 1]  # at least one channel
    small = build_model("cnn_overparam", width=0.25, head=32)
    linears = [m for m in small.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(64 * 7 * 7, 32), (32, 10)]
    assert count_params(build_model("cnn_overparam", width=2.0)) > count_params(build_model("cnn_overparam"))


def test_mlp_arguments_shape_the_network():
    model = build_model("mlp", hidden=[64, 32], activation="tanh", dropout=0.5)
    kinds = [type(m) for m in model]
    assert kinds == [nn.Flatten, nn.Linear, nn.Tanh, nn.Dropout, nn.Linear, nn.Tanh, nn.Dropout, nn.Linear]
    assert [m.p for m in model if isinstance(m, nn.Dropout)] == [0.5, 0.5]
    no_dropout = build_model("mlp", hidden=[8])
    assert not any(isinstance(m, nn.Dropout) for m in no_dropout)
    assert any(isinstance(m, nn.ReLU) for m in no_dropout)


def test_registering_a_duplicate_name_raises_value_error():
    name = f"test_model_{uuid.uuid4().hex}"
    assert name not in MODELS
    try:

        @register_model(name, NoArgs)
        def tiny() -> nn.Module:
            return nn.Sequential(nn.Flatten(), nn.Linear(784, 10))

        assert MODELS[name].build is tiny
        assert count_params(build_model(name)) == 7850
        with pytest.raises(ValueError, match="registered twice"):

            @register_model(name, NoArgs)
            def tiny_again() -> nn.Module:  # pragma: no cover - never built
                return nn.Identity()

        assert MODELS[name].build is tiny  # the first registration stays
        with pytest.raises(ValueError, match="'mlp' is registered twice"):
            register_model("mlp", NoArgs)(lambda: nn.Identity())
    finally:
        MODELS.pop(name, None)
    assert name not in MODELS


@pytest.mark.parametrize(
    "name, args, field",
    [
        ("mlp", {"activation": "gelu"}, "activation"),
        ("mlp", {"dropout": 1.5}, "dropout"),
        ("mlp", {"dropout": 1.0}, "dropout"),
        ("mlp", {"dropout": -0.1}, "dropout"),
        ("mlp", {"hidden": [0]}, "hidden"),
        ("mlp", {"hiden": [32]}, "hiden"),
        ("cnn_overparam", {"width": 0}, "width"),
        ("cnn_overparam", {"width": -1.0}, "width"),
        ("cnn_overparam", {"head": 0}, "head"),
        ("linear", {"width": 1.0}, "width"),
    ],
)
def test_bad_model_arguments_raise_validation_error(name, args, field):
    with pytest.raises(ValidationError) as info:
        build_model(name, **args)
    assert info.value.errors()[0]["loc"][0] == field


def test_model_args_are_strict_and_frozen():
    assert issubclass(NoArgs, ModelArgs)
    args = MODELS["mlp"].args(hidden=[4])
    assert args.model_dump() == {"hidden": [4], "activation": "relu", "dropout": 0.0}
    with pytest.raises(ValidationError):
        args.dropout = 0.5  # frozen
