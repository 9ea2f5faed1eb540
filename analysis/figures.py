"""The standard figures, as code. Each figure spec (from the study's spec) becomes
one PNG; lines are means over seeds with a 95% bootstrap confidence band.

- `curves`: metrics against epoch, a line per `hue` value, a panel per `col` value.
- `final`: the last evaluation's metrics against a hyperparameter `x`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI
import matplotlib.ticker  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from trainables.registry import Registry  # noqa: E402

LABELS = {
    "test_acc": "test accuracy", "train_acc": "train accuracy", "val_acc": "validation accuracy",
    "gap_acc": "generalization gap (train acc - test acc)", "gap_loss": "generalization gap (test loss - train loss)",
    "weight_norm": "weight norm ||w||_2", "grad_norm": "gradient norm (epoch mean)",
    "train_loss": "train loss", "test_loss": "test loss", "val_loss": "validation loss",
    "weight_decay": "weight decay", "train_size": "training images", "lr": "learning rate",
    "n_params": "parameters", "batch_size": "batch size",
}


def label(column: str) -> str:
    return LABELS.get(column, column.replace("_", " "))


def _ok(frame: pd.DataFrame, trials: pd.DataFrame) -> pd.DataFrame:
    ok_ids = set(trials.loc[trials["status"] == "ok", "trial_id"])
    return frame[frame["trial_id"].isin(ok_ids)]


def _palette_column(frame: pd.DataFrame, hue: str | None) -> str | None:
    """Hue as strings in sorted numeric order, so 0 and 1e-4 get distinct, ordered colours."""
    if hue is None:
        return None
    values = sorted(frame[hue].dropna().unique(), key=lambda v: (isinstance(v, str), v))
    def text(v) -> str:
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    frame[f"{hue} "] = pd.Categorical(frame[hue].map(text), categories=list(dict.fromkeys(map(text, values))))
    return f"{hue} "


def _palette(frame: pd.DataFrame, hue: str | None) -> str | None:
    """An ordered colour map for numbers; distinct colours for names (variants such as
    architectures have no order, and neighbours on viridis are hard to tell apart)."""
    if hue is None:
        return None
    return "tab10" if frame[hue].dropna().map(lambda v: isinstance(v, str)).all() else "viridis"


def _log_axis(ax, axis: str, base) -> None:
    """A log axis with labelled ticks however narrow the range. base: True/10 for
    decades, 2 for powers of two (batch sizes). Call it after plotting: base-10 ticks
    are chosen from the data limits (1-2-5 per decade over wide ranges, evenly spaced
    round values such as 0.2, 0.25, 0.3 within about a decade)."""
    if not base:
        return
    scale_axis = getattr(ax, f"{axis}axis")
    getattr(ax, f"set_{axis}scale")("log", base=2 if base == 2 else 10)
    if base == 2:
        scale_axis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        scale_axis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        return
    low, high = getattr(ax, f"get_{axis}lim")()
    narrow = low > 0 and np.log10(high / low) <= 1.2
    scale_axis.set_major_locator(matplotlib.ticker.MaxNLocator(nbins=6) if narrow
                                 else matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    scale_axis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    scale_axis.set_minor_locator(matplotlib.ticker.NullLocator())


def curves(history: pd.DataFrame, trials: pd.DataFrame, fig_spec: dict, path: Path) -> Path | None:
    data = _ok(history, trials).copy()
    x = fig_spec.get("x") or "epoch"
    if x not in data:
        return None
    ys = [y for y in fig_spec["y"] if y in data and data[y].notna().any()]
    if data.empty or not ys:
        return None
    hue = _palette_column(data, fig_spec.get("hue"))
    col = fig_spec.get("col")
    cols = sorted(data[col].dropna().unique()) if col else [None]
    fig, axes = plt.subplots(len(ys), len(cols), figsize=(4.2 * len(cols) + 1.5, 3.0 * len(ys)),
                             squeeze=False, sharex=True, sharey="row")
    for r, y in enumerate(ys):
        for c, value in enumerate(cols):
            ax = axes[r][c]
            panel = data if col is None else data[data[col] == value]
            # markers: a trial stopped early by a scheduler may have a single point
            sns.lineplot(panel, x=x, y=y, hue=hue, errorbar=("ci", 95), ax=ax, marker="o", markersize=3,
                         palette=_palette(data, fig_spec.get("hue")), legend=(r == 0 and c == len(cols) - 1))
            _log_axis(ax, "x", fig_spec.get("logx"))
            _log_axis(ax, "y", fig_spec.get("logy"))
            ax.set_ylabel(label(y) if c == 0 else "")
            ax.set_xlabel(label(x) if r == len(ys) - 1 else "")
            if r == 0 and col:
                ax.set_title(f"{label(col)} = {value:g}" if isinstance(value, float) else f"{label(col)} = {value}")
            ax.grid(alpha=0.3)
    if hue:
        legend = axes[0][-1].get_legend()
        if legend:
            legend.set_title(label(fig_spec["hue"]))
            sns.move_legend(axes[0][-1], "upper left", bbox_to_anchor=(1.02, 1.0))
    _save(fig, fig_spec, path)
    return path


def last_evaluations(history: pd.DataFrame, trials: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Each ok trial's last report, with the trial-level `columns` (e.g. n_params)
    that the history lacks. History rows are in report order within a trial
    (collect.py), so "last" needs no sort (and an epoch sort would misorder
    families that report several rows per epoch)."""
    last = _ok(history, trials).groupby("trial_id").tail(1).copy()
    wanted = [c for c in dict.fromkeys(columns) if c not in last and c in trials]
    if wanted:
        last = last.merge(trials[["trial_id", *wanted]], on="trial_id")
    return last


