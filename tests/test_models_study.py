"""The model-comparison study (sweeps/models.yaml, sweeps/activations.yaml): the
`confusion` probe on a model whose outputs are known, per-class accuracy from the
engine against a hand count, list-valued metrics through collect -> Parquet, and the
figure kinds `confusion`, `per_class`, `misclassified` on fabricated results."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from trainables import data as D
from trainables.engine import EngineConfig, fit
from trainables.models import build_model
from trainables.probes import PROBES, run_probes
from trainables.probes.errors import confusion_and_mistakes

REPO = Path(__file__).resolve().parent.parent


class LookupModel(nn.Module):
    """Logits from a table, looked up by the image's first pixel (which holds the
    image's row number): outputs fully under the test's control."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = nn.Parameter(table, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.table[x[:, 0, 0, 0].round().long()]


def lookup_case():
    """30 images; the test split is rows 5..24 (20 images, labels row % 10). Four
    are misclassified, with known confidences; the rest are right."""
    n = 30
    x = torch.zeros(n, 28, 28, dtype=torch.uint8)
    x[:, 0, 0] = torch.arange(n, dtype=torch.uint8)
    y = torch.arange(n) % 10
    # mean 0, std 1/255: inputs() gives the raw pixel value, i.e. the row number
    test = D.Split(x, y, torch.arange(5, 25), mean=0.0, std=1 / 255)
    table = torch.zeros(n, 10)
    table[torch.arange(n), y] = 5.0  # right, confidence e^5 / (e^5 + 9)
    wrong = {7: (1, 3.0), 12: (9, 6.0), 18: (3, 4.0), 23: (8, 2.0)}  # row: (predicted class, its logit)
    for row, (pred, logit) in wrong.items():
        table[row] = 0.0
        table[row, pred] = logit
    return LookupModel(table), test, wrong


def test_confusion_probe_counts_and_ranks_mistakes():
    model, test, wrong = lookup_case()
    # batch 7 does not divide 20: the counts must add up across ragged batches
    out = confusion_and_mistakes(model, test, batch_size=7, top_k=3)
    matrix = np.array(out["confusion"])
    assert matrix.shape == (10, 10) and matrix.sum() == 20
    expected = np.zeros((10, 10), dtype=int)
    for row in range(5, 25):
        expected[row % 10, wrong.get(row, (row % 10,))[0]] += 1
    np.testing.assert_array_equal(matrix, expected)
    assert np.trace(matrix) == 16
    # the three most confident of the four mistakes (logits 6 > 4 > 3 > 2), indices into the full set
    assert out["misclassified_idx"] == [12, 18, 7]
    assert out["misclassified_true"] == [2, 8, 7]
    assert out["misclassified_pred"] == [9, 3, 1]
    conf = [math.exp(a) / (math.exp(a) + 9) for a in (6.0, 4.0, 3.0)]
    assert out["misclassified_conf"] == pytest.approx(conf, rel=1e-6)
    # registered under its name, reached through run_probes with the engine's config
    assert "confusion" in PROBES
    via_engine = run_probes(["confusion"], model, test, test, EngineConfig(eval_batch_size=4))
    assert via_engine["confusion"] == out["confusion"]
    assert len(via_engine["misclassified_idx"]) == 4  # fewer mistakes than the default top-k
    assert all(isinstance(v, list) for v in via_engine.values())  # JSON-able for Tune


@pytest.fixture(scope="module")
def tiny_mnist(make_splits) -> tuple[D.Split, D.Split]:
    return make_splits(300, 200)


