"""Per-step records: the engine's `log_every_steps` (values with known answers, no
change to training), their expansion into steps.parquet by analysis.collect /
analysis.report, and the `steps` figure."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch.nn import functional as F

from analysis.collect import collect_tables
from analysis.report import write_report
from trainables import function_fit as ff
from trainables.engine import EngineConfig, fit
from trainables.models import build_model

CPU = torch.device("cpu")


def regression_run(log_every_steps: int = 0, seed: int = 0, **cfg) -> list[dict]:
    train = ff.split_of(ff.sample(120, seed=0), "sinc", CPU)
    test = ff.split_of(ff.grid(50), "sinc", CPU)
    torch.manual_seed(seed)
    model = ff.regression_mlp([8, 8])
    reports: list[dict] = []
    config = {"criterion": "mse", "optimizer": "adam", "lr": 0.01, "batch_size": 40, "epochs": 5, "seed": seed,
              "log_every_steps": log_every_steps, **cfg}
    fit(model, train, {"test": test}, EngineConfig(**config), lambda m, s: reports.append(copy.deepcopy(m)))
    return reports


def test_off_by_default_and_no_change_to_training():
    plain = regression_run()
    logged = regression_run(log_every_steps=2)
    assert all("steps" not in r for r in plain)
    assert all("steps" in r for r in logged)
    strip = lambda rs: [{k: v for k, v in r.items() if k not in ("steps", "time_s")} for r in rs]  # noqa: E731
    assert strip(plain) == strip(logged)


def test_steps_logged_are_1_and_every_nth_and_each_report_carries_its_own():
    reports = regression_run(log_every_steps=2)  # 3 steps per epoch, 5 epochs: steps 1..15
    assert [r["step"] for r in reports] == [3, 6, 9, 12, 15]
    assert [r["steps"]["step"] for r in reports] == [[1, 2], [4, 6], [8], [10, 12], [14]]
    for r in reports:
        records = r["steps"]
        assert set(records) == {"step", "loss", "grad_norm"}
        assert len(records["loss"]) == len(records["grad_norm"]) == len(records["step"])
        assert all(isinstance(v, float) and v > 0 for v in records["loss"] + records["grad_norm"])


def test_with_eval_every_the_records_wait_for_the_next_report():
    reports = regression_run(log_every_steps=1, eval_every=2)  # reports after epochs 2, 4, 5
    assert [r["steps"]["step"] for r in reports] == [list(range(1, 7)), list(range(7, 13)), [13, 14, 15]]


def test_logged_values_are_the_steps_loss_and_gradient_norm():
    # Full batch: step 1's loss is the initial model's training MSE and its gradient
    # norm the full-batch gradient's; every step logged: their means are the epoch's
    # running_loss and grad_norm.
    train = ff.split_of(ff.sample(64, seed=0), "sinc", CPU)
    torch.manual_seed(0)
    model = ff.regression_mlp([8])
    loss = F.mse_loss(model(train.x), train.y)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    expected_norm = float(torch.sqrt(sum(g.square().sum() for g in grads)))
    reports: list[dict] = []
    cfg = EngineConfig(criterion="mse", optimizer="adam", lr=0.01, batch_size=64, epochs=6, eval_every=3,
                       log_every_steps=1)
    fit(model, train, {}, cfg, lambda m, s: reports.append(m))
    first = reports[0]["steps"]
    assert first["loss"][0] == pytest.approx(float(loss.detach()), rel=1e-6)
    assert first["grad_norm"][0] == pytest.approx(expected_norm, rel=1e-5)
    # one step per epoch: a report's running_loss and grad_norm are its last step's
    for r in reports:
        assert r["running_loss"] == pytest.approx(r["steps"]["loss"][-1], rel=1e-6)
        assert r["grad_norm"] == pytest.approx(r["steps"]["grad_norm"][-1], rel=1e-6)


def test_a_classifier_logs_the_same_way_and_trains_the_same(make_splits):
    train, test = make_splits(128, 64)

    def run(every: int) -> list[dict]:
        torch.manual_seed(0)
        model = build_model("mlp", hidden=[16])
        out: list[dict] = []
        fit(model, train, {"test": test}, EngineConfig(lr=0.05, batch_size=32, epochs=2, log_every_steps=every),
            lambda m, s: out.append(copy.deepcopy(m)))
        return out

    plain, logged = run(0), run(1)
    assert [r["steps"]["step"] for r in logged] == [[1, 2, 3, 4], [5, 6, 7, 8]]
    assert sum(logged[0]["steps"]["loss"]) / 4 == pytest.approx(logged[0]["running_loss"], rel=1e-6)
    assert sum(logged[0]["steps"]["grad_norm"]) / 4 == pytest.approx(logged[0]["grad_norm"], rel=1e-6)
    assert [r["test_acc"] for r in plain] == [r["test_acc"] for r in logged]
    assert [r["train_loss"] for r in plain] == [r["train_loss"] for r in logged]


# ---------------------------------------------------------------------------
# steps.parquet


def write_study(folder: Path, trials: dict[str, tuple[dict, list[dict]]]) -> None:
    """A study folder as a run leaves it: study.json, and per trial Tune's
    params.json and result.json (one JSON report per line, numbered)."""
    figure = {"kind": "steps", "y": [], "x": None, "hue": "lr", "col": None, "logx": False, "logy": True,
              "title": None, "options": {}}
    spec = {"name": "t", "family": "function_fit", "description": "", "fixed": {}, "grid": {"lr": [0.01, 0.003]},
            "search": None, "seeds": [0], "figures": [figure]}
    (folder / "study.json").write_text(json.dumps({"spec": spec, "profile": None, "study": "t", "source": "t.yaml",
                                                   "n_cells": len(trials), "provenance": {}}))
    for trial_id, (config, reports) in trials.items():
        trial_dir = folder / "tune" / trial_id
        trial_dir.mkdir(parents=True)
        (trial_dir / "params.json").write_text(json.dumps({"cell": config}))
        lines = [json.dumps({**r, "training_iteration": i + 1, "n_params": 97}) for i, r in enumerate(reports)]
        (trial_dir / "result.json").write_text("\n".join(lines) + "\n")


def test_collect_expands_steps_into_their_own_table(tmp_path):
    a = regression_run(log_every_steps=1, lr=0.01)
    b = regression_run(log_every_steps=5, lr=0.003)
    write_study(tmp_path, {"t_00000": ({"lr": 0.01, "seed": 0, "hidden": [8, 8]}, a),
                           "t_00001": ({"lr": 0.003, "seed": 0, "hidden": [8, 8]}, b)})
    history, trials, steps = collect_tables(tmp_path)
    assert "steps" not in history and "final_steps" not in trials
    assert len(history) == 10
    assert list(steps.columns[:4]) == ["trial_id", "step", "loss", "grad_norm"]
    assert {"lr", "seed", "hidden"} <= set(steps.columns)
    by_trial = steps.groupby("trial_id")["step"].apply(list).to_dict()
    assert by_trial["t_00000"] == list(range(1, 16))
    assert by_trial["t_00001"] == [1, 5, 10, 15]
    assert (steps.loc[steps["trial_id"] == "t_00001", "lr"] == 0.003).all()
    assert (steps.loc[steps["trial_id"] == "t_00000", "hidden"] == "8-8").all()  # lists as in history
    flat = [v for r in a for v in r["steps"]["loss"]]
    assert steps.loc[steps["trial_id"] == "t_00000", "loss"].tolist() == pytest.approx(flat)


def test_a_re_reported_iteration_keeps_only_its_last_steps(tmp_path):
    reports = regression_run(log_every_steps=1)
    trial_dir = tmp_path / "tune" / "t_00000"
    write_study(tmp_path, {"t_00000": ({"lr": 0.01, "seed": 0}, reports)})
    # a restart re-reports iteration 2 (same steps, as after a restore from a checkpoint)
    again = {**reports[1], "training_iteration": 2, "n_params": 97}
    with open(trial_dir / "result.json", "a") as fh:
        fh.write(json.dumps(again) + "\n")
    _, _, steps = collect_tables(tmp_path)
    assert steps["step"].tolist() == list(range(1, 16))


def test_no_steps_no_table(tmp_path):
    write_study(tmp_path, {"t_00000": ({"lr": 0.01, "seed": 0}, regression_run())})
    _, _, steps = collect_tables(tmp_path)
    assert steps.empty


def test_report_writes_steps_parquet_and_the_steps_figure(tmp_path):
    write_study(tmp_path, {
        "t_00000": ({"lr": 0.01, "seed": 0}, regression_run(log_every_steps=1, lr=0.01)),
        "t_00001": ({"lr": 0.003, "seed": 0}, regression_run(log_every_steps=1, lr=0.003)),
    })
    write_report(tmp_path)
    steps = pd.read_parquet(tmp_path / "steps.parquet")
    assert len(steps) == 30 and steps["trial_id"].nunique() == 2
    assert "steps" not in pd.read_parquet(tmp_path / "history.parquet")
    png = tmp_path / "report" / "01-steps.png"
    assert png.exists() and png.stat().st_size > 10_000
    assert "01-steps.png" in (tmp_path / "report" / "index.html").read_text()