def final(history: pd.DataFrame, trials: pd.DataFrame, fig_spec: dict, path: Path) -> Path | None:
    x = fig_spec["x"]
    last = last_evaluations(history, trials, [x])
    ys = [y for y in fig_spec["y"] if y in last and last[y].notna().any()]
    if last.empty or not ys:
        return None
    hue = _palette_column(last, fig_spec.get("hue"))
    logx = fig_spec.get("logx", False)
    zero = bool(logx and (last[x] <= 0).any())
    stand_in = None
    if zero:
        # log axes cannot show 0: place it one decade below the smallest positive value
        positive = last.loc[last[x] > 0, x]
        stand_in = positive.min() / 10 if len(positive) else 1e-6
        last[x] = last[x].where(last[x] > 0, stand_in)
    fig, axes = plt.subplots(1, len(ys), figsize=(4.5 * len(ys) + 1.5, 3.4), squeeze=False)
    for c, y in enumerate(ys):
        ax = axes[0][c]
        sns.lineplot(last, x=x, y=y, hue=hue, marker="o", errorbar=("ci", 95), ax=ax,
                     palette=_palette(last, fig_spec.get("hue")), legend=(c == len(ys) - 1))
        _log_axis(ax, "x", logx)
        _log_axis(ax, "y", fig_spec.get("logy"))
        if logx:
            if zero:  # label the stand-in position "0"; grid values make readable ticks
                ticks = sorted(last[x].unique())
                ax.set_xticks(ticks, [("0" if t == stand_in else f"{t:g}") for t in ticks])
                ax.minorticks_off()
        ax.set_xlabel(label(x))
        ax.set_ylabel(label(y))
        ax.grid(alpha=0.3)
    if hue and axes[0][-1].get_legend():
        axes[0][-1].get_legend().set_title(label(fig_spec["hue"]))
        sns.move_legend(axes[0][-1], "upper left", bbox_to_anchor=(1.02, 1.0))
    _save(fig, fig_spec, path)
    return path


def _save(fig, fig_spec: dict, path: Path) -> None:
    if fig_spec.get("title"):
        fig.suptitle(fig_spec["title"])
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)  # atomic: a crash never leaves half a PNG under the real name


FigureFunction = Callable[[pd.DataFrame, pd.DataFrame, dict, Path], "Path | None"]
# Figure kinds. A study module adds its special ones (a confusion matrix, weight
# templates, ...) with @register_figure("kind"): the function gets (history, trials,
# its figure spec, the PNG path) and returns the path it wrote, or None when the data
# hold nothing to draw. The study folder is `path.parent.parent` (for artifacts
# such as checkpoints).
KINDS: Registry[FigureFunction] = Registry("figure kind")
KINDS.add("curves", curves)
KINDS.add("final", final)
register_figure = KINDS.register


def figure_name(index: int, fig_spec: dict) -> str:
    if fig_spec["kind"] not in ("curves", "final"):
        return f"{index + 1:02d}-{fig_spec['kind']}.png"
    what = fig_spec.get("x") or "epoch"
    return f"{index + 1:02d}-{fig_spec['kind']}-{'-'.join(fig_spec['y'])}-vs-{what}.png"


def default_figures(study: dict) -> list[dict]:
    """When a spec lists no figures: the test metric against epoch by the first grid axis."""
    grid = list(study["spec"].get("grid") or {})
    return [{"kind": "curves", "y": ["test_acc", "gap_acc"], "hue": grid[0] if grid else None,
             "col": grid[1] if len(grid) > 1 else None}]
