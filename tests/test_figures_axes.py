"""Log-axis tick labels never run into each other (analysis.figures.log_axis), and
the report's tables show n = 1 without a spread and one number format per column
(analysis.report.summary_table)."""

from __future__ import annotations

import itertools

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from analysis import figures  # noqa: E402
from analysis.figures import log_axis, tick_text  # noqa: E402
from analysis.report import column_format, mean_std_column, summary_table  # noqa: E402


# ---- helpers ---------------------------------------------------------------------------

def drawn_labels(axis) -> list:
    """The tick labels the axis draws: visible, at a major tick inside the view."""
    low, high = sorted(axis.get_view_interval())
    locs = axis.get_majorticklocs()
    labels = []
    for tick, loc in zip(axis.get_major_ticks(len(locs)), locs):
        if low * (1 - 1e-9) <= loc <= high * (1 + 1e-9):
            labels += [t for t in (tick.label1, tick.label2) if t.get_visible()]
    return labels


def all_axes(fig) -> list:
    """Every axes of `fig`, with child axes (e.g. a secondary top x axis)."""
    return [a for ax in fig.axes for a in (ax, *ax.child_axes)]


def assert_readable(fig, log_axes: int = 1) -> None:
    """Draw `fig`; on every axis the drawn labels are non-empty and pairwise apart;
    at least `log_axes` log axes carry two labels or more."""
    fig.canvas.draw()
    labelled_logs = 0
    for ax in all_axes(fig):
        for axis in (ax.xaxis, ax.yaxis):
            labels = drawn_labels(axis)
            texts = [label.get_text() for label in labels]
            assert all(t.strip() for t in texts), (axis.axis_name, texts)
            boxes = [label.get_window_extent() for label in labels]
            for (i, a), (j, b) in itertools.combinations(enumerate(boxes), 2):
                assert not a.overlaps(b), f"{axis.axis_name} labels {texts[i]!r} and {texts[j]!r} overlap: {texts}"
            if axis.get_scale() == "log" and len(labels) >= 2:
                labelled_logs += 1
    assert labelled_logs >= log_axes


# ---- the helper on its own ---------------------------------------------------------------

CASES = [
    # (low, high, base, which axis, figure size, panels)
    (1e3, 2e6, 10, "x", (9.7, 3.8), 2),  # capacity: 5000 10000 ... 500000 1e+06 touched
    (1e-5, 5e-5, 10, "x", (12.8, 4.3), 2),  # minimal_ratio's critical losses
    (1e-5, 5e-5, 10, "y", (4.0, 2.6), 1),
    (1e-5, 5e-5, 10, "x", (2.4, 2.4), 1),
    (1e-8, 1e4, 10, "x", (3.2, 2.6), 1),  # twelve decades on a small panel
    (1.0, 1e12, 10, "y", (3.0, 1.8), 1),
    (0.93, 0.97, 10, "x", (2.6, 2.6), 1),  # within a decade
    (0.5, 5.0, 10, "y", (3.0, 2.0), 1),
    (300.0, 6000.0, 10, "x", (2.2, 2.2), 1),
    (16, 4096, 2, "x", (2.2, 2.2), 1),  # batch sizes
    (1, 2 ** 20, 2, "x", (3.0, 2.5), 1),
    (1, 2 ** 20, 2, "y", (3.0, 1.6), 1),
]


@pytest.mark.parametrize("low, high, base, which, size, panels", CASES)
def test_log_axis_labels_never_overlap(low, high, base, which, size, panels):
    fig, axes = plt.subplots(1, panels, figsize=size, squeeze=False)
    values = np.geomspace(low, high, 12)
    for ax in axes[0]:
        x, y = (values, np.linspace(0, 1, 12)) if which == "x" else (np.linspace(0, 1, 12), values)
        ax.plot(x, y, marker="o")
        ax.set_xlabel("parameters")
        log_axis(ax, which, base)
    fig.tight_layout()
    assert_readable(fig, log_axes=panels)
    # narrower and shorter later (a legend, a layout): the ticks are picked again at draw time
    fig.set_size_inches(size[0] * 0.6, size[1] * 0.6)
    assert_readable(fig, log_axes=0)
    plt.close(fig)


def test_log_axis_labels_are_short_and_distinct():
    assert [tick_text(v) for v in (5000, 10000, 500000, 1e6, 2.5e6, 2e-5, 1e-4, 0.25, 0.001, 1e12)] == [
        "5k", "10k", "500k", "1M", "2.5M", "2e-5", "1e-4", "0.25", "0.001", "1e12"]
    fig, ax = plt.subplots(figsize=(6, 2))
    ax.plot([0.9501, 0.9504], [0, 1])  # a tiny range: the labels need more digits
    log_axis(ax, "x", True)
    fig.canvas.draw()
    texts = [t.get_text() for t in drawn_labels(ax.xaxis)]
    assert len(texts) >= 2 and len(set(texts)) == len(texts), texts
    plt.close(fig)


# ---- the studies' figures ----------------------------------------------------------------

def capacity_tables() -> tuple[pd.DataFrame, pd.DataFrame]:
    """A capacity study: ten widths from about 1e3 to 2e6 parameters, two seeds."""
    rows, trials = [], []
    for i, n in enumerate(np.geomspace(1e3, 2e6, 10).astype(int)):
        for seed in (0, 1):
            tid = f"t{i}{seed}"
            trials.append({"trial_id": tid, "status": "ok", "n_params": n, "hidden": str(2 ** (i + 1)),
                           "seed": seed})
            for epoch in (1, 2):
                rows.append({"trial_id": tid, "epoch": epoch, "seed": seed, "hidden": str(2 ** (i + 1)),
                             "train_loss": 1 / (i + epoch + seed), "test_loss": 1.1 / (i + epoch),
                             "train_acc": 0.8 + 0.02 * i, "test_acc": 0.78 + 0.015 * i,
                             "gap_loss": 0.1 / (i + epoch), "gap_acc": 0.02 + 0.001 * i})
    return pd.DataFrame(rows), pd.DataFrame(trials)