def test_engine_per_class_accuracy_and_probe_match_a_hand_count(tiny_mnist):
    train, test = tiny_mnist
    torch.manual_seed(0)
    model = build_model("mlp", hidden=[32])
    reports = []
    cfg = EngineConfig(lr=0.05, batch_size=32, epochs=2, per_class=True, probes=["confusion"], eval_batch_size=64)
    assert fit(model, train, {"test": test}, cfg, lambda m, s: reports.append(m)) == "ok"
    assert "confusion" not in reports[0]  # probes run with the last evaluation only
    last = reports[-1]
    model.eval()
    with torch.no_grad():
        pred = model(test.inputs(test.idx)).argmax(1)
    labels = test.labels(test.idx)
    for c in range(10):
        mine = labels == c
        assert last[f"test_acc_{c}"] == pytest.approx(int((pred[mine] == c).sum()) / int(mine.sum()), abs=1e-12)
    matrix = np.array(last["confusion"])
    assert matrix.sum() == 200 and np.trace(matrix) / 200 == pytest.approx(last["test_acc"])
    np.testing.assert_allclose(np.diag(matrix) / matrix.sum(1), [last[f"test_acc_{c}"] for c in range(10)])
    # the listed mistakes really are mistakes of this model, most confident first
    assert last["misclassified_conf"] == sorted(last["misclassified_conf"], reverse=True)
    rows = torch.tensor(last["misclassified_idx"])
    assert set(rows.tolist()) <= set(test.idx.tolist())
    with torch.no_grad():
        probs = torch.softmax(model(test.inputs(rows)), 1)
    assert probs.argmax(1).tolist() == last["misclassified_pred"]
    assert test.labels(rows).tolist() == last["misclassified_true"]
    assert (probs.argmax(1) != test.labels(rows)).all()
    np.testing.assert_allclose(probs.max(1).values.numpy(), last["misclassified_conf"], rtol=1e-5)


ARCHS = {"linear": 0.90, "cnn": 0.97}  # fabricated final test accuracy (mean over seeds)


def fabricated_study(folder: Path) -> dict[str, dict]:
    """A study folder as Tune leaves it: 2 architectures x 2 seeds, 3 epochs each,
    with per-class accuracies and the confusion probe's lists in the last report."""
    ds_test_y = D.load_dataset("mnist").test_y
    spec = {"name": "models", "family": "classifier", "grid": {"architecture": [{"name": a} for a in ARCHS]},
            "figures": [{"kind": "confusion"}, {"kind": "per_class"}, {"kind": "misclassified"}]}
    folder.mkdir(parents=True)
    (folder / "study.json").write_text(json.dumps({"spec": spec, "profile": None, "study": "models", "n_cells": 4,
                                                   "provenance": {}}))
    rng = np.random.default_rng(0)
    last_reports = {}
    for a, (arch, acc) in enumerate(ARCHS.items()):
        for seed in (0, 1):
            trial = folder / "tune" / f"t{a}{seed}"
            trial.mkdir(parents=True)
            cell = {"architecture": arch, "seed": seed, "dataset": "mnist", "model": arch, "hidden": [512]}
            (trial / "params.json").write_text(json.dumps({"cell": cell}))
            final_acc = acc + (0.005 if seed else -0.005)
            matrix = np.diag(np.full(10, 100)) + (rng.random((10, 10)) < 0.2) * rng.integers(1, 5, (10, 10))
            idx = rng.choice(10_000, 24, replace=False)
            wrong = [(int(i), int(ds_test_y[i]), int((ds_test_y[i] + 1) % 10), float(c))
                     for i, c in zip(idx, np.sort(rng.uniform(0.5, 1.0, 24))[::-1])]
            lines = []
            for epoch in (1, 2, 3):
                report = {"epoch": epoch, "training_iteration": epoch, "test_acc": final_acc - 0.1 * (3 - epoch),
                          "train_acc": 1.0 - 0.05 * (3 - epoch), "status": "ok" if epoch == 3 else "running",
                          "time_s": float(epoch), "n_params": 1000 * (a + 1), "device": "cpu"}
                report.update({f"test_acc_{c}": min(1.0, final_acc - (0.3 - 0.03 * c) * (3 - epoch) / 2)
                               for c in range(10)})
                if epoch == 3:
                    report.update(confusion=matrix.tolist(), misclassified_idx=[w[0] for w in wrong],
                                  misclassified_true=[w[1] for w in wrong], misclassified_pred=[w[2] for w in wrong],
                                  misclassified_conf=[w[3] for w in wrong])
                lines.append(json.dumps(report))
            (trial / "result.json").write_text("\n".join(lines) + "\n")
            last_reports[trial.name] = json.loads(lines[-1])
    return last_reports


