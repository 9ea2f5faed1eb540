"""trainables.engine.fit on a tiny real-MNIST subset: learning, determinism,
divergence, exact resume, L2 modes, evaluation schedule and the metric contract."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from trainables import data as D
from trainables.engine import EngineConfig, evaluate, fit
from trainables.models import build_model

CONTRACT_KEYS = ["train_loss", "train_acc", "test_loss", "test_acc", "gap_acc", "gap_loss",
                 "weight_norm", "grad_norm", "time_s", "epoch"]

MLP = ("mlp", {"hidden": [32]})
CNN = ("cnn_overparam", {"width": 0.125, "head": 16})


@pytest.fixture(scope="module")
def splits(make_splits) -> tuple[D.Split, D.Split]:
    return make_splits(256, 256)


def new_model(spec=MLP, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)  # initialization, as classifier.train does
    name, args = spec
    return build_model(name, **args)


def run(splits, spec=MLP, resume=None, model=None, **cfg) -> tuple[str, list[dict], list[dict | None]]:
    """fit with a recording callback: (status, metrics per report, deep-copied states)."""
    train, test = splits
    cfg = {"lr": 0.05, "batch_size": 32, "epochs": 3, **cfg}
    if model is None:
        model = new_model(spec, cfg.get("seed", 0))
    metrics, states = [], []

    def on_epoch(m: dict, state: dict | None) -> None:
        metrics.append(dict(m))
        states.append(copy.deepcopy(state))

    status = fit(model, train, {"test": test}, EngineConfig(**cfg), on_epoch, resume=resume)
    return status, metrics, states


def without_time(metrics: list[dict]) -> list[dict]:
    return [{k: v for k, v in m.items() if k != "time_s"} for m in metrics]


@pytest.mark.parametrize("spec", [MLP, CNN], ids=["mlp", "cnn"])
def test_loss_falls_and_accuracy_rises(splits, spec):
    train, _ = splits
    initial_loss, initial_acc = evaluate(new_model(spec), train, 256)
    assert 2.0 < initial_loss < 2.7 and initial_acc < 0.3  # chance level at initialization
    status, metrics, states = run(splits, spec, lr=0.02)
    assert status == "ok"
    assert [m["epoch"] for m in metrics] == [1, 2, 3]
    assert [m["step"] for m in metrics] == [8, 16, 24]  # 256 images / batch 32
    assert [m["status"] for m in metrics] == ["running", "running", "ok"]
    final = metrics[-1]
    assert final["train_loss"] < 0.6 * initial_loss
    assert final["train_acc"] > initial_acc + 0.3
    assert final["test_acc"] > 0.4
    assert all(s is not None and s["epoch"] == m["epoch"] for m, s in zip(metrics, states))


def test_metrics_follow_the_output_contract(splits):
    status, metrics, _ = run(splits, CNN)
    assert status == "ok"
    for m in metrics:
        missing = [k for k in CONTRACT_KEYS if k not in m]
        assert not missing, missing
        for key in ("train_acc", "test_acc"):
            assert 0.0 <= m[key] <= 1.0
            assert (m[key] * 256) == pytest.approx(round(m[key] * 256))  # a fraction of 256 images
        assert m["gap_acc"] == m["train_acc"] - m["test_acc"]
        assert m["gap_loss"] == m["test_loss"] - m["train_loss"]
        assert m["train_loss"] > 0 and m["test_loss"] > 0
        assert m["weight_norm"] > 0 and m["grad_norm"] > 0
        assert all(math.isfinite(m[k]) for k in CONTRACT_KEYS)
        assert m["time_s"] >= 0
        assert isinstance(m["epoch"], int)
    times = [m["time_s"] for m in metrics]
    assert times == sorted(times)  # cumulative


def test_same_seed_gives_identical_metrics(splits):
    _, first, _ = run(splits, CNN, seed=1)
    _, second, _ = run(splits, CNN, seed=1)
    assert without_time(first) == without_time(second)


def test_different_seed_gives_different_metrics(splits):
    _, first, _ = run(splits, MLP, seed=0)
    _, other, _ = run(splits, MLP, seed=1)
    assert len(first) == len(other) == 3
    assert first[-1]["train_loss"] != other[-1]["train_loss"]
    assert first[-1]["weight_norm"] != other[-1]["weight_norm"]


def test_data_order_seed_alone_changes_training(splits):
    # Same initialization, different EngineConfig.seed: only the data order (and
    # dropout) differ, and that must change the result.
    _, a, _ = run(splits, MLP, model=new_model(MLP, 0), seed=0)
    _, b, _ = run(splits, MLP, model=new_model(MLP, 0), seed=5)
    assert a[0]["train_loss"] != b[0]["train_loss"]


@pytest.mark.parametrize("lr", [1e6, 1e4])
def test_divergence_is_reported_not_raised(splits, lr):
    status, metrics, states = run(splits, MLP, optimizer="sgd", lr=lr, epochs=5)
    assert status == "diverged"
    last = metrics[-1]
    assert last["status"] == "diverged"
    assert states[-1] is None
    assert all(m["status"] == "running" for m in metrics[:-1])
    assert last["epoch"] < 5
    for key in ("train_loss", "train_acc", "test_loss", "test_acc", "gap_acc", "gap_loss", "weight_norm", "grad_norm"):
        assert key in last and math.isnan(last[key]), key
    assert math.isfinite(last["time_s"])


@pytest.mark.parametrize(
    "spec, cfg",
    [
        (CNN, {"optimizer": "sgd", "momentum": 0.9, "weight_decay": 1e-3}),  # BatchNorm buffers, momentum
        (("mlp", {"hidden": [32], "dropout": 0.3}), {"optimizer": "adam", "lr": 0.003}),  # dropout RNG, Adam state
    ],
    ids=["cnn-sgd", "mlp-dropout-adam"],
)
def test_resume_from_a_state_continues_exactly(splits, spec, cfg):
    status, full, states = run(splits, spec, **cfg)
    assert status == "ok" and [m["epoch"] for m in full] == [1, 2, 3]
    after_epoch_1 = states[0]
    assert after_epoch_1["epoch"] == 1 and after_epoch_1["steps"] == 8

    # Scramble the global RNG and start from a differently initialized model: the
    # state alone must determine what follows.
    torch.manual_seed(12345)
    fresh = new_model(spec, seed=99)
    status, resumed, resumed_states = run(splits, spec, model=fresh, resume=after_epoch_1, **cfg)
    assert status == "ok"
    assert [m["epoch"] for m in resumed] == [2, 3]
    assert without_time(resumed) == without_time(full[1:])
    assert resumed[-1]["time_s"] >= after_epoch_1["elapsed_s"]
    final_full, final_resumed = states[-1]["model"], resumed_states[-1]["model"]
    assert final_full.keys() == final_resumed.keys()
    assert all(torch.equal(final_full[k], final_resumed[k]) for k in final_full)


def test_l2_penalty_and_optimizer_decay_both_shrink_weights(splits):
    norms = {}
    for name, cfg in {"none": {"weight_decay": 0.0},
                      "optimizer": {"weight_decay": 0.05, "l2_mode": "optimizer"},
                      "penalty": {"weight_decay": 0.05, "l2_mode": "penalty"},
                      "penalty_zero": {"weight_decay": 0.0, "l2_mode": "penalty"}}.items():
        status, metrics, _ = run(splits, MLP, **cfg)
        assert status == "ok"
        norms[name] = metrics[-1]["weight_norm"]
    assert norms["optimizer"] < 0.9 * norms["none"]
    assert norms["penalty"] < 0.9 * norms["none"]
    # The penalty's gradient is 2*lambda*w (the optimizer's is lambda*w): it shrinks more.
    assert norms["penalty"] < norms["optimizer"]
    assert norms["penalty_zero"] == norms["none"]


def test_penalty_mode_reports_the_data_loss_not_the_objective(splits):
    # running_loss is the mean minibatch cross-entropy; with a huge penalty the
    # objective would be far above log(10) but the reported loss must not be.
    _, metrics, _ = run(splits, MLP, weight_decay=0.5, l2_mode="penalty", lr=0.01, epochs=1)
    assert metrics[0]["running_loss"] < 3.0


def test_eval_every_reports_only_evaluation_epochs(splits):
    status, metrics, states = run(splits, MLP, eval_every=2, epochs=3)
    assert status == "ok"
    assert [m["epoch"] for m in metrics] == [2, 3]
    assert [m["step"] for m in metrics] == [16, 24]
    assert [m["status"] for m in metrics] == ["running", "ok"]
    assert [s["epoch"] for s in states] == [2, 3]
    # Skipping an evaluation does not change training.
    _, every, _ = run(splits, MLP, eval_every=1, epochs=3)
    assert without_time(metrics) == without_time(every[1:])


def test_last_partial_batch_is_trained_on(splits):
    # 256 images in batches of 100: 3 steps per epoch (100, 100, 56).
    _, metrics, _ = run(splits, MLP, batch_size=100, epochs=2)
    assert [m["step"] for m in metrics] == [3, 6]
