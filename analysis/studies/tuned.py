"""Figure kinds of a tuned study (a `search:` re-tuned in every grid cell; see
trainables/tuning.py). Both need the study's spec (search space, metric, grid), which
the report passes to a figure function with a `spec` parameter.

    figures:
      - {kind: isolation, x: batch_size, hue: train_size, y: [test_acc], logx: 2}
      - {kind: axis}

- `isolation`: the scientific question with the nuisance values re-tuned per cell.
  Left: each cell's best validation metric (the search's, on the first seed) against
  the grid axis `x` (default: the first), a line per `hue` (default: the next grid
  axis). Right, one panel per `y` (default: the test counterpart of the search
  metric): the best values' runs on every seed, mean and 95% bootstrap band; with a
  `search.baseline`, its fixed values beside them (dashed), the same way.
- `axis`: is the search range right? For each nuisance key, the search metric of every
  search trial against the key's value, a panel per tuning cell: the range's edges
  (dashed, the outer EDGE_FRACTION where the boundary check warns shaded), the best
  trial (a star), trials stopped early (hollow) and diverged trials (an x on the
  bottom edge; counted in the title).

Rebuild with `python -m analysis report results/<study>`.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import matplotlib.lines
import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from analysis.figures import label, log_axis, palette_column, palette_name, register_figure, save_figure, zero_stand_in
from analysis.tuning import (
    baseline_label, baseline_runs, best_trials, confirmed_runs, test_metric, tuned_rows,
)
from trainables.tuning import EDGE_FRACTION, SEARCH, range_of

_PANEL_COLUMNS = 4  # the axis figure wraps its cells into rows of this many panels


@register_figure("isolation")
def isolation(history: pd.DataFrame, trials: pd.DataFrame, fig_spec: dict, path: Path, *,
              spec: dict | None = None) -> Path | None:
    if not spec or not spec.get("search") or not spec.get("grid") or trials.empty or "trial_id" not in trials:
        return None
    search, grid = spec["search"], list(spec["grid"])
    metric, keys = search["metric"], list(search["space"])
    x = fig_spec.get("x") or grid[0]
    hue = fig_spec.get("hue") or next((k for k in grid if k != x), None)
    hue = None if hue == x else hue
    ys = fig_spec.get("y") or [test_metric(metric)]
    best = best_trials(trials, spec)
    best = best[best["best_trial"].notna()]
    tuned, fixed = f"re-tuned {', '.join(keys)}", baseline_label(spec)
    long = _isolation_frame(best, confirmed_runs(trials, spec, best), baseline_runs(trials),
                            [x, *([hue] if hue else [])], metric, ys, tuned, fixed)
    if long.empty or x not in long:
        return None
    panels = [p for p in [metric, *ys] if (long["panel"] == p).any()]
    logx = fig_spec.get("logx", False)
    stand_in = zero_stand_in(long[x], logx)
    if stand_in is not None:
        long[x] = long[x].where(long[x] > 0, stand_in)
    present = [n for n in (tuned, fixed) if n is not None and (long["nuisance"] == n).any()]
    dashes, markers = {tuned: "", fixed: (4, 2)}, {tuned: "o", fixed: "s"}  # fixed values: dashed, squares
    palette = palette_name(long, hue) if hue else dict(zip(present, ("tab:blue", "tab:gray")))
    hue_col = palette_column(long, hue) if hue else "nuisance"
    if hue:  # the legend's section titles are the column names: say them in words
        long = long.drop(columns=[hue]).rename(columns={hue_col: label(hue)})
        hue_col = label(hue)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels) + 2.0, 3.6), squeeze=False)
    for c, panel in enumerate(panels):
        ax = axes[0][c]
        sns.lineplot(long[long["panel"] == panel], x=x, y="value", hue=hue_col, style="nuisance",
                     style_order=present, dashes={n: dashes[n] for n in present},
                     markers={n: markers[n] for n in present}, errorbar=("ci", 95), palette=palette, ax=ax,
                     legend=(c == len(panels) - 1))
        if not isinstance(long[x].iloc[0], str):
            log_axis(ax, "x", logx, fixed=sorted(long[x].unique()) if stand_in else None, zero=stand_in)
        log_axis(ax, "y", fig_spec.get("logy"))
        ax.set_xlabel(label(x))
        ax.set_ylabel(label(panel))
        ax.set_title(f"best {label(metric)} after re-tuning\n(search, seed {spec['seeds'][0]})" if c == 0 else
                     f"{textwrap.shorten(label(panel), 40)}\n(mean over seeds, 95% CI)")  # two lines: panels sit close
        ax.grid(alpha=0.3)
    if axes[0][-1].get_legend():
        sns.move_legend(axes[0][-1], "upper left", bbox_to_anchor=(1.02, 1.0))
    title = fig_spec.get("title") or (f"{', '.join(keys)} re-tuned in every {' x '.join(grid)} cell "
                                      f"({search['num_samples']} search trials each, chosen on {metric})")
    save_figure(fig, {**fig_spec, "title": title}, path)
    return path


def _isolation_frame(best: pd.DataFrame, runs: pd.DataFrame, base: pd.DataFrame, by: list[str], metric: str,
                     ys: list[str], tuned: str, fixed: str | None) -> pd.DataFrame:
    """One long frame for every panel: `by` columns, `value`, `panel` (the metric the
    panel shows) and `nuisance` (re-tuned or fixed): the best search value per cell
    (left), the confirmed runs (right), the baseline runs (both)."""
    parts = []

    def add(frame: pd.DataFrame, column: str, panel: str, nuisance: str | None) -> None:
        if nuisance is None or frame.empty or column not in frame or not all(b in frame for b in by):
            return
        parts.append(frame[by].assign(value=pd.to_numeric(frame[column], errors="coerce"), panel=panel,
                                      nuisance=nuisance).dropna(subset=["value"]))

    add(best, metric, metric, tuned)
    add(base, f"final_{metric}", metric, fixed)
    for y in ys:
        add(runs, f"final_{y}", y, tuned)
        add(base, f"final_{y}", y, fixed)
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


@register_figure("axis")
def axis(history: pd.DataFrame, trials: pd.DataFrame, fig_spec: dict, path: Path, *,
         spec: dict | None = None) -> Path | None:
    if not spec or not spec.get("search") or trials.empty or "trial_id" not in trials:
        return None
    search = spec["search"]
    metric = search["metric"]
    rows = tuned_rows(trials)
    searched = rows[rows["role"] == SEARCH]
    keys = [k for k in search["space"] if k in searched and searched[k].notna().any()]
    best = best_trials(trials, spec)
    cells = [c for c in best["tuning_cell"] if (searched["tuning_cell"] == c).any()]
    if not keys or not cells:
        return None
    ncols = min(len(cells), _PANEL_COLUMNS)
    block = math.ceil(len(cells) / ncols)  # panel rows per nuisance key
    fig, axes = plt.subplots(block * len(keys), ncols, figsize=(3.7 * ncols + 2.0, 3.1 * block * len(keys)),
                             squeeze=False)
    for k, key in enumerate(keys):
        for c, cell in enumerate(cells):
            ax = axes[k * block + c // ncols][c % ncols]
            _axis_panel(ax, searched[searched["tuning_cell"] == cell], best[best["tuning_cell"] == cell].iloc[0],
                        key, search["space"][key], metric)
            ax.set_ylabel(label(metric) if c % ncols == 0 else "")
        for c in range(len(cells), block * ncols):  # the last row's empty places
            axes[k * block + c // ncols][c % ncols].remove()
    handles = [matplotlib.lines.Line2D([], [], **style) for style in _AXIS_LEGEND]
    axes[0][-1].legend(handles, [h.get_label() for h in handles], loc="upper left", bbox_to_anchor=(1.02, 1.0))
    better = "higher" if search.get("mode", "max") == "max" else "lower"
    title = fig_spec.get("title") or (f"{label(metric)} of every search trial "
                                      f"({search['num_samples']} per cell; {better} is better)")
    save_figure(fig, {**fig_spec, "title": title}, path)
    return path


_TRIAL = {"color": "tab:blue", "marker": "o", "markersize": 5, "linestyle": "none"}
_EARLY = {**_TRIAL, "markerfacecolor": "none"}
_DIVERGED = {"color": "tab:red", "marker": "x", "markersize": 7, "linestyle": "none"}
_BEST = {"color": "gold", "marker": "*", "markersize": 15, "markeredgecolor": "black", "linestyle": "none"}
_EDGE = {"color": "0.35", "linestyle": "--", "linewidth": 1.0}
_AXIS_LEGEND = [{**_TRIAL, "label": "search trial"}, {**_EARLY, "label": "stopped early"},
                {**_DIVERGED, "label": "diverged"}, {**_BEST, "label": "best"},
                {**_EDGE, "label": "range edge"}]


def _axis_panel(ax, cell: pd.DataFrame, best: pd.Series, key: str, distribution: dict, metric: str) -> None:
    """One cell's search trials against one nuisance key."""
    column = f"final_{metric}"
    values = pd.to_numeric(cell[column], errors="coerce") if column in cell else pd.Series(float("nan"), cell.index)
    ok = cell["status"] == "ok"
    early = cell["stopped_early"]
    ax.plot(cell.loc[ok & ~early, key], values[ok & ~early], zorder=3, **_TRIAL)
    ax.plot(cell.loc[ok & early, key], values[ok & early], zorder=3, **_EARLY)
    diverged = cell[cell["status"] == "diverged"]
    if len(diverged):  # (an empty unclipped line would stretch the layout's bounding box to the origin)
        # no metric to place them by: on the bottom edge (x in data, y in axes coordinates)
        ax.plot(diverged[key], [0.03] * len(diverged), transform=ax.get_xaxis_transform(), clip_on=False, zorder=3,
                **_DIVERGED)
    if best.get("best_trial") is not None and pd.notna(best.get(metric)):
        ax.plot([best[key]], [best[metric]], zorder=4, **_BEST)
    span = range_of(distribution)
    if span is not None:
        low, high, log = span
        for edge in (low, high):
            ax.axvline(edge, zorder=1, **_EDGE)
        if log:
            inner = (low * (high / low) ** EDGE_FRACTION, high / (high / low) ** EDGE_FRACTION)
            pad = (high / low) ** 0.04
            ax.set_xlim(low / pad, high * pad)
        else:
            inner = (low + (high - low) * EDGE_FRACTION, high - (high - low) * EDGE_FRACTION)
            ax.set_xlim(low - 0.04 * (high - low), high + 0.04 * (high - low))
        # where the boundary check warns: a best in these bands may be limited by the range
        ax.axvspan(low, inner[0], color="0.92", zorder=0)
        ax.axvspan(inner[1], high, color="0.92", zorder=0)
        log_axis(ax, "x", log)
    ax.margins(y=0.12)  # room for the star at the top and the diverged marks at the bottom
    finished = int(cell["status"].isin(("ok", "diverged", "error")).sum())
    n_diverged = len(diverged)
    ax.set_title((best.get("label") or "search") + (f"\n{n_diverged} of {finished} diverged" if n_diverged else ""),
                 fontsize="medium")
    ax.set_xlabel(label(key))
    ax.grid(alpha=0.3)
