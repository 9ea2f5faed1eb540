"""The capacity and batch-size studies: the geometry probes (sensitivity, sharpness)
against known answers, the engine's step budget, the specs' grids and profiles, and
the `final_train_test` figure kind.

    .venv/bin/python -m pytest -q tests/test_capacity_batch.py
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from trainables import data as D
from trainables.engine import EngineConfig, fit
from trainables.models import build_model, count_params
from trainables.probes import PROBES, first_rows
from trainables.probes.geometry import hessian_vector_product, top_eigenvalue

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def splits(make_splits) -> tuple[D.Split, D.Split]:
    return make_splits(256, 256)


# ---- sensitivity -------------------------------------------------------------------

def test_sensitivity_of_a_linear_model_is_the_analytic_input_gradient(splits):
    train, test = splits
    torch.manual_seed(0)
    model = build_model("linear")
    with torch.no_grad():
        model[1].weight.mul_(20)  # confident predictions: softmax far from uniform
    # 50 images in chunks of 16: the last chunk is partial
    cfg = EngineConfig(probe_size=50, eval_batch_size=16)
    got = PROBES["sensitivity"](model, train, test, cfg)["sensitivity"]

    rows = test.idx[:50]
    x = test.inputs(rows).flatten(1).double()  # the normalized input the model sees
    w, b = model[1].weight.detach().double(), model[1].bias.detach().double()
    p = torch.softmax(x @ w.T + b, dim=1)
    # d CE / d x = W^T (softmax(Wx + b) - onehot(y)), per image
    grad = (p - F.one_hot(test.labels(rows), 10).double()) @ w
    expected = float(grad.norm(dim=1).mean())
    assert got == pytest.approx(expected, rel=1e-5)
    assert expected > 0.1  # not a vacuous comparison of two tiny numbers


# ---- sharpness ---------------------------------------------------------------------

def test_power_iteration_finds_the_top_eigenvalue_of_a_quadratic():
    """Loss 0.5 x^T A x has Hessian A everywhere; Hessian-vector products by double
    backward, as the probe takes them."""
    gen = torch.Generator().manual_seed(1)
    q, _ = torch.linalg.qr(torch.randn(20, 20, generator=gen, dtype=torch.float64))
    eigs = torch.tensor([5.0, 3.0, 2.0, 1.0, 0.5, -0.5] + [0.1] * 14, dtype=torch.float64)
    a = q @ torch.diag(eigs) @ q.T
    x = torch.randn(20, generator=gen, dtype=torch.float64, requires_grad=True)

    def hvp(v: torch.Tensor) -> torch.Tensor:
        (g,) = torch.autograd.grad(0.5 * x @ a @ x, x, create_graph=True)
        (hv,) = torch.autograd.grad(g @ v, x)
        return hv

    start = torch.randn(20, generator=gen, dtype=torch.float64)
    value, iters = top_eigenvalue(hvp, start, max_iters=200, tol=1e-12)
    assert value == pytest.approx(5.0, rel=1e-9) and iters < 200
    # largest magnitude: a dominant negative eigenvalue is what it returns
    b = q @ torch.diag(torch.cat([torch.tensor([-7.0], dtype=torch.float64), eigs[1:]])) @ q.T
    assert top_eigenvalue(lambda v: b @ v, start, max_iters=200, tol=1e-12)[0] == pytest.approx(-7.0, rel=1e-9)
    # the default tolerance stops early and is still within 1e-3
    value, iters = top_eigenvalue(lambda v: a @ v, start)
    assert value == pytest.approx(5.0, rel=1e-3) and iters < 50


def tiny_model() -> nn.Module:
    """118 parameters: small enough for the exact Hessian."""
    torch.manual_seed(0)
    return nn.Sequential(nn.AvgPool2d(7), nn.Flatten(), nn.Linear(16, 4), nn.Tanh(), nn.Linear(4, 10))


def test_sharpness_probe_matches_the_exact_hessian(splits):
    train, test = splits
    model = tiny_model()
    cfg = EngineConfig(probe_size=100, eval_batch_size=32)  # chunks of 32, the last partial
    got = PROBES["sharpness"](model, train, test, cfg)

    batch = first_rows(train, 100)
    x, y = batch.inputs(batch.idx), batch.labels(batch.idx)
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).double()
    model64 = tiny_model().double()

    def loss(flat: torch.Tensor) -> torch.Tensor:
        pieces = torch.split(flat, [math.prod(s) for s in shapes])
        params = {n: t.view(s) for n, t, s in zip(names, pieces, shapes)}
        return F.cross_entropy(torch.func.functional_call(model64, params, (x.double(),)), y)

    eigs = torch.linalg.eigvalsh(torch.func.hessian(loss)(theta))
    top = float(eigs[eigs.abs().argmax()])
    assert top == float(eigs.max()) > 0
    assert got["sharpness"] == pytest.approx(top, rel=5e-3)
    assert 1 < got["sharpness_iters"] <= 50
    # the probe leaves no gradients behind (it runs before the final checkpoint)
    assert all(p.grad is None for p in model.parameters())


def test_hessian_vector_product_does_not_depend_on_the_chunking(splits):
    train, _ = splits
    model = tiny_model()
    batch = first_rows(train, 100)
    v = torch.randn(118, generator=torch.Generator().manual_seed(0))
    whole = hessian_vector_product(model, batch, 100)(v)
    chunked = hessian_vector_product(model, batch, 32)(v)
    torch.testing.assert_close(chunked, whole, rtol=1e-4, atol=1e-6)


# ---- step budget and probes in the engine -----------------------------------------

def run_fit(splits, **cfg) -> tuple[list[dict], list[dict]]:
    train, test = splits
    torch.manual_seed(0)
    model = build_model("cnn_small", channels=[4, 8])
    metrics, states = [], []
    fit(model, train, {"test": test}, EngineConfig(optimizer="adam", lr=1e-3, batch_size=32, **cfg),
        lambda m, s: (metrics.append(m), states.append(s)))
    return metrics, states


def test_max_steps_stops_at_exactly_that_many_steps_with_a_partial_last_epoch(splits):
    # 256 images / batch 32 = 8 steps per epoch; 20 steps = 8 + 8 + 4; `epochs` is ignored
    metrics, states = run_fit(splits, max_steps=20, epochs=1, probes=["sensitivity", "sharpness"], probe_size=32)
    assert [m["epoch"] for m in metrics] == [1, 2, 3]
    assert [m["step"] for m in metrics] == [8, 16, 20]
    assert [m["status"] for m in metrics] == ["running", "running", "ok"]
    adam_steps = {int(s["step"]) for s in states[-1]["optimizer"]["state"].values()}
    assert adam_steps == {20}  # the optimizer really stepped 20 times, not 24
    # probes report once, with the last evaluation
    assert "sensitivity" not in metrics[0] and "sharpness" not in metrics[1]
    assert metrics[-1]["sensitivity"] > 0 and math.isfinite(metrics[-1]["sharpness"])


def test_large_eval_every_evaluates_only_the_end_of_a_step_budget(splits):
    metrics, _ = run_fit(splits, max_steps=20, eval_every=1000)
    assert [(m["epoch"], m["step"]) for m in metrics] == [(3, 20)]
    assert EngineConfig(batch_size=32, max_steps=16).last_epoch(256) == 2  # a whole last epoch


# ---- specs -------------------------------------------------------------------------

def distinct(cells: list[dict], key: str) -> list:
    return list(dict.fromkeys(tuple(c[key]) if isinstance(c[key], list) else c[key] for c in cells))


def test_capacity_spec_spans_three_decades_of_parameters():
    from sweeps.schema import load_study

    study = load_study(REPO / "sweeps" / "capacity.yaml")
    widths = distinct(study.cells, "channels")
    counts = sorted(count_params(build_model("cnn_small", channels=list(c))) for c in widths)
    assert len(widths) >= 11 and counts[0] <= 1e3 and counts[-1] >= 1e5
    assert (8, 8) in widths and (128, 96) in widths
    assert len(set(counts)) == len(counts)  # one point per width on the parameter axis
    cell = study.cells[0]
    assert (cell["model"], cell["train_size"], cell["optimizer"], cell["lr"], cell["epochs"]) == (
        "cnn_small", 20000, "adam", 1e-3, 5)
    assert distinct(study.cells, "seed") == [0, 1, 2]

    mlp = load_study(REPO / "sweeps" / "capacity_mlp.yaml")
    hidden = distinct(mlp.cells, "hidden")
    counts = sorted(count_params(build_model("mlp", hidden=list(h))) for h in hidden)
    assert len(hidden) >= 9 and counts[0] < 1e4 and counts[-1] > 5e5 and mlp.cells[0]["train_size"] == 20000


def test_batch_size_spec_is_a_fixed_step_budget_with_the_probes():
    from sweeps.schema import load_study

    study = load_study(REPO / "sweeps" / "batch_size.yaml")
    assert distinct(study.cells, "batch_size") == [16, 32, 64, 128, 256, 512, 1024]
    cell = study.cells[0]
    assert cell["max_steps"] == 6000 and cell["channels"] == [32, 64, 128] and cell["optimizer"] == "adam"
    assert set(cell["probes"]) == {"sensitivity", "sharpness"}
    assert cell["eval_every"] > EngineConfig(**{k: cell[k] for k in ("batch_size", "max_steps")}).last_epoch(60000)
    assert distinct(study.cells, "seed") == [0, 1, 2]


@pytest.mark.parametrize("spec", ["capacity", "capacity_mlp", "batch_size"])
@pytest.mark.parametrize("profile", ["smoke", "quick"])
def test_profiles_load_and_stay_small(spec, profile):
    from sweeps.schema import load_study

    study = load_study(REPO / "sweeps" / f"{spec}.yaml", profile)
    assert study.spec.description and len(study.spec.figures) >= 2
    assert len(study.cells) <= (4 if profile == "smoke" else 8)
    assert {c["seed"] for c in study.cells} == {0}
    if profile == "smoke":
        assert all(c["train_size"] <= 256 and c["test_size"] <= 200 for c in study.cells)


# ---- figure ------------------------------------------------------------------------

def test_final_train_test_draws_train_and_test_against_parameters(tmp_path):
    from analysis.figures import KINDS
    import analysis.studies  # noqa: F401  (registers the kind)

    rows, trials = [], []
    for i, (channels, n) in enumerate([("8-8", 754), ("16-16", 2650), ("64-64", 38218)]):
        for seed in (0, 1):
            tid = f"t{i}{seed}"
            trials.append({"trial_id": tid, "status": "ok", "n_params": n, "channels": channels, "seed": seed})
            for epoch in (1, 2):
                rows.append({"trial_id": tid, "epoch": epoch, "channels": channels, "seed": seed,
                             "train_loss": 1 / (i + epoch), "test_loss": 1.1 / (i + epoch),
                             "train_acc": 0.8 + 0.05 * i, "test_acc": 0.78 + 0.04 * i})
    history, trials = pd.DataFrame(rows), pd.DataFrame(trials)
    spec = {"kind": "final_train_test", "x": "n_params", "y": ["loss", "acc"], "logx": True,
            "options": {"top_labels": "channels"}}
    path = KINDS["final_train_test"](history, trials, spec, tmp_path / "f.png")
    assert path == tmp_path / "f.png" and path.stat().st_size > 10_000
    assert KINDS["final_train_test"](history, trials, {**spec, "y": ["sharpness"]}, tmp_path / "g.png") is None
