"""Label noise (trainables.data.noisy_labels, classifier.make_splits), the L2 modes'
equivalence the L2 specs rely on, the `weight_templates` figure on a fabricated study
folder, and the random_labels / l2_linear / l2_mlp specs.

    .venv/bin/python -m pytest -q tests/test_random_labels_l2.py
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.image import imread
from torch import nn

from analysis.figures import KINDS
from analysis.collect import last_model_state
from analysis.studies import templates as T
from trainables.checkpoint import last_checkpoint
from sweeps.schema import load_study
from trainables import data as D
from trainables.classifier import ClassifierConfig, make_splits
from trainables.engine import EngineConfig, evaluate, fit
from trainables.models import build_model

REPO = Path(__file__).resolve().parent.parent
CPU = torch.device("cpu")


# ---------------------------------------------------------------- noisy_labels


@pytest.mark.parametrize("fraction", [0.2, 0.5, 0.8, 1.0])
def test_exactly_round_fraction_n_rows_are_redrawn_and_only_in_idx(fraction):
    # Every label is 10 (outside 0..9), so each redrawn row shows, even when the
    # redraw "equals the true label".
    labels = np.full(5000, 10, dtype=np.int64)
    idx = np.random.default_rng(1).choice(5000, size=1234, replace=False)
    noisy = D.noisy_labels(labels, idx, fraction, data_seed=0)
    changed = np.flatnonzero(noisy != labels)
    assert len(changed) == round(fraction * 1234)
    assert set(changed) <= set(idx)
    assert labels.max() == 10 and (labels == 10).all()  # the input is not modified
    # The redrawn labels are uniform over the 10 classes.
    counts = np.bincount(noisy[changed], minlength=10)
    assert len(counts) == 10 and counts.min() > 0.6 * len(changed) / 10


@pytest.mark.parametrize("fraction", [0.2, 0.5, 0.8, 1.0])
def test_agreement_with_true_labels_is_about_one_minus_point_nine_fraction(mnist, fraction):
    train_idx, _ = D.training_split(mnist.train_y, 12_000, 0, data_seed=0)
    noisy = D.noisy_labels(mnist.train_y, train_idx, fraction, data_seed=0)
    agreement = (noisy[train_idx] == mnist.train_y[train_idx]).mean()
    # A redrawn label equals the true one with probability 1/10; std of the mean is < 0.003.
    assert agreement == pytest.approx(1 - 0.9 * fraction, abs=0.012)
    outside = np.setdiff1d(np.arange(len(mnist.train_y)), train_idx)
    assert (noisy[outside] == mnist.train_y[outside]).all()


def test_noise_is_deterministic_and_depends_on_the_data_seed_only(mnist):
    idx, _ = D.training_split(mnist.train_y, 2000, 0, data_seed=0)
    a = D.noisy_labels(mnist.train_y, idx, 0.5, data_seed=0)
    b = D.noisy_labels(mnist.train_y, idx, 0.5, data_seed=0)
    c = D.noisy_labels(mnist.train_y, idx, 0.5, data_seed=1)
    assert (a == b).all()
    assert (a[idx] != c[idx]).mean() > 0.2  # another data seed draws another noise


def test_zero_noise_returns_the_labels_unchanged(mnist):
    idx, _ = D.training_split(mnist.train_y, 2000, 0, data_seed=0)
    assert D.noisy_labels(mnist.train_y, idx, 0.0, data_seed=0) is mnist.train_y


# ---------------------------------------------------------------- make_splits


def _splits(mnist, **cfg):
    return make_splits(mnist, ClassifierConfig(**{"train_size": 1000, "test_size": 500, **cfg}), CPU)


def test_make_splits_noises_train_labels_only(mnist):
    clean = _splits(mnist, val_size=500)
    noisy = _splits(mnist, val_size=500, label_noise=0.8)
    rows = noisy["train"].idx
    assert (noisy["train"].idx == clean["train"].idx).all()
    changed = (noisy["train"].y[rows] != clean["train"].y[rows]).float().mean().item()
    assert changed == pytest.approx(0.8 * 0.9, abs=0.05)
    # Test and validation labels are the true ones.
    assert (noisy["test"].y[noisy["test"].idx] == torch.as_tensor(mnist.test_y)[noisy["test"].idx]).all()
    assert (noisy["val"].y[noisy["val"].idx] == torch.as_tensor(mnist.train_y)[noisy["val"].idx]).all()
    assert (mnist.train_y == D.load_dataset("mnist").train_y).all()  # the shared array is not written


def test_noise_does_not_depend_on_the_training_seed(mnist):
    a = _splits(mnist, label_noise=0.5, seed=0)["train"]
    b = _splits(mnist, label_noise=0.5, seed=7)["train"]
    assert (a.y[a.idx] == b.y[b.idx]).all()


class _Lookup(nn.Module):
    """Predicts a stored label for each image it was given (a perfect memorizer)."""

    def __init__(self, split: D.Split, labels: torch.Tensor) -> None:
        super().__init__()
        self.table = {self.key(x): int(y) for x, y in zip(split.inputs(split.idx), labels)}

    @staticmethod
    def key(image: torch.Tensor) -> str:
        return hashlib.sha1(image.numpy().tobytes()).hexdigest()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        labels = torch.tensor([self.table[self.key(image)] for image in x])
        return nn.functional.one_hot(labels, 10).float() * 10


def test_train_accuracy_is_measured_against_the_noisy_labels(mnist):
    train = _splits(mnist, label_noise=1.0)["train"]
    noisy, true = train.y[train.idx], torch.as_tensor(mnist.train_y)[train.idx]
    # A network that memorized the noisy labels scores 1; one that knows the true
    # labels scores only the chance agreement, about 0.1 + 0.9 * 0 = 0.1.
    assert evaluate(_Lookup(train, noisy), train, 256)[1] == pytest.approx(1.0, abs=0.002)  # MNIST has a few duplicate images
    assert evaluate(_Lookup(train, true), train, 256)[1] == pytest.approx(0.1, abs=0.03)


# ---------------------------------------------------------------- L2 modes


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_penalty_mode_equals_optimizer_mode_at_twice_lambda(mnist, optimizer):
    """What the L2 specs' comments claim: lambda*||w||^2 in the loss trains exactly like
    the optimizer's weight_decay = 2*lambda (torch's Adam decay is coupled L2)."""
    splits = _splits(mnist, train_size=256, test_size=64)
    weights = {}
    for mode, lam in (("penalty", 0.05), ("optimizer", 0.1)):
        torch.manual_seed(0)
        model = build_model("linear")
        cfg = EngineConfig(optimizer=optimizer, lr=0.01, batch_size=32, epochs=2, weight_decay=lam, l2_mode=mode)
        fit(model, splits["train"], {"test": splits["test"]}, cfg, lambda m, s: None)
        weights[mode] = model[1].weight.detach().clone()
    torch.manual_seed(0)
    untrained = build_model("linear")[1].weight.detach()
    assert (weights["penalty"] - untrained).abs().max() > 1e-3  # it did train
    torch.testing.assert_close(weights["penalty"], weights["optimizer"], rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------- weight_templates


def _fabricated_study(folder: Path, lambdas: list[float], seeds: list[int]) -> pd.DataFrame:
    """A study folder with one linear-model checkpoint per trial, as Tune lays it out;
    trial (lambda, seed)'s digit-c template is the constant (c + 1) * (seed + 1) / (1 + lambda)."""
    rows = []
    for i, (lam, seed) in enumerate((lam, seed) for lam in lambdas for seed in seeds):
        trial_id = f"abc_{i:05d}"
        model = build_model("linear")
        with torch.no_grad():
            model[1].weight.copy_(torch.arange(1.0, 11.0)[:, None].expand(10, 784) * (seed + 1) / (1 + lam))
        for step, scale in ((1, -1.0), (12, 1.0)):  # an older checkpoint that must be ignored
            ckpt = folder / "tune" / trial_id / f"checkpoint_{step:06d}"
            ckpt.mkdir(parents=True)
            state = {k: v * scale for k, v in model.state_dict().items()}
            torch.save({"epoch": step, "model": state, "optimizer": {}}, ckpt / "state.pt")
        rows.append({"trial_id": trial_id, "weight_decay": lam, "seed": seed, "status": "ok",
                     "final_test_acc": 0.9 - lam / 10, "model": "linear"})
    (folder / "report").mkdir(parents=True)
    return pd.DataFrame(rows)