def test_report_carries_list_metrics_to_parquet_and_draws_the_error_figures(tmp_path):
    from analysis.report import write_report
    from analysis.studies.errors import best_model, pooled_mistakes

    folder = tmp_path / "models"
    last = fabricated_study(folder)
    summary = write_report(folder)
    # the summary table groups by the variant axis: one row per architecture, n = 2 seeds
    assert "cnn  2 " in summary and "linear  2 " in summary and "0.9700 ± 0.0071" in summary
    trials = pd.read_parquet(folder / "trials.parquet")
    history = pd.read_parquet(folder / "history.parquet")
    assert len(history) == 12 and history["confusion"].notna().sum() == 4  # last epoch only
    for row in trials.itertuples():
        matrix = np.array([list(r) for r in row.final_confusion])
        np.testing.assert_array_equal(matrix, last[row.trial_id]["confusion"])
        assert list(row.final_misclassified_idx) == last[row.trial_id]["misclassified_idx"]
    best = best_model(trials, ["architecture"], need="final_confusion")
    assert best.name == "architecture = cnn" and best.n == 2 and best.mean == pytest.approx(0.97)
    pooled = pooled_mistakes(best)
    assert pooled["idx"].is_unique and pooled["conf"].is_monotonic_decreasing and len(pooled) <= 48
    pngs = {p.name: p.stat().st_size for p in (folder / "report").glob("*.png")}
    assert set(pngs) == {"01-confusion.png", "02-per_class.png", "03-misclassified.png"}
    assert all(size > 10_000 for size in pngs.values())
    assert best.title() == "best model: architecture = cnn (test acc 0.9700 ± 0.0071, n=2)"
    assert all(name in (folder / "report" / "index.html").read_text() for name in pngs)


def test_error_figures_skip_studies_without_the_probe(tmp_path):
    from analysis.studies import errors

    trials = pd.DataFrame({"trial_id": ["a"], "status": ["ok"], "final_test_acc": [0.9], "architecture": ["x"]})
    history = pd.DataFrame({"trial_id": ["a"], "epoch": [1], "test_acc": [0.9]})
    spec = {"options": {"by": "architecture"}}
    for kind in (errors.confusion, errors.per_class, errors.misclassified):
        assert kind(history, trials, spec, tmp_path / "x.png") is None
    assert not list(tmp_path.glob("*.png"))


@pytest.mark.parametrize("spec", ["models", "activations"])
def test_profiles_load(spec):
    from sweeps.schema import load_study

    full, quick, smoke = (load_study(REPO / "sweeps" / f"{spec}.yaml", p) for p in (None, "quick", "smoke"))
    assert len(full.spec.seeds) >= 2 and len(quick.spec.seeds) == 1
    assert 2 <= len(smoke.cells) <= 4 and all(c["epochs"] <= 2 and c["train_size"] <= 500 for c in smoke.cells)
    assert all(c["train_size"] <= 5000 and c["test_size"] <= 2000 for c in quick.cells)
    if spec == "models":
        names = [c["architecture"] for c in full.cells if c["seed"] == 0]
        assert names == ["linear", "mlp-512", "mlp-512-256", "mlp-500-250-100", "cnn"]
        assert [c["model"] for c in full.cells if c["seed"] == 0] == ["linear", "mlp", "mlp", "mlp", "cnn_overparam"]
        assert all(c["per_class"] and c["probes"] == ["confusion"] for c in full.cells + smoke.cells)
        assert {f.kind for f in full.spec.figures} >= {"curves", "confusion", "per_class", "misclassified"}
    else:
        assert {(c["activation"], c["dropout"]) for c in full.cells} == {
            (a, d) for a in ("relu", "tanh", "sigmoid") for d in (0.0, 0.2, 0.5)}
        assert all(c["hidden"] == [512, 256] for c in full.cells)
