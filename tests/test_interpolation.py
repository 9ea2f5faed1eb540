"""trainables/interpolation.py: the endpoints of the line are A and B (weights and
metrics), the alpha grid, the interpolated weights, BatchNorm statistics, the loss
barrier, resuming without duplicate rows, config errors naming the key, and the
spec's profiles."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from sweeps.schema import load_study
from sweeps.specyaml import SpecError
from trainables import data as D
from trainables.families import get_family
from trainables import interpolation as I
from trainables.errors import ConfigError
from trainables.models import build_model

REPO = Path(__file__).resolve().parent.parent
TINY = {"train_size": 256, "test_size": 200, "epochs": 2, "batch_size_a": 32, "batch_size_b": 128,
        "channels": [4, 8], "alphas": {"start": -1, "stop": 2, "num": 7}, "seed": 0}
METRICS = ["train_loss", "train_acc", "test_loss", "test_acc"]


@pytest.fixture(scope="module")
def dataset(mnist) -> D.ImageData:
    return mnist


def setup(dataset, **changes):
    config = {k: v for k, v in {**TINY, **changes}.items() if v is not None}  # None drops a key
    cfg, model_args = I._parse(I.validate(config))
    return cfg, model_args, I.make_splits(dataset, cfg, torch.device("cpu"))


def record(cfg, model_args, splits, resume=None, stop_after: int | None = None):
    """run() with a recording reporter: (rows, deep-copied states). With stop_after,
    the trial "crashes" right after that many reports (as a killed worker would)."""
    rows, states = [], []

    class Crash(Exception):
        pass

    def report(row: dict, state: dict | None) -> None:
        rows.append(dict(row))
        states.append(copy.deepcopy(state))  # Tune saves it at once; the live tensors move on
        if stop_after is not None and len(rows) == stop_after:
            raise Crash

    try:
        I.run(cfg, model_args, splits, report, resume=resume)
    except Crash:
        pass
    return rows, states


@pytest.fixture(scope="module")
def trial(dataset):
    cfg, model_args, splits = setup(dataset)
    rows, states = record(cfg, model_args, splits)
    return cfg, model_args, splits, rows, states


def line(rows):
    return [r for r in rows if r["phase"] == "interpolation"]


def test_rows_come_in_phases_with_each_solutions_settings(trial):
    cfg, _, _, rows, _ = trial
    assert [r["phase"] for r in rows] == ["A"] * 2 + ["B"] * 2 + ["interpolation"] * 7
    assert [r["epoch"] for r in rows] == [1, 2, 1, 2] + [2] * 7
    assert {(r["lr"], r["batch_size"]) for r in rows if r["phase"] == "A"} == {(1e-3, 32)}
    assert {(r["lr"], r["batch_size"]) for r in rows if r["phase"] == "B"} == {(1e-2, 128)}
    # only the very last row ends the trial; time accumulates over the phases
    assert [r["status"] for r in rows] == ["running"] * 10 + ["ok"]
    assert all(b["time_s"] >= a["time_s"] for a, b in zip(rows, rows[1:]))
    for r in line(rows):
        assert r["gap_acc"] == pytest.approx(r["train_acc"] - r["test_acc"])
        assert r["gap_loss"] == pytest.approx(r["test_loss"] - r["train_loss"])


def test_alpha_0_and_1_reproduce_the_final_evaluations_of_A_and_B(trial):
    _, _, _, rows, _ = trial
    final_a = [r for r in rows if r["phase"] == "A"][-1]
    final_b = [r for r in rows if r["phase"] == "B"][-1]
    at = {r["alpha"]: r for r in line(rows)}
    for key in [*METRICS, "weight_norm"]:
        assert at[0.0][key] == pytest.approx(final_a[key], rel=1e-6, abs=1e-9), key
        assert at[1.0][key] == pytest.approx(final_b[key], rel=1e-6, abs=1e-9), key
    # the two solutions really differ, so the check above is not vacuous
    assert final_a["train_loss"] != pytest.approx(final_b["train_loss"], rel=1e-3)


def test_the_last_row_summarizes_the_endpoints(trial):
    _, _, _, rows, _ = trial
    last = rows[-1]
    final_a = [r for r in rows if r["phase"] == "A"][-1]
    final_b = [r for r in rows if r["phase"] == "B"][-1]
    for key in METRICS:
        assert last[f"a_{key}"] == final_a[key] and last[f"b_{key}"] == final_b[key], key
    # what the report's table shows for this family
    assert set(get_family("interpolation").summary_metrics) <= set(last)


def test_the_alpha_grid_has_the_requested_points(trial):
    _, _, _, rows, _ = trial
    assert [r["alpha"] for r in line(rows)] == [-1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0]
    grid = I.alpha_grid({"start": -1, "stop": 2, "num": 31})
    assert len(grid) == 31 and grid[0] == -1.0 and grid[-1] == 2.0
    assert np.allclose(np.diff(grid), 0.1) and 0.0 in grid and 1.0 in grid and 0.3 in grid
    assert I.alpha_grid({}) == grid  # the default
    assert I.alpha_grid([0, 1, 0.25]) == [0.0, 1.0, 0.25]
    assert len(I.validate({})["alphas"]) == 31


def test_interpolated_weights_are_the_convex_combination(trial):
    _, _, _, rows, states = trial
    theta_a, theta_b = states[-1]["done"]["A"]["weights"], states[-1]["done"]["B"]["weights"]
    mixed = I.interpolate(theta_a, theta_b, 0.3)
    key = "0.weight"  # the first convolution
    assert torch.allclose(mixed[key], 0.7 * theta_a[key] + 0.3 * theta_b[key], atol=1e-7)
    assert not torch.allclose(theta_a[key], theta_b[key])
    assert all(torch.equal(I.interpolate(theta_a, theta_b, 0.0)[k], theta_a[k]) for k in theta_a)
    assert all(torch.equal(I.interpolate(theta_a, theta_b, 1.0)[k], theta_b[k]) for k in theta_a)
    # the reported row at alpha = -1 was evaluated with 2A - B (its weight norm says so)
    far = {k: 2 * theta_a[k] - theta_b[k] for k in theta_a}
    norm = math.sqrt(sum(float(v.square().sum()) for v in far.values()))
    assert line(rows)[0]["weight_norm"] == pytest.approx(norm, rel=1e-5)


def test_same_init_starts_B_where_A_started(dataset):
    cfg, model_args, _ = setup(dataset)
    a, b = I.new_model(cfg, model_args, "A", "cpu"), I.new_model(cfg, model_args, "B", "cpu")
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    cfg2, _, _ = setup(dataset, same_init=False)
    b2 = I.new_model(cfg2, model_args, "B", "cpu")
    assert not torch.equal(next(a.parameters()), next(b2.parameters()))


def test_loss_barrier_and_distance(trial):
    # the chord from L(0) = 1 to L(1) = 3 passes 2 at alpha 0.5; the loss there is 4
    assert I.loss_barrier([0.0, 0.5, 1.0], [1.0, 4.0, 3.0]) == pytest.approx(2.0)
    # below the chord everywhere: 0 (the endpoints); points outside [0, 1] do not count
    assert I.loss_barrier([-1.0, 0.0, 0.5, 1.0, 2.0], [9.0, 1.0, 1.5, 3.0, 9.0]) == 0.0
    assert math.isnan(I.loss_barrier([0.0, 0.5], [1.0, 2.0]))
    _, _, _, rows, states = trial
    last = rows[-1]
    at = {r["alpha"]: r["test_loss"] for r in line(rows)}
    chord = 0.5 * (at[0.0] + at[1.0])
    assert last["barrier_test_loss"] == pytest.approx(max(0.0, at[0.5] - chord))
    theta_a, theta_b = states[-1]["done"]["A"]["weights"], states[-1]["done"]["B"]["weights"]
    diff = math.sqrt(sum(float((theta_b[k] - theta_a[k]).square().sum()) for k in theta_a))
    assert last["distance_ab"] == pytest.approx(diff, rel=1e-5)


@pytest.mark.parametrize("crash_after", [1, 3, 6])  # in A, in B, on the line
def test_a_restarted_trial_continues_without_duplicates(trial, crash_after):
    """Tune numbers reports and restores that count with the checkpoint; collect.py
    keeps the last report per number. A restart must re-report exactly the rows after
    its checkpoint, with the same numbers, so the deduplicated history is the
    uninterrupted one."""
    cfg, model_args, splits, full, _ = trial
    before, states = record(cfg, model_args, splits, stop_after=crash_after)
    after, _ = record(cfg, model_args, splits, resume=states[-1])
    history = {i + 1: r for i, r in enumerate(before)}  # training_iteration -> row
    history.update({crash_after + 1 + i: r for i, r in enumerate(after)})
    rows = [history[i] for i in sorted(history)]
    assert len(rows) == len(full)
    for got, want in zip(rows, full):
        assert (got["phase"], got["epoch"], got.get("alpha")) == (want["phase"], want["epoch"], want.get("alpha"))
        assert [got[k] for k in METRICS] == pytest.approx([want[k] for k in METRICS], rel=1e-6)
    assert rows[-1]["barrier_train_loss"] == pytest.approx(full[-1]["barrier_train_loss"], rel=1e-6, abs=1e-9)


def test_batchnorm_statistics_are_recomputed_for_the_interpolated_net(dataset):
    cfg, _, splits = setup(dataset, model="cnn_overparam", width=0.125, head=8, channels=None)
    torch.manual_seed(0)
    model = build_model("cnn_overparam", width=0.125, head=8)
    train = splits["train"]
    model.eval()
    I.recompute_batchnorm(model, train, batch_size=64)  # 256 images: four equal batches
    with torch.no_grad():
        conv1 = model[0](train.inputs(train.idx))
    bn = model[1]
    assert torch.allclose(bn.running_mean, conv1.mean(dim=(0, 2, 3)), atol=1e-5)
    assert torch.allclose(bn.running_var, conv1.var(dim=(0, 2, 3)), rtol=0.02)  # mean of batch variances
    # momentum and modes are put back: the model is still in eval mode, all of it
    assert bn.momentum == 0.1 and not any(m.training for m in model.modules())


def test_config_errors_name_the_key():
    cases = {
        "lr": ({"lr": 0.1}, "lr_a and lr_b"),
        "batch_size": ({"batch_size": 64}, "batch_size_a and batch_size_b"),
        "max_steps": ({"max_steps": 100}, "epochs"),
        "lr_aa": ({"lr_aa": 0.1}, "did you mean 'lr_a'"),
        "lr_b": ({"lr_b": -1}, "greater than 0"),
        "batch_size_b": ({"train_size": 500, "batch_size_b": 1024}, "larger than the training subset"),
        "alphas.num": ({"alphas": {"start": 0, "stop": 1, "num": 1}}, "greater than or equal to 2"),
        "alphas.stop": ({"alphas": {"start": 1, "stop": 0}}, "above start"),
        "alphas.step": ({"alphas": {"step": 0.1}}, "unknown key"),
        "alphas[1]": ({"alphas": [0, "x"]}, "finite number"),
        "alphas[2]": ({"alphas": [0, 1, 1.0]}, "twice"),
        "alphas": ({"alphas": 3}, "a list of numbers or {start, stop, num}"),
        "model": ({"model": "cnn_smal"}, "did you mean 'cnn_small'"),
        "same_init": ({"same_init": "maybe"}, "boolean"),
    }
    for key, (config, message) in cases.items():
        with pytest.raises(ConfigError) as err:
            I.validate(config)
        assert err.value.key == key and message in err.value.message, (key, str(err.value))


def test_spec_errors_point_into_the_spec(tmp_path):
    spec = (REPO / "sweeps" / "interpolation.yaml").read_text().replace("  epochs: 6\n", "  epochs: 6\n  lr: 0.01\n")
    path = tmp_path / "bad.yaml"
    path.write_text(spec)
    with pytest.raises(SpecError, match=r"fixed\.lr: the interpolation family trains two solutions; set lr_a and lr_b"):
        load_study(path)
    path.write_text(spec.replace("  lr: 0.01\n", "").replace("num: 31", "num: 1"))
    with pytest.raises(SpecError, match=r"fixed\.alphas\.num: "):
        load_study(path)


def test_the_profiles_load():
    smoke = load_study(REPO / "sweeps" / "interpolation.yaml", "smoke")
    assert smoke.spec.family == "interpolation" and 2 <= len(smoke.cells) <= 4
    assert all(c["model"] == "cnn_small" and len(c["alphas"]) == 7 and c["epochs"] == 1 for c in smoke.cells)
    assert all("lr" not in c and "batch_size" not in c for c in smoke.cells)
    quick = load_study(REPO / "sweeps" / "interpolation.yaml", "quick")
    assert all(len(c["alphas"]) == 31 and c["alphas"][10] == 0.0 and c["alphas"][20] == 1.0 for c in quick.cells)
    assert {(c["batch_size_a"], c["lr_a"], c["batch_size_b"], c["lr_b"], c["optimizer"]) for c in quick.cells} == \
        {(64, 1e-3, 1024, 1e-2, "adam")}
    assert [f.kind for f in quick.spec.figures] == ["interpolation", "interpolation_training"]