def test_last_checkpoint_and_templates_read_the_newest_weights(tmp_path):
    trials = _fabricated_study(tmp_path, [0.0], [0])
    state_file = last_checkpoint(tmp_path / "tune" / trials["trial_id"][0])
    assert state_file.parent.name == "checkpoint_000012"
    weights = T.templates(last_model_state(tmp_path, trials["trial_id"][0]))
    assert weights.shape == (10, 28, 28)
    assert weights[3].min() == weights[3].max() == 4.0  # digit 3's template, from the newest checkpoint


def test_templates_use_the_first_seed_of_each_lambda(tmp_path):
    trials = _fabricated_study(tmp_path, [0.1, 0.0, 1.0], [2, 1])
    chosen = T.chosen_trials(trials, "weight_decay")
    assert list(chosen["weight_decay"]) == [0.0, 0.1, 1.0] and (chosen["seed"] == 1).all()


def test_weight_templates_figure_draws_one_row_per_lambda(tmp_path):
    assert "weight_templates" in KINDS
    one = _fabricated_study(tmp_path / "one", [0.0], [0])
    three = _fabricated_study(tmp_path / "three", [0.0, 1e-3, 1e-1], [0, 1])
    fig_spec = {"kind": "weight_templates", "options": {"row": "weight_decay"}}
    paths = [KINDS["weight_templates"](pd.DataFrame(), trials, fig_spec, folder / "report" / "01-weight_templates.png")
             for trials, folder in ((one, tmp_path / "one"), (three, tmp_path / "three"))]
    assert all(p is not None and p.exists() and p.stat().st_size > 10_000 for p in paths)
    small, tall = imread(paths[0]), imread(paths[1])
    assert small.shape[1] == tall.shape[1] and tall.shape[0] > 2 * small.shape[0] - 120