def test_capacity_figures_have_readable_parameter_axes(tmp_path, kept_figures):
    import analysis.studies  # noqa: F401  (registers final_train_test)

    history, trials = capacity_tables()
    spec = {"kind": "final_train_test", "x": "n_params", "y": ["loss", "acc"], "logx": True,
            "options": {"top_labels": "hidden"}}
    assert figures.KINDS["final_train_test"](history, trials, spec, tmp_path / "a.png")
    spec = {"kind": "final", "x": "n_params", "y": ["gap_loss", "gap_acc"], "logx": True}
    assert figures.KINDS["final"](history, trials, spec, tmp_path / "b.png")
    drawn = kept_figures()
    assert len(drawn) == 2
    for fig in drawn:
        assert tuple(fig.get_size_inches()) in ((9.7, 3.8), (10.5, 3.4))  # the figures' own sizes
        assert_readable(fig, log_axes=2)


def test_final_with_a_zero_grid_value_keeps_zero_and_fits(tmp_path, kept_figures):
    decays = [0.0, 1e-6, 3e-6, 1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1]
    trials = pd.DataFrame({"trial_id": [f"t{i}" for i in range(len(decays))], "status": "ok",
                           "weight_decay": decays})
    history = trials.assign(epoch=1, test_acc=np.linspace(0.9, 0.95, len(decays)))
    spec = {"kind": "final", "x": "weight_decay", "y": ["test_acc"], "logx": True}
    assert figures.KINDS["final"](history, trials, spec, tmp_path / "wd.png")
    (fig,) = kept_figures()
    assert_readable(fig)
    texts = [t.get_text() for t in drawn_labels(fig.axes[0].xaxis)]
    assert texts[0] == "0" and len(texts) >= 3, texts  # the stand-in is labelled, grid values follow


def test_minimal_ratio_figure_has_readable_loss_axes(tmp_path, kept_figures):
    import analysis.studies  # noqa: F401  (registers minimal_ratio)

    n = 40
    rng = np.random.default_rng(0)
    losses = np.geomspace(1e-5, 5e-5, n)
    trials = pd.DataFrame({"trial_id": [f"r{i}" for i in range(n)], "status": "ok", "gn_tolerance": 1e-4,
                           "n_params": 33})
    history = trials.assign(epoch=1, minimal_ratio=rng.uniform(0.4, 0.6, n), critical_loss=losses,
                            minimal_ratio_curved=rng.uniform(0.4, 0.6, n), converged=np.arange(n) % 3 > 0)
    spec = {"kind": "minimal_ratio", "y": ["minimal_ratio", "minimal_ratio_curved"]}
    assert figures.KINDS["minimal_ratio"](history, trials, spec, tmp_path / "m.png")
    (fig,) = kept_figures()
    assert_readable(fig, log_axes=2)


# ---- tables --------------------------------------------------------------------------------

def test_one_format_per_column_and_no_spread_for_one_value():
    # a column of small losses next to larger ones: one format, 3 significant digits for the smallest
    assert mean_std_column([0.00943, 0.0175], [float("nan"), 0.0003], [1, 3]) == ["0.00943", "0.01750 ± 0.00030"]
    assert mean_std_column([0.952, 0.95], [float("nan"), 0.00707], [1, 2]) == ["0.9520", "0.9500 ± 0.0071"]
    assert mean_std_column([2e-7, 5e-6], [1e-8, 3e-7], [2, 2]) == ["2.00e-07 ± 1.00e-08", "5.00e-06 ± 3.00e-07"]
    assert mean_std_column([float("nan")], [float("nan")], [0]) == ["n/a"]
    assert column_format([0.0, 0.5]) == ".4f" and column_format([4523.5, 300]) == ".1f"


def test_summary_table_follows_the_rule():
    study = {"spec": {"family": "function_fit", "grid": {"hidden": [[8], [64]]}, "seeds": [0, 1]}}
    trials = pd.DataFrame([
        {"trial_id": "a0", "status": "ok", "hidden": "8", "seed": 0, "final_train_loss": 0.0175,
         "final_test_loss": 0.0200, "final_weight_norm": 3.1},
        {"trial_id": "a1", "status": "ok", "hidden": "8", "seed": 1, "final_train_loss": 0.0179,
         "final_test_loss": 0.0210, "final_weight_norm": 3.3},
        {"trial_id": "b0", "status": "ok", "hidden": "64", "seed": 0, "final_train_loss": 0.00943,
         "final_test_loss": 0.0120, "final_weight_norm": 5.0},
        {"trial_id": "b1", "status": "diverged", "hidden": "64", "seed": 1, "final_train_loss": float("nan"),
         "final_test_loss": float("nan"), "final_weight_norm": float("nan")},
    ])
    table = summary_table(trials, study).set_index("hidden")
    assert table.loc["64", "n"] == 1 and table.loc["8", "n"] == 2
    assert table.loc["64", "train_loss"] == "0.00943"  # n = 1: the value alone
    assert table.loc["8", "train_loss"] == "0.01770 ± 0.00028"  # the same 5 decimals in the column
    assert table.loc["64", "weight_norm"] == "5.0000" and table.loc["8", "weight_norm"] == "3.2000 ± 0.1414"
    assert "±" not in "".join(table.loc["64", ["train_loss", "test_loss", "weight_norm"]])
