"""The standard figures, as code. Each figure spec (from the study's spec) becomes
one PNG; lines are means over seeds with a 95% bootstrap confidence band.

- `curves`: metrics against epoch, a line per `hue` value, a panel per `col` value.
- `final`: the last evaluation's metrics against a hyperparameter `x`.

A tuned study's kinds (`isolation`, `axis`) are in analysis/studies/tuned.py.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Callable

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI
import matplotlib.axes  # noqa: E402
import matplotlib.figure  # noqa: E402
import matplotlib.font_manager  # noqa: E402
import matplotlib.textpath  # noqa: E402
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


def ok_rows(frame: pd.DataFrame, trials: pd.DataFrame) -> pd.DataFrame:
    """The rows of `frame` (history, steps, ...) that belong to trials whose status
    is ok: diverged and failed trials stay out of means and figures."""
    ok_ids = set(trials.loc[trials["status"] == "ok", "trial_id"])
    return frame[frame["trial_id"].isin(ok_ids)]


def palette_column(frame: pd.DataFrame, hue: str | None) -> str | None:
    """Add a copy of column `hue` as ordered text categories (sorted numerically, so
    0 and 1e-4 get distinct, ordered colours and legend entries) to `frame`, in
    place; returns the new column's name (`hue` plus a space), or None without a hue."""
    if hue is None:
        return None
    values = sorted(frame[hue].dropna().unique(), key=lambda v: (isinstance(v, str), v))
    def text(v) -> str:
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    frame[f"{hue} "] = pd.Categorical(frame[hue].map(text), categories=list(dict.fromkeys(map(text, values))))
    return f"{hue} "


def palette_name(frame: pd.DataFrame, hue: str | None) -> str | None:
    """An ordered colour map for numbers; distinct colours for names (variants such as
    architectures have no order, and neighbours on viridis are hard to tell apart)."""
    if hue is None:
        return None
    return "tab10" if frame[hue].dropna().map(lambda v: isinstance(v, str)).all() else "viridis"


# ---- log axes ------------------------------------------------------------------------
# Tick labels are chosen when the figure is drawn, from the axis's size at that moment
# (after tight_layout and legends have taken their room): the densest of a list of
# tick sets whose labels keep a gap between neighbours. The labels are short (5k,
# 10k, 1M, 2e-5), so more of them fit.

_SUFFIXES = ((1e9, "G"), (1e6, "M"), (1e3, "k"))
# Decades (1-2-5, 1-3, 1, every 2nd decade, ...); ranges this narrow (in decades) may
# get evenly spaced round values instead, as on a linear axis, where more of them fit.
_NARROW_DECADES = 1.2
_GAP_EM = 0.6  # the least space between two neighbouring labels, in font sizes


def _sig(value: float, digits: int) -> str:
    """`value` to `digits` significant digits, trailing zeros dropped; below 0.001 in
    scientific form without exponent padding (2e-5 and 3e-4, not 2e-05 and 0.0003)."""
    text = f"{value:.{digits - 1}e}" if abs(value) < 1e-3 else f"{value:.{digits}g}"
    if "e" in text:
        mantissa, exponent = text.split("e")
        if "." in mantissa:
            mantissa = mantissa.rstrip("0").rstrip(".")
        text = f"{mantissa}e{int(exponent)}"
    return text


def tick_text(value: float, digits: int = 3) -> str:
    """A short tick label: 5000 -> '5k', 1e6 -> '1M', 2.5e-5 -> '2.5e-5', 0.25 -> '0.25',
    1e12 -> '1e12';
    `digits` significant digits at most, trailing zeros dropped."""
    if value == 0:
        return "0"
    if abs(value) < 1e12:
        for scale, suffix in _SUFFIXES:
            if abs(value) >= scale * (1 - 1e-9):
                return _sig(value / scale, digits) + suffix
    return _sig(value, digits)


def _power_of_two(value: float) -> int | None:
    if value <= 0:
        return None
    exponent = round(np.log2(value))
    return exponent if np.isclose(value, 2.0 ** exponent, rtol=1e-9, atol=0) else None


