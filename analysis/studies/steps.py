"""Figure kind `steps`: per-step training loss and gradient L2 norm against the
optimizer step, one panel per metric stacked on a shared x axis, so a spike in the
gradient norm lines up with what the loss did at that step.

Any spec whose trials log per-step records (engine option `log_every_steps: n`, or
any family reporting the `steps` key) can list it:

    figures:
      - {kind: steps, hue: architecture, col: target, logy: true}

Reads `steps.parquet` from the study folder (written by the report before the
figures). Keys: `y` (default [loss, grad_norm]: any per-step columns), `hue` and
`col` (config keys: a line colour per value, a panel column per value), `logx`,
`logy` (both panels), `title`, and `options.smooth` (a centred rolling mean over
that many logged points of each trial before averaging, for noisy minibatch values;
default 1: none), `options.lines: trials` (every trial its own thin line instead of
a mean: when trials stop at different steps, a mean over the ones still running
changes meaning along x). Lines are the mean over the trials of a hue value (seeds), with a
95% band (mean +- 1.96 standard errors) when there are several; with `logy` the
mean and band are those of log10(y) (a geometric mean). When the records have a
`phase` column (e.g. critical_points), a dotted line marks where each later phase
starts.

    .venv/bin/python -m analysis report results/function_fit-quick
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from analysis.collect import read_table
from analysis.figures import label, log_axis, register_figure, save_figure

STEPS_FILE = "steps.parquet"
STEP_LABELS = {"loss": "training batch loss", "grad_norm": "gradient L2 norm"}


def read_steps(study_folder: Path, trials: pd.DataFrame) -> pd.DataFrame:
    """The per-step table of a study, ok trials only (empty when none was logged)."""
    path = Path(study_folder) / STEPS_FILE
    if not path.exists() or trials.empty:
        return pd.DataFrame()
    steps = read_table(path)
    ok_ids = set(trials.loc[trials["status"] == "ok", "trial_id"])
    return steps[steps["trial_id"].isin(ok_ids)]


def _text(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _sorted_values(series: pd.Series) -> list:
    return sorted(series.dropna().unique(), key=lambda v: (isinstance(v, str), v))


def mean_band(frame: pd.DataFrame, y: str, smooth: int = 1, log: bool = False) -> pd.DataFrame:
    """Per step: mean of `y` over trials, and the 95% band (NaN with one trial).
    With `log`, the geometric mean and a band of the mean of log10(y): on a log
    axis a band from an arithmetic mean would reach below zero."""
    if smooth > 1:
        frame = frame.sort_values(["trial_id", "step"])
        frame = frame.assign(**{y: frame.groupby("trial_id")[y].transform(
            lambda s: s.rolling(smooth, center=True, min_periods=1).mean())})
    if log:
        frame = frame[frame[y] > 0].assign(**{y: np.log10(frame.loc[frame[y] > 0, y])})
    stats = frame.groupby("step")[y].agg(["mean", "std", "count"]).reset_index()
    half = 1.96 * stats["std"] / np.sqrt(stats["count"])
    stats = stats.assign(low=stats["mean"] - half, high=stats["mean"] + half)
    if log:
        stats[["mean", "low", "high"]] = 10.0 ** stats[["mean", "low", "high"]]
    return stats


def _phase_starts(steps: pd.DataFrame) -> list[tuple[int, str]]:
    """(first step, name) of every phase after the first, when the records name
    phases (e.g. critical_points: training, then gradient-norm minimization)."""
    if "phase" not in steps:
        return []
    firsts = steps.groupby("phase", sort=False)["step"].min().sort_values()
    return [(int(step), str(name)) for name, step in firsts.iloc[1:].items()]


def _colours(values: list) -> list:
    """Distinct colours for names (no order), an ordered colour map for numbers."""
    if all(isinstance(v, str) or v is None for v in values) and len(values) <= 10:
        return [plt.get_cmap("tab10")(i) for i in range(len(values))]
    return list(plt.get_cmap("viridis")(np.linspace(0, 0.9, len(values))))


@register_figure("steps")
def steps_figure(history: pd.DataFrame, trials: pd.DataFrame, fig_spec: dict, path: Path) -> Path | None:
    steps = read_steps(path.parent.parent, trials)
    ys = [y for y in (fig_spec.get("y") or ["loss", "grad_norm"]) if y in steps and steps[y].notna().any()]
    if steps.empty or not ys:
        return None
    hue, col = fig_spec.get("hue"), fig_spec.get("col")
    hues = _sorted_values(steps[hue]) if hue in steps else [None]
    cols = _sorted_values(steps[col]) if col in steps else [None]
    smooth = int((fig_spec.get("options") or {}).get("smooth", 1))
    log = bool(fig_spec.get("logy"))
    per_trial = (fig_spec.get("options") or {}).get("lines") == "trials"
    colours = _colours(hues)
    fig, axes = plt.subplots(len(ys), len(cols), figsize=(5.2 * len(cols) + 2.0, 2.9 * len(ys)),
                             squeeze=False, sharex=True)
    n_trials = []
    for c, col_value in enumerate(cols):
        panel = steps if col_value is None else steps[steps[col] == col_value]
        for h, hue_value in enumerate(hues):
            lines = panel if hue_value is None else panel[panel[hue] == hue_value]
            if lines.empty:
                continue
            n_trials.append(lines["trial_id"].nunique())
            name = _text(hue_value) if hue_value is not None else "all trials"
            for r, y in enumerate(ys):
                ax = axes[r][c]
                if per_trial:
                    for i, (_, one) in enumerate(lines.sort_values("step").groupby("trial_id")):
                        ax.plot(one["step"], one[y], color=colours[h], linewidth=0.6, alpha=0.5,
                                label=f"{name} (n={lines['trial_id'].nunique()}, one line each)" if i == 0 else None)
                    continue
                stats = mean_band(lines[["trial_id", "step", y]].dropna(), y, smooth, log)
                ax.plot(stats["step"], stats["mean"], color=colours[h], linewidth=1.0,
                        label=f"{name} (n={lines['trial_id'].nunique()})")
                if stats["count"].max() > 1:
                    ax.fill_between(stats["step"], stats["low"], stats["high"], color=colours[h], alpha=0.2,
                                    linewidth=0)
    for r, y in enumerate(ys):
        for c, col_value in enumerate(cols):
            ax = axes[r][c]
            log_axis(ax, "x", fig_spec.get("logx"))
            log_axis(ax, "y", fig_spec.get("logy"))
            name = STEP_LABELS.get(y, label(y)) + (" (log scale)" if fig_spec.get("logy") else "")
            ax.set_ylabel(name if c == 0 else "")
            ax.set_xlabel("optimizer step" if r == len(ys) - 1 else "")
            if r == 0 and col_value is not None:
                ax.set_title(f"{label(col)} = {_text(col_value)}")
            ax.grid(alpha=0.3)
            for step, phase in _phase_starts(steps):
                ax.axvline(step, color="0.3", linestyle=":", linewidth=1.2)
                if r == 0:
                    ax.text(step, 1.01, f" {phase} ->", transform=ax.get_xaxis_transform(), fontsize=8, va="bottom")
    handles, labels = axes[0][-1].get_legend_handles_labels()
    if handles:
        axes[0][-1].legend(handles, labels, title=label(hue) if hue else None, loc="upper left",
                           bbox_to_anchor=(1.02, 1.0), fontsize=8)
    seeds = max(n_trials) if n_trials else 0
    mean = "geometric mean" if log else "mean"
    what = f"{mean} over {seeds} trials per line, 95% band" if seeds > 1 and not per_trial else "one trial per line"
    smoothing = f"; rolling mean over {smooth} logged steps" if smooth > 1 else ""
    fig_spec = {**fig_spec, "title": (fig_spec.get("title") or "Training loss and gradient norm per step")
                + f"\n({what}{smoothing})"}
    save_figure(fig, fig_spec, path)
    return path
