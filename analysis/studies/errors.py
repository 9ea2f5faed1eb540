"""Figure kinds about the errors of the best model of a study (sweeps/models.yaml):

- `confusion`: its test confusion matrix (counts in the cells, colour = fraction of
  the true class on a log scale, so the rare confusions stand out);
- `per_class`: its test accuracy on each digit against epoch (mean over seeds, 95%
  band): which digits are learned first;
- `misclassified`: a gallery of the test images it got wrong with the highest
  confidence, titled "true 4 / pred 9 (0.98)".

The best model is the grid cell (by default every grid axis of the study; set
`options: {by: [axis, ...]}` to choose) with the highest mean final test accuracy
over its seeds; each figure names it in its title. `confusion` and `misclassified`
need the probe `confusion` (`probes: [confusion]`), `per_class` needs `per_class: true`.

    python -m analysis report results/models-quick
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import matplotlib.colors
import matplotlib.ticker
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from analysis.figures import label, register_figure, save_figure
from analysis.report import column_format, format_mean_std

NUM_CLASSES = 10
CLASS_NAMES = {
    "mnist": [str(d) for d in range(10)],
    "fashion_mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                      "Ankle boot"],
}
# Gallery size: the probe keeps 24 per trial (trainables.probes.errors.MISCLASSIFIED_TOP_K).
GALLERY_IMAGES = 24
GALLERY_COLUMNS = 6


class Best(NamedTuple):
    trials: pd.DataFrame  # the best cell's ok trials (one per seed)
    name: str  # e.g. "architecture = cnn"
    mean: float  # mean final test accuracy over its seeds
    std: float
    n: int

    def title(self) -> str:
        acc = format_mean_std(self.mean, self.std, self.n, column_format([self.mean]))  # as in the report's table
        return f"best model: {self.name} (test acc {acc}, n={self.n})"


def model_keys(trials: pd.DataFrame, fig_spec: dict, path: Path) -> list[str]:
    """The config columns that tell models apart (what `best_model` groups by): the
    figure spec's `options.by`, else the study's grid axes (from the study.json two
    folders above the figure `path`); never `seed`, nor a column `trials` lacks."""
    by = (fig_spec.get("options") or {}).get("by")
    if by is None:
        study_file = path.parent.parent / "study.json"
        grid = json.loads(study_file.read_text())["spec"].get("grid") or {} if study_file.exists() else {}
        by = list(grid)
    keys = [by] if isinstance(by, str) else list(by)
    return [k for k in keys if k in trials and k != "seed"]


def best_model(trials: pd.DataFrame, keys: list[str], need: str | None = None) -> Best | None:
    """The cell of `keys` with the highest mean final test accuracy over its ok trials
    (those that have column `need`, when given); None when there is none."""
    ok = trials[trials["status"] == "ok"] if "status" in trials else trials
    if need is not None:
        # list-valued probe columns: a trial without the probe holds None or NaN
        ok = ok[ok[need].map(lambda v: isinstance(v, (list, np.ndarray)))] if need in ok else ok.iloc[:0]
    ok = ok[ok["final_test_acc"].notna()] if "final_test_acc" in ok else ok.iloc[:0]
    if ok.empty:
        return None
    if not keys:
        acc = ok["final_test_acc"]
        return Best(ok, "all trials", float(acc.mean()), float(acc.std()) if len(ok) > 1 else 0.0, len(ok))
    stats = ok.groupby(keys, dropna=False)["final_test_acc"].agg(["mean", "std", "size"])
    cell = stats["mean"].idxmax()
    cell = cell if isinstance(cell, tuple) else (cell,)
    chosen = ok
    for key, value in zip(keys, cell):
        chosen = chosen[chosen[key].isna()] if pd.isna(value) else chosen[chosen[key] == value]
    row = stats.loc[cell if len(keys) > 1 else cell[0]]
    name = ", ".join(f"{k} = {v:g}" if isinstance(v, float) else f"{k} = {v}" for k, v in zip(keys, cell))
    return Best(chosen, name, float(row["mean"]), float(row["std"]) if row["size"] > 1 else 0.0, int(row["size"]))


def _class_names(best: Best) -> list[str]:
    dataset = best.trials["dataset"].iloc[0] if "dataset" in best.trials else "mnist"
    return CLASS_NAMES.get(dataset, [str(c) for c in range(NUM_CLASSES)])


def as_matrix(value: Sequence[Sequence[float]]) -> np.ndarray:
    """A matrix column's value (a confusion matrix): a nested list, or the array of
    arrays Parquet gives back, as a 2-D float array."""
    return np.array([np.asarray(row, dtype=float) for row in value])


@register_figure("confusion")
def confusion(history: pd.DataFrame, trials: pd.DataFrame, fig_spec: dict, path: Path) -> Path | None:
    best = best_model(trials, model_keys(trials, fig_spec, path), need="final_confusion")
    if best is None:
        return None
    counts = np.mean([as_matrix(m) for m in best.trials["final_confusion"]], axis=0)  # mean over seeds
    per_class = counts.sum(axis=1, keepdims=True)
    fraction = np.divide(counts, per_class, out=np.zeros_like(counts), where=per_class > 0)
    names = _class_names(best)
    fig, ax = plt.subplots(figsize=(8.2, 7.0))
    # Log colour: the diagonal is near 1 and the confusions are 1e-3..1e-2 of a
    # class; on a linear scale they would all look alike. Zero cells stay white.
    floor = max(fraction[fraction > 0].min(), 1e-4) if (fraction > 0).any() else 1e-4
    cmap = plt.get_cmap("Blues").with_extremes(bad="white")
    image = ax.imshow(np.ma.masked_equal(fraction, 0.0), cmap=cmap,
                      norm=matplotlib.colors.LogNorm(vmin=floor, vmax=1.0))
    whole = best.n == 1 or np.allclose(counts, np.round(counts))
    for i in range(counts.shape[0]):
        for j in range(counts.shape[1]):
            if counts[i, j] > 0:
                text = f"{counts[i, j]:.0f}" if whole else f"{counts[i, j]:.1f}"
                dark = fraction[i, j] > 0.3
                ax.text(j, i, text, ha="center", va="center", fontsize=8, color="white" if dark else "black")
    ticks = range(len(names))
    ax.set_xticks(ticks, names, rotation=45 if max(map(len, names)) > 2 else 0, ha="right" if max(map(len, names)) > 2 else "center")
    ax.set_yticks(ticks, names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    bar = fig.colorbar(image, ax=ax, shrink=0.85)
    bar.set_label("fraction of the true class's test images (log)")
    total = int(round(counts.sum()))
    seeds = f", mean over {best.n} seeds" if best.n > 1 else ""
    ax.set_title(f"Test confusion matrix, {best.title()}\ncounts of {total} test images{seeds}", fontsize=10)
    save_figure(fig, fig_spec, path)
    return path


@register_figure("per_class")
def per_class(history: pd.DataFrame, trials: pd.DataFrame, fig_spec: dict, path: Path) -> Path | None:
    columns = [f"test_acc_{c}" for c in range(NUM_CLASSES)]
    if history.empty or not all(c in history for c in columns):
        return None
    best = best_model(trials, model_keys(trials, fig_spec, path))
    if best is None:
        return None
    rows = history[history["trial_id"].isin(best.trials["trial_id"])]
    rows = rows[rows[columns].notna().all(axis=1)]
    if rows.empty:
        return None
    names = _class_names(best)
    long = rows.melt(id_vars=["trial_id", "epoch"], value_vars=columns, var_name="class", value_name="acc")
    long["class"] = long["class"].str.removeprefix("test_acc_").astype(int)
    by_epoch = long.groupby(["class", "epoch"])["acc"].mean().unstack("epoch")
    first, last = by_epoch.iloc[:, 0], by_epoch.iloc[:, -1]
    # Legend entries ordered by the first evaluation's accuracy (learned first on
    # top), each with its first -> last accuracy.
    order = first.sort_values(ascending=False).index
    entry = {c: f"{names[c]}: {first[c]:.3f} → {last[c]:.3f}" for c in by_epoch.index}
    long["class "] = pd.Categorical(long["class"].map(entry), categories=[entry[c] for c in order])
    palette = dict(zip((entry[c] for c in range(NUM_CLASSES)), sns.color_palette("tab10", NUM_CLASSES)))
    fig, ax = plt.subplots(figsize=(9.0, 5.2))
    sns.lineplot(long, x="epoch", y="acc", hue="class ", palette=palette, errorbar=("ci", 95), marker="o",
                 markersize=3, ax=ax)
    ax.set_xlabel(label("epoch"))
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_ylabel("test accuracy on the class's images")
    ax.grid(alpha=0.3)
    legend = ax.get_legend()
    legend.set_title("class: first → last epoch\n(learned first on top)")
    sns.move_legend(ax, "upper left", bbox_to_anchor=(1.02, 1.0))
    seeds = f"mean over {best.n} seeds, 95% band" if best.n > 1 else "one seed"
    ax.set_title(f"Per-class test accuracy, {best.title()}\n{seeds}", fontsize=10)
    save_figure(fig, fig_spec, path)
    return path


def pooled_mistakes(best: Best) -> pd.DataFrame:
    """The best model's confident errors over all its seeds: each test image once, at
    its highest confidence, with the number of seeds that listed it; most confident first."""
    parts = []
    for _, trial in best.trials.iterrows():
        if not isinstance(trial.get("final_misclassified_idx"), (list, np.ndarray)):
            continue
        parts.append(pd.DataFrame({
            "idx": np.asarray(trial["final_misclassified_idx"], dtype=int),
            "true": np.asarray(trial["final_misclassified_true"], dtype=int),
            "pred": np.asarray(trial["final_misclassified_pred"], dtype=int),
            "conf": np.asarray(trial["final_misclassified_conf"], dtype=float),
        }))
    if not parts:
        return pd.DataFrame(columns=["idx", "true", "pred", "conf", "seeds"])
    pooled = pd.concat(parts, ignore_index=True)
    seeds = pooled.groupby("idx").size().rename("seeds")
    top = pooled.sort_values("conf", ascending=False, kind="stable").drop_duplicates("idx")
    return top.join(seeds, on="idx").reset_index(drop=True)


@register_figure("misclassified")
def misclassified(history: pd.DataFrame, trials: pd.DataFrame, fig_spec: dict, path: Path) -> Path | None:
    best = best_model(trials, model_keys(trials, fig_spec, path), need="final_misclassified_idx")
    if best is None:
        return None
    k = int((fig_spec.get("options") or {}).get("images", GALLERY_IMAGES))
    mistakes = pooled_mistakes(best).head(k)
    if mistakes.empty:
        return None
    from trainables.data import load_dataset

    dataset = best.trials["dataset"].iloc[0] if "dataset" in best.trials else "mnist"
    images = load_dataset(dataset).test_x
    names = _class_names(best)
    cols = min(GALLERY_COLUMNS, len(mistakes))
    rows = -(-len(mistakes) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.9 * cols, 2.05 * rows + 1.0), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, m in zip(axes.flat, mistakes.itertuples()):
        ax.imshow(images[m.idx], cmap="gray_r", vmin=0, vmax=255)
        ax.set_title(f"true {names[m.true]} / pred {names[m.pred]} ({m.conf:.2f})", fontsize=8)
        ax.text(0.02, 0.02, f"#{m.idx}", transform=ax.transAxes, fontsize=6, color="0.4")
    seeds = (f"pooled over {best.n} seeds: each image once, at its highest confidence"
             if best.n > 1 else "one seed")
    fig.suptitle(f"Most confidently misclassified test images, {best.title()}\n"
                 f"confidence = softmax probability of the predicted class; #n = index in the {dataset} test set; "
                 f"{seeds}", fontsize=9)
    save_figure(fig, fig_spec, path)
    return path
