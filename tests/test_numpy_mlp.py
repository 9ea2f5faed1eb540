"""The NumPy MLP family (trainables/numpy_mlp.py) and its report
(analysis/studies/numpy_mlp.py): gradients equal torch autograd's, training follows
the engine's plain-SGD path step by step from the same weights and batches, Glorot
initialization, reports (contract columns, steps, confusion matrices), resuming, config
errors, and the classification report of a known confusion matrix."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from analysis.studies.numpy_mlp import classification_report, running_mean
from sweeps.schema import load_study
from trainables import numpy_mlp as N
from trainables.engine import EngineConfig, fit
from trainables.errors import ConfigError
from trainables.models import build_model

REPO = Path(__file__).resolve().parent.parent
SIZES = [784, 500, 250, 100, 10]
ACTIVATIONS = ["sigmoid", "tanh", "relu"]


def torch_copy(net: N.NumpyMLP, dtype=torch.float32) -> nn.Module:
    """The engine's `mlp` with the NumPy network's weights (torch's Linear stores W^T)."""
    model = build_model("mlp", hidden=net.sizes[1:-1], activation=net.activation).to(dtype)
    linears = [m for m in model if isinstance(m, nn.Linear)]
    with torch.no_grad():
        for layer, w, b in zip(linears, net.params[0::2], net.params[1::2]):
            layer.weight.copy_(torch.from_numpy(w.T.copy()))
            layer.bias.copy_(torch.from_numpy(b))
    return model


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_gradients_equal_torch_autograd(make_splits, activation):
    train, _ = make_splits(256, 16)
    arrays = N.ArraySplit(train, dtype=np.float64)
    rows = arrays.idx[:64]
    x, y = arrays.inputs(rows), arrays.y[rows]
    net = N.NumpyMLP(SIZES, activation, seed=3, dtype=np.float64)
    # move off the initialization (zero biases) so every term of the gradient is exercised
    for p in net.params:
        p += np.random.default_rng(7).normal(scale=0.05, size=p.shape)
    loss, grads = net.loss_and_grads(x, y)
    model = torch_copy(net, torch.float64)
    ref = F.cross_entropy(model(torch.from_numpy(x)), torch.from_numpy(y))
    ref.backward()
    assert loss == pytest.approx(ref.item(), rel=1e-12)
    linears = [m for m in model if isinstance(m, nn.Linear)]
    expected = [t for layer in linears for t in (layer.weight.grad.T, layer.bias.grad)]
    for ours, theirs in zip(grads, expected, strict=True):
        theirs = theirs.numpy()
        assert ours.shape == theirs.shape
        assert np.linalg.norm(ours - theirs) / np.linalg.norm(theirs) < 1e-6


@pytest.mark.parametrize("activation, weight_decay", [("sigmoid", 0.0), ("tanh", 0.0), ("relu", 0.0), ("relu", 1e-2)])
def test_training_follows_the_engines_plain_sgd_step_by_step(make_splits, activation, weight_decay):
    train, test = make_splits(320, 100)
    settings = dict(lr=0.05, batch_size=64, epochs=2, seed=4, weight_decay=weight_decay)
    cfg = N.NumpyMLPConfig(**N.validate({"activation": activation, "log_every_steps": 1, **settings}))
    net = N.NumpyMLP(SIZES, activation, seed=cfg.seed)
    model = torch_copy(net)

    ours: list[dict] = []
    N.run(cfg, net, {"train": N.ArraySplit(train), "test": N.ArraySplit(test)}, lambda m, s: ours.append(m))
    engine: list[dict] = []
    engine_cfg = EngineConfig(optimizer="sgd", momentum=0.0, log_every_steps=1, **settings)
    fit(model, train, {"test": test}, engine_cfg, lambda m, s: engine.append(m))

    steps = [s for row in ours for s in row["steps"]["step"]]
    assert steps == list(range(1, 11))  # 5 batches x 2 epochs, every step logged
    our_loss = np.concatenate([row["steps"]["loss"] for row in ours])
    engine_loss = np.concatenate([row["steps"]["loss"] for row in engine])
    np.testing.assert_allclose(our_loss, engine_loss, rtol=1e-4)
    assert our_loss[-1] < our_loss[0]  # it does learn
    for a, b in zip(ours, engine, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["test_acc"] == pytest.approx(b["test_acc"], abs=0.011)  # one image of 100 may flip
        assert a["weight_norm"] == pytest.approx(b["weight_norm"], rel=1e-5)
    linears = [m for m in model if isinstance(m, nn.Linear)]
    np.testing.assert_allclose(net.params[0], linears[0].weight.detach().numpy().T, atol=1e-5)


def test_glorot_uniform_bounds_and_variance():
    net = N.NumpyMLP(SIZES, "relu", seed=0)
    for (fan_in, fan_out), w, b in zip(zip(SIZES, SIZES[1:]), net.params[0::2], net.params[1::2]):
        limit = np.sqrt(6 / (fan_in + fan_out))
        assert w.shape == (fan_in, fan_out) and np.abs(w).max() <= limit
        assert w.var() == pytest.approx(limit**2 / 3, rel=0.15 if w.size < 2000 else 0.02)
        assert not b.any()
    assert net.n_params == 543_860
    again = N.NumpyMLP(SIZES, "relu", seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(net.params, again.params))


def test_reports_carry_the_contract_steps_and_confusion_matrices(make_splits):
    train, test = make_splits(256, 100)
    cfg = N.NumpyMLPConfig(**N.validate({"hidden": [32], "epochs": 3, "log_every_steps": 3, "train_size": 256}))
    rows, states = [], []
    net = N.NumpyMLP([784, 32, 10], cfg.activation, seed=0)
    splits = {"train": N.ArraySplit(train), "test": N.ArraySplit(test)}
    N.run(cfg, net, splits, lambda m, s: (rows.append(m), states.append(copy.deepcopy(s))))
    assert [r["epoch"] for r in rows] == [1, 2, 3] and [r["step"] for r in rows] == [4, 8, 12]
    assert [r["steps"]["step"] for r in rows] == [[1, 3], [6], [9, 12]]  # step 1, then every 3rd
    for key in ("train_loss", "train_acc", "test_loss", "test_acc", "gap_acc", "gap_loss", "weight_norm",
                "grad_norm", "time_s"):
        assert np.isfinite(rows[-1][key]), key
    assert [r["status"] for r in rows] == ["running", "running", "ok"]
    last = rows[-1]
    confusion, train_confusion = np.array(last["confusion"]), np.array(last["train_confusion"])
    assert confusion.shape == (10, 10) and confusion.sum() == 100 and train_confusion.sum() == 256
    assert np.trace(confusion) / 100 == pytest.approx(last["test_acc"])
    assert np.trace(train_confusion) / 256 == pytest.approx(last["train_acc"])
    assert "confusion" not in rows[0]  # only with the last evaluation

    # resuming from the first epoch's state repeats epochs 2-3 exactly
    resumed_rows = []
    N.run(cfg, N.NumpyMLP([784, 32, 10], cfg.activation, seed=99), splits, lambda m, s: resumed_rows.append(m),
          resume=states[0])
    assert [r["epoch"] for r in resumed_rows] == [2, 3]
    for a, b in zip(rows[1:], resumed_rows):
        assert a["train_loss"] == b["train_loss"] and a["steps"] == b["steps"]


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError) as err:
        N.validate({"activation": "gelu"})
    assert err.value.key == "activation"
    with pytest.raises(ConfigError) as err:
        N.validate({"train_size": 32, "batch_size": 64})  # the classifier family's data check
    assert err.value.key == "batch_size"
    with pytest.raises(ConfigError) as err:
        N.validate({"momentum": 0.9})  # plain gradient descent only
    assert err.value.key == "momentum"
    assert N.validate({})["model"] == "numpy_mlp"


def test_classification_report_of_a_known_confusion_matrix():
    # 3 classes: class 0 all right; class 1: 3 of 4 right, 1 read as 2; class 2 never predicted right
    confusion = np.array([[5, 0, 0], [0, 3, 1], [0, 2, 0]])
    table = classification_report(confusion).set_index("class")
    assert table.loc["0", ["precision", "recall", "f1"]].tolist() == [1.0, 1.0, 1.0]
    assert table.loc["1", "precision"] == pytest.approx(3 / 5) and table.loc["1", "recall"] == pytest.approx(3 / 4)
    assert table.loc["1", "f1"] == pytest.approx(2 * 0.6 * 0.75 / 1.35)
    assert table.loc["2", ["precision", "recall", "f1"]].tolist() == [0.0, 0.0, 0.0]
    assert table.loc["2", "support"] == 2 and table.loc["macro avg", "support"] == 11
    assert table.loc["macro avg", "recall"] == pytest.approx((1 + 0.75 + 0) / 3)


def test_running_mean_smooths_and_keeps_the_ends():
    assert np.allclose(running_mean(np.array([0.0, 3.0, 0.0, 3.0, 0.0]), 3), [1.5, 1.0, 2.0, 1.0, 1.5])
    assert np.array_equal(running_mean(np.array([1.0, 2.0]), 5), [1.0, 2.0])


def test_spec_compares_three_activations_of_the_issues_network():
    full = load_study(REPO / "sweeps/numpy_mlp.yaml")
    assert sorted({c["activation"] for c in full.cells}) == sorted(ACTIVATIONS)
    assert {(tuple(c["hidden"]), c["lr"], c["batch_size"], c["epochs"]) for c in full.cells} == {((500, 250, 100), 0.01, 64, 15)}
    for profile in ("quick", "smoke"):
        study = load_study(REPO / "sweeps/numpy_mlp.yaml", profile)
        assert study.spec.description and len(study.cells) <= 6