class _TickText(matplotlib.ticker.Formatter):
    """Short labels (`tick_text`) with as many digits as it takes to tell the ticks
    apart; for base 2, whole numbers (64, 1024) and 2^n beyond them; `zero` (a stand-in
    position on a log axis) reads '0'."""

    def __init__(self, base: int, zero: float | None = None):
        self.base, self.zero, self.digits = base, zero, 3

    def set_locs(self, locs) -> None:
        super().set_locs(locs)
        self.digits = 3
        for digits in range(3, 9):  # the fewest digits that keep the labels distinct
            self.digits = digits
            texts = [self(v) for v in locs]
            if len(set(texts)) == len(texts):
                break

    def __call__(self, value: float, pos=None) -> str:
        if self.zero is not None and np.isclose(value, self.zero, rtol=1e-9, atol=0):
            return "0"
        if self.base == 2:
            exponent = _power_of_two(value)
            if exponent is not None and (exponent > 16 or exponent < -6):
                return f"$2^{{{exponent}}}$"
            if float(value).is_integer() and abs(value) < 1e5:
                return str(int(value))
        return tick_text(value, self.digits)


class _ReadableLogTicks(matplotlib.ticker.Locator):
    """Major ticks of a log axis whose labels never overlap: at draw time, the densest
    candidate tick set whose labels (formatted by `formatter`, measured in the tick
    label font) keep a gap of `_GAP_EM` font sizes between neighbours along an axis of
    the current length. `fixed`: take the candidates from these values only (every
    value, every 2nd, ...)."""

    def __init__(self, base: int, formatter: _TickText, fixed: list[float] | None = None):
        self.base, self.formatter = base, formatter
        self.fixed = sorted(float(v) for v in fixed) if fixed is not None else None

    def __call__(self):
        return self.tick_values(*self.axis.get_view_interval())

    def nonsingular(self, vmin: float, vmax: float) -> tuple[float, float]:
        """Autoscaling limits as for any log axis (positive; a decade around one value)."""
        log = matplotlib.ticker.LogLocator(base=self.base)
        log.set_axis(self.axis)
        return log.nonsingular(vmin, vmax)

    def tick_values(self, vmin: float, vmax: float) -> np.ndarray:
        vmin, vmax = sorted((vmin, vmax))
        if vmax <= 0:
            return np.array([])
        vmin = vmin if vmin > 0 else vmax / 1e3  # a log view cannot reach 0
        chosen, fallback = None, None
        for family in self._candidates(vmin, vmax):
            for ticks in family:  # densest first: the first that fits is the family's best
                inside = ticks[(ticks >= vmin * (1 - 1e-9)) & (ticks <= vmax * (1 + 1e-9))]
                if len(inside) == 0:
                    continue
                if self._fits(inside, vmin, vmax):
                    if chosen is None or len(inside) > len(chosen):
                        chosen = inside
                    break
                if fallback is None or len(inside) < len(fallback):
                    fallback = inside
            if self.base == 2 and chosen is not None and len(chosen) >= 2:
                break  # powers of two; round values only for less than a doubling
        if chosen is not None:
            return chosen
        if fallback is None:
            return np.array([])
        return fallback[[len(fallback) // 2]]  # nothing fits: one label cannot overlap

    def _candidates(self, vmin: float, vmax: float) -> list[list[np.ndarray]]:
        """Families of tick sets, each densest first; the densest set that fits wins."""
        if self.fixed is not None:
            return [[np.array(self.fixed[::stride]) for stride in range(1, len(self.fixed) + 1)]]
        linear = [ticks[ticks > 0] for ticks in (  # round values, as on a linear axis
            matplotlib.ticker.MaxNLocator(nbins=bins, steps=[1, 2, 2.5, 5, 10]).tick_values(vmin, vmax)
            for bins in range(6, 0, -1))]
        if self.base == 2:
            low, high = int(np.floor(np.log2(vmin))), int(np.ceil(np.log2(vmax)))
            powers = [np.array([2.0 ** k for k in range(low, high + 1) if k % stride == 0])
                      for stride in range(1, max(high - low, 1) + 1)]
            return [powers, linear]  # linear: for less than a doubling
        low, high = int(np.floor(np.log10(vmin))), int(np.ceil(np.log10(vmax)))
        decades = [(1, (1.0, 2.0, 5.0)), (1, (1.0, 3.0))] + [(s, (1.0,)) for s in range(1, max(high - low, 1) + 1)]
        wide = [np.array([m * 10.0 ** k for k in range(low, high + 1) if k % stride == 0 for m in subs])
                for stride, subs in decades]
        return [wide, linear] if np.log10(vmax / vmin) <= _NARROW_DECADES else [wide]

    def _fits(self, ticks: np.ndarray, vmin: float, vmax: float) -> bool:
        if len(ticks) < 2:
            return True
        axis = self.axis
        try:  # the tick label font (creating a tick does not call the locator)
            font = axis.majorTicks[0].label1.get_fontproperties()
        except (AttributeError, IndexError):
            font = matplotlib.font_manager.FontProperties(size=matplotlib.rcParams[f"{axis.axis_name}tick.labelsize"])
        size = font.get_size_in_points()
        texts = self.formatter.format_ticks(list(ticks))
        measure = matplotlib.textpath.text_to_path.get_text_width_height_descent
        extents = []
        for text in texts:
            width, height, _ = measure(text, font, ismath="$" in text)
            # along x a label takes its width; along y its line height (at least 1.2 em)
            extents.append(width if axis.axis_name == "x" else max(height, 1.2 * size))
        box = axis.axes.bbox
        length = (box.width if axis.axis_name == "x" else box.height) * 72.0 / axis.axes.figure.dpi
        scale = axis.get_transform()
        ends = scale.transform(np.array([vmin, vmax]))
        if not ends[1] > ends[0] or length <= 0:
            return False
        where = (scale.transform(ticks) - ends[0]) / (ends[1] - ends[0]) * length  # points along the axis
        need = (np.array(extents[:-1]) + np.array(extents[1:])) / 2 + _GAP_EM * size
        return bool(np.all(np.diff(where) >= need))


def log_axis(ax: matplotlib.axes.Axes, axis: str, base: bool | int | None, *,
             fixed: list[float] | None = None, zero: float | None = None) -> None:
    """Make `axis` ("x" or "y") of `ax` a log axis whose tick labels never run into
    each other. base: True or 10 for decades, 2 for powers of two (batch sizes);
    False/None leaves the axis linear. The ticks are picked when the figure is drawn,
    from the view limits and the axis's length then: round values within about a
    decade, decades (1-2-5, 1-3, 1, every 2nd, ...) over wider ranges, the densest set
    whose short labels (5k, 10k, 1M, 2e-5; 64, 1024 for base 2) leave a gap between
    neighbours. `fixed`: ticks only at (a subset of) these values; `zero`: the
    position, among them, that stands in for 0 and is labelled '0'."""
    if not base:
        return
    base = 2 if base == 2 else 10
    scale_axis = getattr(ax, f"{axis}axis")
    getattr(ax, f"set_{axis}scale")("log", base=base)
    formatter = _TickText(base, zero)
    scale_axis.set_major_locator(_ReadableLogTicks(base, formatter, fixed))
    scale_axis.set_major_formatter(formatter)
    if base == 2 and fixed is None:  # unlabelled minor ticks between the powers
        scale_axis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    else:
        scale_axis.set_minor_locator(matplotlib.ticker.NullLocator())


def curves(history: pd.DataFrame, trials: pd.DataFrame, fig_spec: dict, path: Path) -> Path | None:
    data = ok_rows(history, trials).copy()
    x = fig_spec.get("x") or "epoch"
    if x not in data:
        return None
    ys = [y for y in fig_spec["y"] if y in data and data[y].notna().any()]
    if data.empty or not ys:
        return None
    hue = palette_column(data, fig_spec.get("hue"))
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
                         palette=palette_name(data, fig_spec.get("hue")), legend=(r == 0 and c == len(cols) - 1))
            log_axis(ax, "x", fig_spec.get("logx"))
            log_axis(ax, "y", fig_spec.get("logy"))
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
    save_figure(fig, fig_spec, path)
    return path


def last_evaluations(history: pd.DataFrame, trials: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Each ok trial's last report, with the trial-level `columns` (e.g. n_params)
    that the history lacks. History rows are in report order within a trial
    (collect.py), so "last" needs no sort (and an epoch sort would misorder
    families that report several rows per epoch)."""
    last = ok_rows(history, trials).groupby("trial_id").tail(1).copy()
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
    hue = palette_column(last, fig_spec.get("hue"))
    logx = fig_spec.get("logx", False)
    stand_in = zero_stand_in(last[x], logx)
    zero = stand_in is not None
    if zero:
        last[x] = last[x].where(last[x] > 0, stand_in)
    fig, axes = plt.subplots(1, len(ys), figsize=(4.5 * len(ys) + 1.5, 3.4), squeeze=False)
    for c, y in enumerate(ys):
        ax = axes[0][c]
        sns.lineplot(last, x=x, y=y, hue=hue, marker="o", errorbar=("ci", 95), ax=ax,
                     palette=palette_name(last, fig_spec.get("hue")), legend=(c == len(ys) - 1))
        # with a 0 stand-in: ticks at the grid values only (as many as fit), the stand-in labelled "0"
        log_axis(ax, "x", logx, fixed=sorted(last[x].unique()) if zero else None, zero=stand_in)
        log_axis(ax, "y", fig_spec.get("logy"))
        ax.set_xlabel(label(x))
        ax.set_ylabel(label(y))
        ax.grid(alpha=0.3)
    if hue and axes[0][-1].get_legend():
        axes[0][-1].get_legend().set_title(label(fig_spec["hue"]))
        sns.move_legend(axes[0][-1], "upper left", bbox_to_anchor=(1.02, 1.0))
    save_figure(fig, fig_spec, path)
    return path


def zero_stand_in(values: pd.Series, logx: bool | int | None) -> float | None:
    """Where 0 goes on a log x axis, which cannot show it: one decade below the
    smallest positive value (1e-6 when there is none); None when the axis is linear
    or every value is positive. Callers move the zeros there and pass it to
    `log_axis(..., zero=...)`, which labels it '0'."""
    numbers = pd.to_numeric(values, errors="coerce")
    if not logx or not (numbers <= 0).any():
        return None
    positive = numbers[numbers > 0]
    return float(positive.min() / 10) if len(positive) else 1e-6


def save_figure(fig: matplotlib.figure.Figure, fig_spec: dict, path: Path) -> None:
    """Write `fig` as the PNG `path` (110 dpi, tight layout, the spec's `title` as
    its suptitle when given) and close it. Atomic: written beside, then renamed."""
    if fig_spec.get("title"):
        fig.suptitle(fig_spec["title"])
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)  # atomic: a crash never leaves half a PNG under the real name


FigureFunction = Callable[..., "Path | None"]
# Figure kinds. A study module adds its special ones (a confusion matrix, weight
# templates, ...) with @register_figure("kind"): the function gets (history, trials,
# its figure spec, the PNG path) and returns the path it wrote, or None when the data
# hold nothing to draw. A function with a keyword parameter `spec` also gets the
# study's spec (a dict, as study.json holds it: e.g. its search space and grid); see
# `wants_spec`. The study folder is `path.parent.parent` (for artifacts such as
# checkpoints).
KINDS: Registry[FigureFunction] = Registry("figure kind")
KINDS.add("curves", curves)
KINDS.add("final", final)
register_figure = KINDS.register


def wants_spec(function: FigureFunction) -> bool:
    """Whether a figure function takes the study's spec (a keyword parameter `spec`)."""
    return "spec" in inspect.signature(function).parameters


def figure_name(index: int, fig_spec: dict) -> str:
    if fig_spec["kind"] not in ("curves", "final"):
        return f"{index + 1:02d}-{fig_spec['kind']}.png"
    what = fig_spec.get("x") or "epoch"
    return f"{index + 1:02d}-{fig_spec['kind']}-{'-'.join(fig_spec['y'])}-vs-{what}.png"


def default_figures(study: dict) -> list[dict]:
    """When a spec lists no figures: the test metric against epoch by the first grid
    axis. A tuned study (a search): each cell's best nuisance values against the first
    grid axis (`isolation`, the second axis as hue) and every search trial against its
    nuisance values (`axis`); curves would average trials of different nuisance
    values, so they are left out."""
    spec = study["spec"]
    grid = list(spec.get("grid") or {})
    if spec.get("search"):
        axis = {"kind": "axis", "y": []}
        if not grid:
            return [axis]
        return [{"kind": "isolation", "x": grid[0], "hue": grid[1] if len(grid) > 1 else None, "y": [],
                 "logx": auto_log(spec["grid"][grid[0]])}, axis]
    return [{"kind": "curves", "y": ["test_acc", "gap_acc"], "hue": grid[0] if grid else None,
             "col": grid[1] if len(grid) > 1 else None}]


def auto_log(values: list) -> bool | int:
    """The log axis for grid values: 2 for powers of two (batch sizes), True when the
    positive values span 10x or more (weight decays, training-set sizes), else False."""
    numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    positive = [float(v) for v in numbers if v > 0]
    if len(numbers) != len(values) or len(positive) < 2:
        return False
    if len(positive) == len(numbers) and all(_power_of_two(v) is not None and v >= 1 for v in positive):
        return 2
    return True if max(positive) / min(positive) >= 10 else False
