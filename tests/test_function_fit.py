"""The function_fit family and the engine's regression mode: target values, the data,
config validation (widths for a parameter budget), and training through the one
engine (`criterion="mse"`) lowering the MSE, with the fitted curve in the last report."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from trainables import function_fit as ff
from trainables.engine import evaluate_split, fit
from trainables.errors import ConfigError
from trainables.widths import mlp_param_count


def test_sinc_values():
    x = torch.tensor([[0.1], [0.2], [0.3], [1.0]], dtype=torch.float64)
    # sin(pi/2)/(pi/2), sin(pi) = 0, sin(3pi/2)/(3pi/2), sin(5pi) = 0
    expected = [2 / math.pi, 0.0, -1 / (1.5 * math.pi), 0.0]
    assert ff.sinc(x).squeeze(1).tolist() == pytest.approx(expected, abs=1e-12)
    at_left_end = float(ff.sinc(torch.tensor([0.01], dtype=torch.float64)))
    assert at_left_end == pytest.approx(math.sin(0.05 * math.pi) / (0.05 * math.pi))


def test_square_wave_values():
    x = torch.tensor([0.1, 0.3, 0.5, 0.7, 0.9], dtype=torch.float64)
    assert ff.square_wave(x).tolist() == [1.0, -1.0, 1.0, -1.0, 1.0]
    assert set(ff.square_wave(ff.grid(1000)).unique().tolist()) <= {-1.0, 0.0, 1.0}


def test_grid_and_samples_lie_in_the_interval():
    g = ff.grid(100).squeeze(1)
    assert len(g) == 100 and g[0] > 0.01 and g[-1] == 1.0
    assert torch.allclose(g.diff(), torch.full((99,), 0.0099, dtype=torch.float64))
    s = ff.sample(10_000, seed=3)
    assert s.shape == (10_000, 1) and s.min() > 0.01 and s.max() <= 1.0
    assert torch.equal(s, ff.sample(10_000, seed=3)) and not torch.equal(s, ff.sample(10_000, seed=4))
    assert 0.45 < float(s.mean()) < 0.56  # uniform on (0.01, 1]: mean 0.505


def test_validate_resolves_widths_for_a_budget():
    config = ff.validate({"shape": [1, 2, 2, 2, 1], "params": 350, "target": "square_wave"})
    assert config["hidden"] == [5, 10, 10, 10, 5] and config["shape"] == [1, 2, 2, 2, 1]
    assert "criterion" not in config  # always MSE here: not a column of the results
    assert "probes" not in config and "per_class" not in config
    for shape in ([1, 2, 2, 2, 1], [1, 1], [1]):
        hidden = ff.validate({"shape": shape, "params": 350})["hidden"]
        assert abs(mlp_param_count(1, hidden, 1) - 350) <= 0.05 * 350
    assert ff.validate({})["hidden"] == [5, 10, 10, 10, 5]  # the default network
    assert ff.validate({"hidden": [8]})["hidden"] == [8]


@pytest.mark.parametrize("config, key", [
    ({"shape": [1, 1]}, "params"),
    ({"params": 300}, "shape"),
    ({"hidden": [4], "shape": [1], "params": 13}, "hidden"),
    ({"shape": [1, 1], "params": 10}, "params"),  # 9 parameters at best: 10% off
    ({"target": "cosine"}, "target"),
    ({"probes": ["sharpness"]}, "probes"),
    ({"criterion": "cross_entropy"}, "criterion"),
    ({"batch_size": 2000}, "batch_size"),
])
def test_bad_configs_name_the_key(config, key):
    with pytest.raises(ConfigError) as err:
        ff.validate(config)
    assert err.value.key == key


def test_mse_evaluation_is_the_mean_squared_error():
    split = ff.split_of(ff.grid(300), "sinc", torch.device("cpu"))
    torch.manual_seed(0)
    model = ff.regression_mlp([6])
    result = evaluate_split(model, split, batch_size=64, criterion="mse")  # several batches
    with torch.no_grad():
        expected = F.mse_loss(model(split.x), split.y).item()
    assert result.loss == pytest.approx(expected, rel=1e-6)
    assert math.isnan(result.acc) and result.per_class_acc == []


def run_fit(**overrides) -> tuple[str, list[dict]]:
    cfg = ff.FunctionFitConfig(**ff.validate({"hidden": [32, 32], "train_size": 200, "test_size": 200, "batch_size": 50,
                                              "max_steps": 400, "eval_every": 25, "lr": 0.01, **overrides}))
    device = torch.device("cpu")
    splits = ff.make_splits(cfg, device)
    model = ff.new_model(cfg, device)
    reports: list[dict] = []
    status = fit(model, splits["train"], {"test": splits["test"]}, ff.engine_config(cfg),
                 ff.with_curve(lambda m, s: reports.append(m), model, cfg, device))
    return status, reports


def initial_losses(**overrides) -> tuple[float, float]:
    cfg = ff.FunctionFitConfig(**ff.validate({"hidden": [32, 32], "train_size": 200, "test_size": 200, **overrides}))
    splits = ff.make_splits(cfg, torch.device("cpu"))
    model = ff.new_model(cfg, torch.device("cpu"))
    return tuple(evaluate_split(model, splits[s], 256, criterion="mse").loss for s in ("train", "test"))


def test_regression_through_the_engine_lowers_the_loss():
    train0, test0 = initial_losses()
    status, reports = run_fit()
    assert status == "ok"
    assert [r["step"] for r in reports] == [100, 200, 300, 400]  # 4 steps per epoch, a report every 25 epochs
    last = reports[-1]
    assert last["train_loss"] < 0.1 * train0 and last["test_loss"] < 0.1 * test0
    # the target's variance on (0.01, 1] is about 0.08: a flat line would score that
    assert last["test_loss"] < 0.006
    for r in reports:
        assert not any(k.endswith("_acc") for k in r), "no accuracies for a regression"
        assert r["gap_loss"] == r["test_loss"] - r["train_loss"]
        assert r["weight_norm"] > 0 and r["grad_norm"] > 0 and r["time_s"] >= 0
    assert [r["status"] for r in reports] == ["running"] * 3 + ["ok"]


def test_last_report_carries_the_fitted_curve():
    _, reports = run_fit(curve_points=40, max_steps=100)
    last = reports[-1]
    assert "curve_x" not in reports[0] or len(reports) == 1
    assert len(last["curve_x"]) == len(last["curve_y"]) == 40
    assert last["curve_x"] == pytest.approx(ff.grid(40).squeeze(1).tolist())
    # the curve is the model's: its MSE on that grid is close to the reported test MSE (a denser grid)
    target = ff.sinc(ff.grid(40)).squeeze(1)
    curve_mse = float(((torch.tensor(last["curve_y"], dtype=torch.float64) - target) ** 2).mean())
    assert curve_mse == pytest.approx(last["test_loss"], rel=0.3)


def test_same_seed_same_fit_and_seeds_differ():
    _, a = run_fit(max_steps=100, seed=1)
    _, b = run_fit(max_steps=100, seed=1)
    _, c = run_fit(max_steps=100, seed=2)
    assert a[-1]["train_loss"] == b[-1]["train_loss"] and a[-1]["curve_y"] == b[-1]["curve_y"]
    assert a[-1]["train_loss"] != c[-1]["train_loss"]


def test_config_columns_of_a_spec_cell_build_the_model():
    config = ff.validate({"shape": [1], "params": 349, "activation": "tanh"})
    cfg = ff.parse(ff.FunctionFitConfig, {**config, "architecture": "wide"})  # a variant label is ignored
    model = ff.new_model(cfg, torch.device("cpu"))
    assert sum(p.numel() for p in model.parameters()) == 349
    assert isinstance(model[1], torch.nn.Tanh)
    assert ff.engine_config(cfg).criterion == "mse"
