"""Figure kinds of the interpolation study (sweeps/interpolation.yaml, family
trainables/interpolation.py):

- `interpolation`: loss (log axis with `logy: true`) and accuracy of
  theta(alpha) = (1 - alpha) theta_A + alpha theta_B against alpha, training subset
  solid and test set dashed, mean over seeds with a 95% band; alpha = 0 (A) and
  alpha = 1 (B) are marked with their batch size and learning rate. Optional `hue`:
  a line colour per value of a grid axis (e.g. same_init).
- `interpolation_training`: the training curves of A and B, `y` (default train loss
  and test accuracy) against epoch; `logy: true` puts the loss panels on a log axis.

Only the rows of each phase are drawn (the training rows have no alpha).

    .venv/bin/python -m analysis report results/interpolation-quick
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import matplotlib.ticker as mticker
import pandas as pd
import seaborn as sns

from analysis.figures import label, log_axis, ok_rows, palette_column, register_figure, save_figure

_SPLITS = {"train": "training subset", "test": "test set"}


def _setting(trials: pd.DataFrame, solution: str) -> str:
    """'batch 64, lr 0.001' when every ok trial trained this solution the same way."""
    ok = trials[trials["status"] == "ok"]
    parts = []
    for key, name in ((f"batch_size_{solution}", "batch"), (f"lr_{solution}", "lr")):
        if key in ok and ok[key].nunique() == 1:
            parts.append(f"{name} {ok[key].iloc[0]:g}")
    return ", ".join(parts)


def _n_seeds(frame: pd.DataFrame) -> str:
    n = frame["seed"].nunique() if "seed" in frame else frame["trial_id"].nunique()
    return f"mean over {n} seed{'s' if n != 1 else ''}" + (", 95% band" if n > 1 else "")


@register_figure("interpolation")
def interpolation(history: pd.DataFrame, trials: pd.DataFrame, fig_spec: dict, path: Path) -> Path | None:
    if "phase" not in history or "alpha" not in history:
        return None
    rows = ok_rows(history, trials)
    rows = rows[rows["phase"] == "interpolation"]
    if rows.empty:
        return None
    long = pd.concat([rows.assign(split=_SPLITS[s], loss=rows[f"{s}_loss"], acc=rows[f"{s}_acc"]) for s in _SPLITS],
                     ignore_index=True)
    hue = palette_column(long, fig_spec.get("hue")) if fig_spec.get("hue") else "split"
    fig, axes = plt.subplots(1, 2, figsize=(12.5, 4.4))
    for c, (ax, metric) in enumerate(zip(axes, ("loss", "acc"))):
        sns.lineplot(long, x="alpha", y=metric, hue=hue, style="split", errorbar=("ci", 95), ax=ax, marker="o",
                     markersize=3, palette="viridis" if hue != "split" else ["tab:blue", "tab:orange"],
                     legend=c == 1)
        if metric == "loss" and fig_spec.get("logy"):
            log_axis(ax, "y", True)
        if metric == "loss":
            ax.set_ylabel("cross-entropy loss" + (" (log scale)" if fig_spec.get("logy") else ""))
        else:
            ax.set_ylabel("accuracy")
        ax.set_xlabel(r"$\alpha$   (weights $\theta = (1 - \alpha)\,\theta_A + \alpha\,\theta_B$)")
        for alpha, solution in ((0.0, "a"), (1.0, "b")):
            ax.axvline(alpha, color="0.25", linestyle=":", linewidth=1.2)
            setting = _setting(trials, solution)
            ax.text(alpha, 1.01, f"{solution.upper()}" + (f"\n{setting}" if setting else ""),
                    transform=ax.get_xaxis_transform(), ha="center", va="bottom", fontsize=8)
        ax.grid(alpha=0.3)
    legend = axes[1].get_legend()
    if legend:
        sns.move_legend(axes[1], "upper left", bbox_to_anchor=(1.02, 1.0), title=None)
    fig.suptitle((fig_spec.get("title") or "Loss and accuracy along the line from solution A to solution B")
                 + f" ({_n_seeds(rows)})")
    save_figure(fig, {**fig_spec, "title": None}, path)  # suptitle already drawn
    return path


@register_figure("interpolation_training")
def interpolation_training(history: pd.DataFrame, trials: pd.DataFrame, fig_spec: dict, path: Path) -> Path | None:
    if "phase" not in history:
        return None
    rows = ok_rows(history, trials)
    rows = rows[rows["phase"].isin(["A", "B"])].copy()
    ys = [y for y in (fig_spec.get("y") or ["train_loss", "test_acc"]) if y in rows and rows[y].notna().any()]
    if rows.empty or not ys:
        return None
    names = {s.upper(): f"{s.upper()}: {_setting(trials, s)}".rstrip(": ") for s in ("a", "b")}
    rows["solution"] = rows["phase"].map(names)
    fig, axes = plt.subplots(1, len(ys), figsize=(4.6 * len(ys) + 2.0, 3.8), squeeze=False)
    for c, (ax, y) in enumerate(zip(axes[0], ys)):
        sns.lineplot(rows, x="epoch", y=y, hue="solution", hue_order=list(names.values()), errorbar=("ci", 95),
                     ax=ax, marker="o", markersize=4, palette=["tab:green", "tab:purple"], legend=c == len(ys) - 1)
        if y.endswith("_loss") and fig_spec.get("logy"):
            log_axis(ax, "y", True)
        ax.xaxis.set_major_locator(mticker.MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(label(y) + (" (log scale)" if y.endswith("_loss") and fig_spec.get("logy") else ""))
        ax.grid(alpha=0.3)
    if axes[0][-1].get_legend():
        sns.move_legend(axes[0][-1], "upper left", bbox_to_anchor=(1.02, 1.0), title="solution")
    fig.suptitle((fig_spec.get("title") or "Training of the two endpoints") + f" ({_n_seeds(rows)})")
    save_figure(fig, {**fig_spec, "title": None}, path)  # suptitle already drawn
    return path
