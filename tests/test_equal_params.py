"""sweeps/equal_params.yaml and its model `cnn_target`: channels fitted by
trainables.widths.fit_widths to a parameter target, the count formula, pooling where
asked, the config recording the channels, and every profile's two architectures
within 1% of their target."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from sweeps.schema import load_study
from trainables import classifier
from trainables.errors import ConfigError
from trainables.models import build_model, cnn_target_param_count, count_params
from trainables.widths import relative_error

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("channels", [[1], [3, 5], [21, 20, 40, 40, 80, 80], [78, 157]])
def test_param_count_formula_matches_the_built_model(channels):
    # pooling has no parameters, so a model with these channels counts the same
    model = build_model("cnn_target", target_params=cnn_target_param_count(channels), shape=channels,
                        pool_after=[0])
    assert count_params(model) == cnn_target_param_count(channels)


def test_known_widths_at_113k():
    shallow = classifier.validate({"model": "cnn_target", "shape": [1, 2], "pool_after": [0, 1]})
    deep = classifier.validate({"model": "cnn_target", "shape": [1, 1, 2, 2, 4, 4], "pool_after": [1, 3]})
    assert shallow["channels"] == [78, 157] and cnn_target_param_count([78, 157]) == 112_731
    assert deep["channels"] == [21, 20, 40, 40, 80, 80] and cnn_target_param_count(deep["channels"]) == 113_060
    assert shallow["target_params"] == 113_000  # the default


def test_pools_only_after_the_given_layers():
    model = build_model("cnn_target", target_params=3000, shape=[1, 1, 2, 2, 2], pool_after=[3, 1])
    kinds = [type(m).__name__ for m in model]
    convs = [i for i, k in enumerate(kinds) if k == "Conv2d"]
    pools = [i for i, k in enumerate(kinds) if k == "MaxPool2d"]
    assert len(convs) == 5 and len(pools) == 2
    # a pool right after the ReLU of conv layers 1 and 3 (0-based)
    assert pools == [convs[1] + 2, convs[3] + 2]
    features = nn.Sequential(*list(model)[: convs[-1] + 2])
    assert features(torch.zeros(2, 1, 28, 28)).shape[-2:] == (7, 7)
    assert model(torch.randn(3, 1, 28, 28)).shape == (3, 10)


@pytest.mark.parametrize("pool_after, message", [([0, 2], "below the 2 conv layers"),
                                                 ([0, 1, 2, 3, 4], "at most 4 pools")])
def test_impossible_pooling_is_a_config_error_naming_the_key(pool_after, message):
    shape = [1, 2] if message.startswith("below") else [1, 1, 1, 1, 1]
    with pytest.raises(ConfigError) as err:
        classifier.validate({"model": "cnn_target", "shape": shape, "pool_after": pool_after})
    assert err.value.key == "pool_after" and message in err.value.message


@pytest.mark.parametrize("profile", [None, "quick", "smoke"])
def test_every_profile_compares_a_shallow_and_a_deep_cnn_within_one_percent(profile):
    study = load_study(REPO / "sweeps/equal_params.yaml", profile)
    assert study.spec.description
    by_arch = {}
    for cell in study.cells:
        model = build_model(cell["model"], **{k: cell[k] for k in ("target_params", "shape", "pool_after")})
        n = count_params(model)
        assert n == cnn_target_param_count(cell["channels"])
        assert relative_error(n, cell["target_params"]) < 0.01, (cell["architecture"], n)
        by_arch[cell["architecture"]] = len(cell["channels"])
    assert by_arch == {"shallow-2conv": 2, "deep-6conv": 6}
    if profile is None:
        assert study.cells[0]["target_params"] == 113_000 and len({c["seed"] for c in study.cells}) == 3
        assert {(c["optimizer"], c["lr"], c["batch_size"]) for c in study.cells} == {("adam", 1e-3, 128)}
