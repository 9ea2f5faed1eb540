"""The trajectory family (trainables/trajectory.py) and its figure
(analysis/studies/trajectory.py): PCA of known point sets, snapshots (epoch 0, every
k epochs, the last; float16; first-layer names), the engine's numbers unchanged by
snapshotting, config errors, and the figure drawn from a study folder."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from analysis.studies.trajectory import load_paths, pca, trajectory_pca
from sweeps.schema import load_study
from trainables import trajectory as T
from trainables.engine import fit
from trainables.errors import ConfigError
from trainables.models import build_model

REPO = Path(__file__).resolve().parent.parent
TINY = {"train_size": 256, "test_size": 200, "epochs": 3, "snapshot_every": 2, "channels": [4, 8], "seed": 0,
        "batch_size": 64}


# ---------------------------------------------------------------------------
# PCA


def test_pca_of_points_on_a_line_is_that_line():
    rng = np.random.default_rng(0)
    direction = rng.normal(size=50)
    direction /= np.linalg.norm(direction)
    start = rng.normal(size=50)
    t = np.array([0.0, 0.5, 1.0, 2.0, 4.0])
    result = pca(start + t[:, None] * direction, k=2)
    assert result.explained[0] == pytest.approx(1.0, abs=1e-12)
    assert result.explained[1] == pytest.approx(0.0, abs=1e-12)
    assert abs(result.components[0] @ direction) == pytest.approx(1.0, abs=1e-12)
    # coordinates are t, centred (up to the component's sign)
    assert np.allclose(np.abs(result.coords[:, 0]), np.abs(t - t.mean()), atol=1e-12)


def test_pca_of_a_plane_recovers_its_axes_and_variance_shares():
    rng = np.random.default_rng(1)
    u, v = np.linalg.qr(rng.normal(size=(30, 2)))[0].T  # orthonormal directions
    a = np.array([-3.0, 3.0, 0.0, 0.0])  # sum of squares 18 along u
    b = np.array([0.0, 0.0, -1.0, 1.0])  # 2 along v
    rows = 5.0 + a[:, None] * u + b[:, None] * v
    result = pca(rows, k=2)
    assert np.allclose(result.explained, [0.9, 0.1], atol=1e-12)
    assert abs(result.components[0] @ u) == pytest.approx(1.0, abs=1e-12)
    assert abs(result.components[1] @ v) == pytest.approx(1.0, abs=1e-12)
    assert np.allclose(np.abs(result.coords), np.abs(np.stack([a, b], axis=1)), atol=1e-12)
    # signs are fixed: the largest entry of each component is positive
    assert all(c[np.abs(c).argmax()] > 0 for c in result.components)


# ---------------------------------------------------------------------------
# The family


def setup(make_splits, **changes):
    config = T.validate({**TINY, **changes})
    cfg, model_args = T.parse_config(T.TrajectoryConfig, config)
    train, test = make_splits(cfg.train_size, cfg.test_size)
    torch.manual_seed(cfg.seed)
    return cfg, build_model(cfg.model, **model_args), {"train": train, "test": test}


def record(cfg, model, splits, folder):
    rows, states = [], []

    def report(row, state):
        rows.append(dict(row))
        states.append(copy.deepcopy(state))

    status = T.run(model, splits, cfg, report, folder)
    return status, rows, states


@pytest.fixture(scope="module")
def trial(make_splits, tmp_path_factory):
    folder = tmp_path_factory.mktemp("study") / "tune" / "trial_a"
    cfg, model, splits = setup(make_splits)
    initial = {k: v.detach().clone() for k, v in model.named_parameters()}
    status, rows, states = record(cfg, model, splits, folder)
    return cfg, model, splits, folder, initial, status, rows, states


def test_validate_fills_this_studys_defaults_and_checks_through_the_classifier():
    config = T.validate({"train_size": 256})
    assert config["model"] == "cnn_small" and config["optimizer"] == "adam" and config["lr"] == 1e-3
    assert config["snapshot_every"] == 1 and config["channels"] == [32, 64]
    with pytest.raises(ConfigError) as err:
        T.validate({"snapshot_every": 3, "eval_every": 2})
    assert err.value.key == "snapshot_every" and "multiple of eval_every" in err.value.message
    with pytest.raises(ConfigError) as err:
        T.validate({"snapshot_evry": 2})
    assert err.value.key == "snapshot_evry" and "snapshot_every" in err.value.message
    with pytest.raises(ConfigError) as err:
        T.validate({"train_size": 100, "batch_size": 128})  # the classifier's check
    assert err.value.key == "batch_size"


def test_snapshots_at_epoch_0_every_k_epochs_and_the_last(trial):
    cfg, model, _, folder, initial, status, rows, states = trial
    assert status == "ok"
    assert [r["epoch"] for r in rows] == [0, 1, 2, 3]
    assert [r.get("snapshot") for r in rows] == ["snapshots/epoch_0000.npz", None, "snapshots/epoch_0002.npz",
                                                 "snapshots/epoch_0003.npz"]
    assert [p.name for p in T.snapshot_paths(folder)] == ["epoch_0000.npz", "epoch_0002.npz", "epoch_0003.npz"]
    assert states[0] is None and all(s is not None for s in states[1:])  # epoch 0 has nothing to resume
    epoch, params, first = T.load_snapshot(folder / "snapshots/epoch_0000.npz")
    assert epoch == 0 and first == ["0.weight", "0.bias"]
    assert list(params) == [name for name, _ in model.named_parameters()]
    assert all(a.dtype == np.float16 for a in params.values())
    for name, value in initial.items():  # the initial weights, to float16 precision
        np.testing.assert_allclose(params[name], value.numpy(), rtol=1e-3, atol=1e-4)
    _, last, _ = T.load_snapshot(folder / "snapshots/epoch_0003.npz")
    for name, value in model.named_parameters():  # the final weights
        np.testing.assert_allclose(last[name], value.detach().numpy(), rtol=1e-3, atol=1e-4)
    assert not np.allclose(last["0.weight"], params["0.weight"])


def test_epoch_0_row_evaluates_the_untrained_network(trial):
    rows = trial[6]
    first = rows[0]
    assert first["step"] == 0 and np.isnan(first["grad_norm"]) and first["status"] == "running"
    assert 0.0 <= first["test_acc"] <= 1.0 and first["test_loss"] == pytest.approx(np.log(10), rel=0.1)
    assert first["gap_acc"] == pytest.approx(first["train_acc"] - first["test_acc"])
    assert rows[-1]["status"] == "ok"


def test_snapshotting_leaves_the_engines_numbers_unchanged(trial, make_splits):
    cfg, _, _, _, _, _, rows, _ = trial
    _, model, splits = setup(make_splits)
    plain = []
    fit(model, splits["train"], {"test": splits["test"]}, cfg, lambda m, s: plain.append(m))
    for ours, engine in zip(rows[1:], plain, strict=True):
        assert ours["train_loss"] == engine["train_loss"] and ours["test_acc"] == engine["test_acc"]


def test_figure_projects_every_snapshot_of_every_run(trial, make_splits, tmp_path):
    cfg, _, _, folder, _, _, rows, _ = trial
    study = folder.parent.parent
    # a second run (seed 1) beside the first
    cfg_b, model_b, splits_b = setup(make_splits, seed=1)
    _, rows_b, _ = record(cfg_b, model_b, splits_b, study / "tune" / "trial_b")
    history = pd.DataFrame([{**r, "trial_id": "trial_a", "seed": 0} for r in rows]
                           + [{**r, "trial_id": "trial_b", "seed": 1} for r in rows_b])
    trials = pd.DataFrame({"trial_id": ["trial_a", "trial_b"], "seed": [0, 1], "status": ["ok", "ok"]})
    paths = load_paths(study, ["trial_a", "trial_b"], "first_layer")
    assert len(paths) == 6 and len(paths["vector"].iloc[0]) == 4 * 9 + 4  # conv 1->4, 3x3, with bias
    whole = load_paths(study, ["trial_a"], "model")
    assert len(whole["vector"].iloc[0]) == sum(p.numel() for p in model_b.parameters())
    (study / "report").mkdir()
    for part in ("first_layer", "model"):
        out = trajectory_pca(history, trials, {"kind": "trajectory_pca", "options": {"part": part}},
                             study / "report" / f"{part}.png")
        assert out is not None and out.stat().st_size > 10_000
    with pytest.raises(ValueError, match="options.part"):
        trajectory_pca(history, trials, {"kind": "trajectory_pca", "options": {"part": "head"}},
                       study / "report" / "x.png")


def test_spec_profiles_train_eight_seeds_of_one_cnn():
    full = load_study(REPO / "sweeps/trajectory.yaml")
    assert sorted(c["seed"] for c in full.cells) == list(range(8))
    assert {(c["model"], tuple(c["channels"]), c["snapshot_every"]) for c in full.cells} == {("cnn_small", (32, 64), 1)}
    for profile in ("quick", "smoke"):
        assert load_study(REPO / "sweeps/trajectory.yaml", profile).spec.description