def test_weight_templates_without_checkpoints_draws_nothing(tmp_path):
    (tmp_path / "report").mkdir()
    trials = pd.DataFrame([{"trial_id": "x_00000", "weight_decay": 0.0, "seed": 0, "status": "ok"}])
    assert KINDS["weight_templates"](pd.DataFrame(), trials, {"kind": "weight_templates"},
                                     tmp_path / "report" / "01-weight_templates.png") is None


# ---------------------------------------------------------------- specs


@pytest.mark.parametrize("profile", [None, "quick", "smoke"])
def test_specs_load(profile):
    noise = load_study(REPO / "sweeps" / "random_labels.yaml", profile)
    linear = load_study(REPO / "sweeps" / "l2_linear.yaml", profile)
    mlp = load_study(REPO / "sweeps" / "l2_mlp.yaml", profile)
    assert {c["label_noise"] for c in noise.cells} >= {0.0, 1.0}
    assert all(c["weight_decay"] == 0 for c in noise.cells)
    assert 0.0 in {c["weight_decay"] for c in linear.cells} and {c["model"] for c in linear.cells} == {"linear"}
    assert 0.0 in {c["weight_decay"] for c in mlp.cells} and all(c["hidden"] == [512] or profile == "smoke" for c in mlp.cells)
    assert "weight_templates" in [f.kind for f in linear.spec.figures]
    if profile == "smoke":
        assert all(len(s.cells) <= 4 and s.cells[0]["epochs"] <= 2 for s in (noise, linear, mlp))
    if profile is None:
        assert {c["train_size"] for c in noise.cells} == {12_000}
        assert {c["label_noise"] for c in noise.cells} == {0.0, 0.2, 0.5, 0.8, 1.0}
        assert {1e-5, 1e-4, 1e-3} <= {c["weight_decay"] for c in mlp.cells}
