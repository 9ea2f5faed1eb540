"""Figure kind `final_train_test`: the last evaluation's train AND test value of each
metric against a hyperparameter, in the same panel, so the generalization gap is the
distance between two lines (capacity and batch-size studies).

    figures:
      - {kind: final_train_test, x: n_params, y: [loss, acc], logx: true,
         options: {top_labels: channels}}

`y` names metrics by their base name: `loss` draws `train_loss` and `test_loss`,
`acc` draws `train_acc` and `test_acc`; a metric without train/test versions (e.g.
`sharpness`) gets a panel with one line. Lines are means over seeds with a 95%
bootstrap band (the title says how many seeds). `options.top_labels` names a config column written on a top axis
at each x position (e.g. the channel widths behind each parameter count).
Rebuild with `python -m analysis report results/<study>`.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from analysis.figures import LABELS, label, last_evaluations, log_axis, register_figure, save_figure

LABELS.setdefault("sensitivity", "input sensitivity ||∂L/∂x||")  # mean over test images, normalized input
LABELS.setdefault("sharpness", "sharpness (top Hessian eigenvalue)")
LABELS.setdefault("sharpness_iters", "power iterations")
LABELS.setdefault("channels", "conv channels")
LABELS.setdefault("hidden", "hidden units")

_BASE_LABELS = {"loss": "cross-entropy loss", "acc": "accuracy"}
_SPLIT_STYLE = {"train": ("tab:blue", (4, 2)), "test": ("tab:orange", "")}  # colour, dashes


@register_figure("final_train_test")
def final_train_test(history: pd.DataFrame, trials: pd.DataFrame, fig_spec: dict, path: Path) -> Path | None:
    x = fig_spec["x"]
    top = (fig_spec.get("options") or {}).get("top_labels")
    last = last_evaluations(history, trials, [x, *([top] if top else [])])
    if last.empty or x not in last:
        return None
    panels = []  # (title, long frame with columns x, value, split)
    for y in fig_spec["y"]:
        splits = [s for s in ("train", "test") if f"{s}_{y}" in last and last[f"{s}_{y}"].notna().any()]
        if splits:
            long = pd.concat([pd.DataFrame({x: last[x], "value": last[f"{s}_{y}"], "split": s}) for s in splits])
            panels.append((_BASE_LABELS.get(y, label(y)), long))
        elif y in last and last[y].notna().any():
            panels.append((label(y), pd.DataFrame({x: last[x], "value": last[y], "split": None})))
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels) + 0.5, 3.8), squeeze=False)
    for ax, (ylabel, long) in zip(axes[0], panels):
        if long["split"].notna().any():
            present = list(dict.fromkeys(long["split"]))
            sns.lineplot(long, x=x, y="value", hue="split", style="split", errorbar=("ci", 95), marker="o", ax=ax,
                         hue_order=present, style_order=present,
                         palette={s: _SPLIT_STYLE[s][0] for s in present},
                         dashes={s: _SPLIT_STYLE[s][1] for s in present})
            ax.legend(title=None)
        else:
            sns.lineplot(long, x=x, y="value", errorbar=("ci", 95), marker="o", ax=ax, color="tab:green")
        log_axis(ax, "x", fig_spec.get("logx"))
        log_axis(ax, "y", fig_spec.get("logy"))
        ax.set_xlabel(label(x))
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if top:
            _top_labels(ax, last, x, top)
    n_seeds = int(last.groupby(x).size().max())
    title = fig_spec.get("title") or f"final train and test metrics vs {label(x)}"
    title += f" (mean of {n_seeds} seeds, 95% band)" if n_seeds > 1 else " (1 seed)"
    fig_spec = {**fig_spec, "title": title}
    save_figure(fig, fig_spec, path)
    return path


def _top_labels(ax, last: pd.DataFrame, x: str, column: str) -> None:
    """A top axis naming the `column` value at each x position (e.g. channels 16-32
    above 5130 parameters)."""
    pairs = last[[x, column]].drop_duplicates(x).sort_values(x)
    top = ax.secondary_xaxis("top")
    top.set_xticks(pairs[x].tolist(), [str(v) for v in pairs[column]], rotation=90, fontsize=7)
    top.minorticks_off()
    top.set_xlabel(label(column), fontsize=8)
