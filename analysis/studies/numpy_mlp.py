"""Figure kinds of the NumPy MLP study (sweeps/numpy_mlp.yaml, family
trainables/numpy_mlp.py):

- `classification_report`: per-class precision, recall and F1 (and their macro
  average) on the training set and the test set after the last epoch, one panel per
  model (`options: {by: axis}`, default the study's grid axes), mean over seeds.
  Computed from the confusion matrices the trials report (`final_train_confusion`,
  `final_confusion`); the numbers are also written to `classification_report.csv`
  beside the PNG.
- `loss_per_iteration`: the minibatch loss against the optimizer step from
  steps.parquet, one colour per `hue` value (mean over seeds; the thin line is the
  logged loss, the thick one its running mean), log y; a top axis gives epochs.

    .venv/bin/python -m analysis report results/numpy_mlp-quick
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from analysis.collect import read_table
from analysis.figures import label, log_axis, register_figure, save_figure
from analysis.studies.errors import as_matrix, model_keys

SPLITS = {"train": "final_train_confusion", "test": "final_confusion"}
METRICS = ("precision", "recall", "f1")


def classification_report(confusion: np.ndarray) -> pd.DataFrame:
    """Per class (rows of `confusion` = true class, columns = predicted):
    precision = TP / predicted, recall = TP / true, F1 = their harmonic mean, support
    = true count; then the macro average (unweighted mean over classes, support =
    total). A class never predicted has precision 0 (sklearn's zero_division=0)."""
    counts = np.asarray(confusion, dtype=float)
    tp = np.diag(counts)
    predicted, support = counts.sum(axis=0), counts.sum(axis=1)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    both = precision + recall
    f1 = np.divide(2 * precision * recall, both, out=np.zeros_like(tp), where=both > 0)
    table = pd.DataFrame({"class": [str(c) for c in range(len(tp))], "precision": precision, "recall": recall,
                          "f1": f1, "support": support.astype(int)})
    macro = {"class": "macro avg", **{m: table[m].mean() for m in METRICS}, "support": int(support.sum())}
    return pd.concat([table, pd.DataFrame([macro])], ignore_index=True)


def reports(trials: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Long table: model keys, split, class, precision, recall, f1, support, n_seeds;
    the mean over each cell's ok trials."""
    ok = trials[trials["status"] == "ok"]
    parts = []
    for split, column in SPLITS.items():
        if column not in ok:
            continue
        for _, trial in ok[ok[column].map(lambda v: v is not None and len(v) > 0)].iterrows():
            table = classification_report(as_matrix(trial[column]))
            parts.append(table.assign(split=split, **{k: trial[k] for k in keys}))
    if not parts:
        return pd.DataFrame()
    rows = pd.concat(parts, ignore_index=True)
    group = [*keys, "split", "class"]
    out = rows.groupby(group, sort=False).agg(**{m: (m, "mean") for m in METRICS}, support=("support", "mean"),
                                              n_seeds=("precision", "size")).reset_index()
    return out


@register_figure("classification_report")
def classification_report_figure(history: pd.DataFrame, trials: pd.DataFrame, fig_spec: dict,
                                 path: Path) -> Path | None:
    keys = model_keys(trials, fig_spec, path)
    table = reports(trials, keys)
    if table.empty:
        return None
    csv = path.with_name("classification_report.csv")
    table.round(4).to_csv(csv.with_name(csv.name + ".tmp"), index=False)
    csv.with_name(csv.name + ".tmp").replace(csv)  # atomic, like every report file
    models = table[keys].drop_duplicates().itertuples(index=False) if keys else [()]
    models = list(models)
    splits = [s for s in SPLITS if s in set(table["split"])]
    columns = [(s, m) for s in splits for m in METRICS]
    values = [v for v in table[list(METRICS)].to_numpy().ravel() if np.isfinite(v)]
    vmin = max(0.0, math.floor(min(values) * 20) / 20) if values else 0.0
    fig, axes = plt.subplots(1, len(models), figsize=(5.6 * len(models) + 1.2, 6.2), squeeze=False)
    for ax, model in zip(axes[0], models):
        cell = table
        for key, value in zip(keys, model):
            cell = cell[cell[key] == value]
        classes = list(dict.fromkeys(cell["class"]))
        grid = np.array([[cell.loc[(cell["split"] == s) & (cell["class"] == c), m].mean() for s, m in columns]
                         for c in classes])
        image = ax.imshow(grid, cmap="RdYlGn", vmin=vmin, vmax=1.0, aspect="auto")
        for i in range(grid.shape[0]):
            for j in range(grid.shape[1]):
                ax.text(j, i, f"{grid[i, j]:.3f}", ha="center", va="center", fontsize=7.5)
        ax.set_xticks(range(len(columns)), [f"{s}\n{m}" for s, m in columns], fontsize=8)
        first = ax is axes[0][0]
        ax.set_yticks(range(len(classes)), classes if first else [])  # one label column for all panels
        ax.axvline(len(METRICS) - 0.5, color="black", linewidth=1.5)  # train | test
        ax.axhline(len(classes) - 1.5, color="black", linewidth=1.0)  # classes | macro average
        n = int(cell["n_seeds"].max())
        name = ", ".join(f"{label(k)} = {v}" for k, v in zip(keys, model)) or "all trials"
        ax.set_title(f"{name}\n({'mean over ' if n > 1 else ''}{n} seed{'s' if n != 1 else ''})", fontsize=10)
        ax.set_ylabel("true class" if first else "")
    fig.colorbar(image, ax=list(axes[0]), shrink=0.8, label="score (1 = perfect)")
    fig.suptitle(fig_spec.get("title") or "Per-class precision, recall and F1 after the last epoch")
    fig.savefig(path.with_name(path.stem + ".tmp.png"), dpi=110, bbox_inches="tight")
    plt.close(fig)
    path.with_name(path.stem + ".tmp.png").replace(path)
    return path


def read_steps(study_dir: Path) -> pd.DataFrame:
    """steps.parquet of a study (written by the report beside history.parquet), or an
    empty frame when the study logged no steps."""
    path = Path(study_dir) / "steps.parquet"
    return read_table(path) if path.exists() else pd.DataFrame()


def running_mean(values: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average; the ends average over the points that exist."""
    if window <= 1 or len(values) < 3:
        return np.asarray(values, dtype=float)
    kernel = np.ones(window)
    sums = np.convolve(values, kernel, mode="same")
    counts = np.convolve(np.ones(len(values)), kernel, mode="same")
    return sums / counts


@register_figure("loss_per_iteration")
def loss_per_iteration(history: pd.DataFrame, trials: pd.DataFrame, fig_spec: dict, path: Path) -> Path | None:
    steps = read_steps(path.parent.parent)
    if steps.empty or "loss" not in steps:
        return None
    ok = set(trials.loc[trials["status"] == "ok", "trial_id"])
    steps = steps[steps["trial_id"].isin(ok)]
    if steps.empty:
        return None
    hue = fig_spec.get("hue")
    groups = list(steps.groupby(hue, sort=True)) if hue and hue in steps else [("all trials", steps)]
    colours = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(9.5, 5.0))
    for i, (value, rows) in enumerate(groups):
        mean = rows.groupby("step")["loss"].agg(["mean", "size"])
        # about 1/20 of the logged points: smooths minibatch noise, keeps epoch-scale shape
        window = max(1, len(mean) // 20)
        n = int(rows["trial_id"].nunique())
        tag = f"{label(hue)} = {value}" if hue else str(value)
        ax.plot(mean.index, mean["mean"], color=colours(i), alpha=0.25, linewidth=0.8)
        ax.plot(mean.index, running_mean(mean["mean"].to_numpy(), window), color=colours(i), linewidth=2.0,
                label=f"{tag} ({'mean of ' if n > 1 else ''}{n} seed{'s' if n != 1 else ''})")
    log_axis(ax, "y", True)
    ax.set_xlabel("iteration (optimizer step)")
    ax.set_ylabel("minibatch cross-entropy (log scale)")
    ok_trials = trials[trials["status"] == "ok"]
    if {"train_size", "batch_size"} <= set(ok_trials) and ok_trials["train_size"].nunique() == 1 \
            and ok_trials["batch_size"].nunique() == 1 and ok_trials["train_size"].notna().all():
        per_epoch = math.ceil(ok_trials["train_size"].iloc[0] / ok_trials["batch_size"].iloc[0])
        top = ax.secondary_xaxis("top", functions=(lambda s: s / per_epoch, lambda e: e * per_epoch))
        top.set_xlabel(f"epoch ({per_epoch} steps each)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center right", title="thin: logged loss; thick: running mean", title_fontsize=8)
    fig.suptitle(fig_spec.get("title") or "Minibatch loss against iteration")
    save_figure(fig, {**fig_spec, "title": None}, path)
    return path
