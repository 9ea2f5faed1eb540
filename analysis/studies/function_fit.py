"""Figure kind of the function-fitting study (sweeps/function_fit.yaml, family
trainables/function_fit.py):

- `function_fit`: every model's fitted curve (the `curve_x` / `curve_y` lists of
  each trial's last report) over the target function, one panel per `col` value
  (default: `target`), a colour per `hue` value (e.g. architecture). Each trial is
  its own line (seeds of one model share its colour): averaging curves over seeds
  would blur exactly the wiggles the figure is about. The legend gives each model's
  widths, parameter count and final test MSE (mean over its trials).

    .venv/bin/python -m analysis report results/function_fit-quick
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from analysis.figures import label, last_evaluations, register_figure, save_figure
from trainables.function_fit import TARGETS, grid

TARGET_TEXT = {"sinc": r"$\sin(5\pi x)\,/\,(5\pi x)$", "square_wave": r"$\mathrm{sign}(\sin(5\pi x))$"}


def _text(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def model_label(rows: pd.DataFrame, hue: str | None) -> str:
    """'deep: 5-10-10-10-5, 351 params, test MSE 4.2e-05' for one model's trials."""
    first = rows.iloc[0]
    parts = [f"{_text(first[hue])}:" if hue else ""]
    if "hidden" in rows:
        parts.append(f"1-{first['hidden']}-1,")
    if "n_params" in rows and rows["n_params"].notna().all():
        parts.append(f"{int(first['n_params'])} params,")
    parts.append(f"test MSE {rows['test_loss'].mean():.2g}")
    if len(rows) > 1:
        parts.append(f"(mean of {len(rows)})")
    return " ".join(p for p in parts if p)


@register_figure("function_fit")
def function_fit(history: pd.DataFrame, trials: pd.DataFrame, fig_spec: dict, path: Path) -> Path | None:
    if "curve_y" not in history:
        return None
    last = last_evaluations(history, trials, ["n_params"])
    last = last[last["curve_y"].map(lambda v: v is not None and not (isinstance(v, float) and np.isnan(v)))]
    if last.empty:
        return None
    hue = fig_spec.get("hue")
    col = fig_spec.get("col") or ("target" if "target" in last else None)
    cols = sorted(last[col].unique()) if col else [None]
    hues = sorted(last[hue].unique(), key=str) if hue else [None]
    colours = {h: plt.get_cmap("tab10")(i % 10) for i, h in enumerate(hues)}
    fig, axes = plt.subplots(1, len(cols), figsize=(6.5 * len(cols) + 0.5, 5.4 + 0.2 * len(hues)), squeeze=False)
    dense = grid(1000)
    dense_x = dense.squeeze(1).numpy()
    for c, col_value in enumerate(cols):
        ax = axes[0][c]
        panel = last if col is None else last[last[col] == col_value]
        target = col_value if col == "target" else (panel["target"].iloc[0] if "target" in panel else None)
        if target in TARGETS:
            ax.plot(dense_x, TARGETS[target](dense).squeeze(1).numpy(), color="black", linewidth=2.4, alpha=0.35,
                    label=f"target {TARGET_TEXT.get(target, target)}", zorder=1)
        for h in hues:
            rows = panel if h is None else panel[panel[hue] == h]
            if rows.empty:
                continue
            alpha = 0.9 if len(rows) == 1 else 0.6
            for i, (_, row) in enumerate(rows.iterrows()):
                ax.plot(np.asarray(row["curve_x"]), np.asarray(row["curve_y"]), color=colours[h], linewidth=1.2,
                        alpha=alpha, label=model_label(rows, hue) if i == 0 else None, zorder=2)
        ax.set_xlabel("x")
        ax.set_ylabel("f(x)" if c == 0 else "")
        if col is not None:
            ax.set_title(f"{label(col)} = {_text(col_value)}")
        ax.grid(alpha=0.3)
        # below the panel: inside, it would hide the curves' peaks
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.13), frameon=False)
    n = last.groupby([k for k in (hue, col) if k]).size().max() if (hue or col) else len(last)
    title = fig_spec.get("title") or "Fitted curves over the target function"
    seeds = f"{n} seeds per model, one line each" if n > 1 else "1 seed per model"
    fig_spec = {**fig_spec, "title": f"{title} ({seeds})"}
    save_figure(fig, fig_spec, path)
    return path
