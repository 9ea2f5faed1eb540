"""The critical_points family: the exact Hessian and the minimal ratio on functions
whose Hessian is known, the engine's gradient-norm objective and stopping rule, and
one tiny trial end to end (both phases, then the analysis)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from trainables import critical_points as cp
from trainables import function_fit as ff
from trainables.engine import EngineConfig, fit
from trainables.errors import ConfigError

CPU = torch.device("cpu")


def test_hessian_of_a_quadratic_is_its_matrix():
    # f(theta) = 1/2 theta^T A theta + b^T theta: H = A (A symmetric)
    a = torch.tensor([[2.0, 0.5, 0.0], [0.5, -1.0, 0.3], [0.0, 0.3, 4.0]], dtype=torch.float64)
    b = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    theta = torch.tensor([0.3, -0.7, 1.1], dtype=torch.float64)
    h = cp.hessian_of(lambda t: 0.5 * t @ a @ t + b @ t, theta)
    assert torch.allclose(h, a, atol=1e-12)


def test_minimal_ratio_counts_positive_eigenvalues():
    assert cp.minimal_ratio(torch.tensor([1.0, -2.0, 3.0])) == pytest.approx(2 / 3)
    assert cp.minimal_ratio(torch.tensor([1.0, 2.0, 3.0, 4.0])) == 1.0  # a strict minimum
    assert cp.minimal_ratio(torch.tensor([-1.0, -2.0])) == 0.0  # a maximum
    # zero (flat) is not positive; a rounding-level value is not either, with the tolerance
    eig = torch.tensor([-3e-16, 0.0, 2e-16, 1.0], dtype=torch.float64)
    assert cp.minimal_ratio(eig) == 0.5
    tol = cp.zero_tolerance(eig)
    assert tol == pytest.approx(4 * torch.finfo(torch.float64).eps)
    assert cp.minimal_ratio(eig, tol) == 0.25


def test_hessian_of_a_linear_model_with_mse_is_2_xtx_over_n():
    # y_hat = w x + b on 1-D inputs: L = mean((w x + b - y)^2), H = 2 X^T X / n with X = [x, 1]
    x = ff.sample(50, seed=1)
    y = torch.sin(3 * x)
    torch.manual_seed(0)
    model = nn.Linear(1, 1).double()
    loss = cp.loss_of_flat(model, x, y)
    theta = cp.flat_params(model)
    design = torch.cat([x, torch.ones_like(x)], dim=1)
    expected = 2 * design.T @ design / len(x)
    assert torch.allclose(cp.hessian_of(loss, theta), expected, atol=1e-12)
    # loss_of_flat is the model's MSE at theta, and a different theta is a different model
    assert float(loss(theta)) == pytest.approx(float(((model(x) - y) ** 2).mean().detach()), rel=1e-12)
    assert float(loss(torch.zeros(2, dtype=torch.float64))) == pytest.approx(float((y ** 2).mean()), rel=1e-12)


def test_analyse_a_linear_model_at_its_least_squares_solution():
    # At the least-squares fit the gradient is 0 and H = 2 X^T X / n is positive definite.
    x = ff.grid(40)
    split = ff.split_of(x, "sinc", CPU, torch.float64)
    design = torch.cat([x, torch.ones_like(x)], dim=1)
    solution = torch.linalg.lstsq(design, split.y).solution.squeeze(1)
    model = nn.Linear(1, 1).double()
    with torch.no_grad():
        model.weight.fill_(float(solution[0]))
        model.bias.fill_(float(solution[1]))
    result = cp.analyse(model, split)
    assert result["grad_norm_exact"] < 1e-12
    assert result["minimal_ratio"] == 1.0 and result["n_positive"] == 2 and result["n_negative"] == 0
    eigenvalues = torch.linalg.eigvalsh(2 * design.T @ design / len(x))
    assert result["eigenvalues"] == pytest.approx(eigenvalues.tolist(), rel=1e-10)
    assert result["eig_min"] == pytest.approx(float(eigenvalues[0]), rel=1e-10)
    assert result["critical_loss"] == pytest.approx(float(((design @ solution.unsqueeze(1) - split.y) ** 2).mean()))


def test_analyse_finds_a_saddle():
    # f(x) = w2 * w1 * x with w1 = w2 = 0 fitting y = x: H = [[0, -2m], [-2m, 0]] with
    # m = mean(x y) = mean(x^2) > 0, eigenvalues -2m and +2m: a saddle, ratio 1/2.
    model = nn.Sequential(nn.Linear(1, 1, bias=False), nn.Linear(1, 1, bias=False)).double()
    with torch.no_grad():
        for layer in model:
            layer.weight.zero_()
    x = ff.grid(20)
    split = ff.TensorSplit(x, x.clone(), torch.arange(20))
    result = cp.analyse(model, split)
    m = float((x ** 2).mean())
    assert result["grad_norm_exact"] == 0.0
    assert result["eigenvalues"] == pytest.approx([-2 * m, 2 * m])
    assert result["minimal_ratio"] == 0.5 and result["minimal_ratio_curved"] == 0.5


def test_engine_minimizes_the_gradient_norm_and_stops_at_the_tolerance():
    # A linear model on 1-D data: ||grad L||^2 is a convex quadratic whose minimum is
    # the least-squares solution, so the engine must reach a tiny gradient norm.
    split = ff.split_of(ff.grid(64), "sinc", CPU)
    torch.manual_seed(0)
    model = nn.Linear(1, 1)
    reports: list[dict] = []
    cfg = EngineConfig(criterion="mse", objective="grad_norm_sq", stop_grad_norm=1e-3, optimizer="adam", lr=0.05,
                       batch_size=64, max_steps=3000, eval_every=100)
    status = fit(model, split, {}, cfg, lambda m, s: reports.append(m))
    last = reports[-1]
    assert status == "ok" and last["status"] == "ok"
    assert last["converged"] is True and last["last_grad_norm"] < 1e-3
    assert last["step"] < 3000  # stopped early
    assert all(r["converged"] is False for r in reports[:-1])
    # the weights kept are the ones that met the tolerance (no update after the check)
    x, y = split.x, split.y
    model.zero_grad()
    nn.functional.mse_loss(model(x), y).backward()
    norm = math.sqrt(sum(float(p.grad.square().sum()) for p in model.parameters()))
    assert norm == pytest.approx(last["last_grad_norm"], rel=1e-4)


def test_engine_reports_not_converged_when_the_budget_ends_first():
    split = ff.split_of(ff.grid(64), "sinc", CPU)
    torch.manual_seed(0)
    reports: list[dict] = []
    cfg = EngineConfig(criterion="mse", objective="grad_norm_sq", stop_grad_norm=1e-9, optimizer="adam", lr=1e-3,
                       batch_size=64, max_steps=20, eval_every=10)
    fit(nn.Linear(1, 1), split, {}, cfg, lambda m, s: reports.append(m))
    assert [r["step"] for r in reports] == [10, 20]
    assert reports[-1]["converged"] is False and reports[-1]["status"] == "ok"


def test_validate_defaults_and_errors():
    config = cp.validate({"seed": 3})
    assert config["hidden"] == [12, 12] and config["activation"] == "tanh" and config["batch_size"] is None
    assert sum(p.numel() for p in ff.regression_mlp(config["hidden"]).parameters()) == 193
    with pytest.raises(ConfigError) as err:
        cp.validate({"gn_tolerance": 0})
    assert err.value.key == "gn_tolerance"


def test_a_tiny_trial_runs_both_phases_and_analyses_the_end_point():
    config = cp.validate({"hidden": [4, 4], "train_size": 64, "test_size": 64, "max_steps": 60, "eval_every": 20,
                          "gn_max_steps": 40, "log_every_steps": 10, "seed": 1})
    cfg = cp.CriticalPointsConfig(**config)
    splits = ff.make_splits(cfg, CPU)
    model = ff.new_model(cfg, CPU)
    rows, states = [], []
    status = cp.run(cfg, model, splits, lambda m, s: (rows.append(m), states.append(s)))
    assert status == "ok"
    phases = [r["phase"] for r in rows]
    assert phases[:3] == ["train"] * 3 and set(phases[3:]) == {"min_grad_norm"}
    assert [r["step"] for r in rows[:3]] == [20, 40, 60]
    assert rows[3]["step"] > 60 and rows[-1]["step"] == 60 + rows[-1]["gn_steps"]  # steps count on
    assert all(r["status"] == "running" for r in rows[:-1]) and rows[-1]["status"] == "ok"
    last = rows[-1]
    n_params = 4 * 2 + 4 * 5 + 5  # 1-4-4-1
    assert len(last["eigenvalues"]) == n_params == last["n_positive"] + last["n_negative"] + last["n_zero"]
    assert last["minimal_ratio"] == pytest.approx(last["n_positive"] / n_params)
    assert last["critical_loss"] == pytest.approx(last["train_loss"], rel=1e-4)
    assert isinstance(last["converged"], bool)
    # per-step records continue the step count and say their phase
    steps = [s for r in rows if "steps" in r for s in r["steps"]["step"]]
    assert steps == sorted(steps) and steps[0] == 1 and max(steps) <= last["step"]
    assert rows[-1]["steps"]["phase"][-1] == "min_grad_norm"
    # a restart from phase 1's last checkpoint goes on with phase 2 and ends the same way
    model2 = ff.new_model(cfg, CPU)
    rows2: list[dict] = []
    cp.run(cfg, model2, splits, lambda m, s: rows2.append(m), resume=states[2])
    assert rows2[-1]["step"] == last["step"] and rows2[-1]["minimal_ratio"] == last["minimal_ratio"]
