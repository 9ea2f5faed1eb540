"""`weight_templates`: the ten 28x28 weight templates of a linear classifier, one row
per value of a hyperparameter (weight decay by default), read from each trial's last
checkpoint (a packed trial's checkpoint holds its cells' weights stacked).

    figures:
      - {kind: weight_templates, options: {row: weight_decay}}

Used by sweeps/l2_linear.yaml (`make sweep-l2-linear`). For each row value the trial
with the smallest seed is shown. Colours are diverging and centred at 0 (red pushes
the class's logit up, blue down); each row has its own symmetric limits, given by its
colour bar, because L2 shrinks the weights' scale several-fold (largest |weight| 0.30 to 0.05 in
the quick study).
"""

from __future__ import annotations

import numbers
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from analysis.collect import last_model_state
from analysis.figures import label, register_figure, save_figure

SIDE = 28  # MNIST images are 28x28, so each template is a 784-long weight row


def templates(state_dict: dict) -> np.ndarray:
    """The rows of the first weight matrix that reads the pixels, as [rows, 28, 28].
    For `model: linear` these are the ten class templates."""
    for name, tensor in state_dict.items():
        if name.endswith("weight") and tensor.ndim == 2 and tensor.shape[1] == SIDE * SIDE:
            return tensor.detach().cpu().float().numpy().reshape(-1, SIDE, SIDE)
    raise ValueError("no weight matrix with 784 input columns in the checkpoint (is the model `linear`?)")


def chosen_trials(trials: pd.DataFrame, row: str) -> pd.DataFrame:
    """The ok trial with the smallest seed for each value of `row`, in increasing order."""
    ok = trials[trials["status"] == "ok"]
    if "seed" in ok:
        ok = ok.sort_values("seed", kind="stable")
    return ok.groupby(row, sort=True).head(1).sort_values(row)


def _row_text(column: str, value) -> str:
    return f"{label(column)}\n= {value:g}" if isinstance(value, numbers.Real) else f"{label(column)}\n= {value}"


@register_figure("weight_templates")
def weight_templates(history: pd.DataFrame, trials: pd.DataFrame, fig_spec: dict, path: Path) -> Path | None:
    """One row per value of `options.row` (default weight_decay), one column per class."""
    row = (fig_spec.get("options") or {}).get("row", "weight_decay")
    study = path.parent.parent
    if trials.empty or row not in trials:
        return None
    rows = []
    for _, trial in chosen_trials(trials, row).iterrows():
        state = last_model_state(study, str(trial["trial_id"]), trial.get("pack_id"))
        if state is not None:
            rows.append((trial, templates(state)))
    if not rows:
        return None

    seeds = {int(trial["seed"]) for trial, _ in rows if "seed" in trial}
    n_cols = max(t.shape[0] for _, t in rows)
    fig, axes = plt.subplots(len(rows), n_cols + 1, figsize=(1.15 * n_cols + 2.2, 1.25 * len(rows) + 0.7),
                             squeeze=False, gridspec_kw={"width_ratios": [1] * n_cols + [0.12]})
    for r, (trial, weights) in enumerate(rows):
        limit = float(np.abs(weights).max()) or 1.0  # symmetric, so white is exactly 0
        image = None
        for c in range(n_cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < weights.shape[0]:
                image = ax.imshow(weights[c], cmap="RdBu_r", vmin=-limit, vmax=limit)
            else:
                ax.axis("off")
            if r == 0:
                ax.set_title(f"digit {c}" if weights.shape[0] == 10 else f"unit {c}", fontsize=9)
        acc = trial.get("final_test_acc")
        text = _row_text(row, trial[row]) + (f"\ntest acc {acc:.3f}" if pd.notna(acc) else "")
        if len(seeds) > 1:  # a value whose first seeds failed: say which seed is shown
            text += f"\nseed {int(trial['seed'])}"
        axes[r][0].set_ylabel(text, rotation=0, ha="right", va="center", fontsize=8)
        bar = fig.colorbar(image, cax=axes[r][n_cols])
        bar.ax.tick_params(labelsize=7)
        bar.locator = plt.MaxNLocator(3, symmetric=True)
        bar.update_ticks()
    seed = f", seed {seeds.pop()}" if len(seeds) == 1 else ""
    spec = {**fig_spec, "title": fig_spec.get("title") or
            f"Learned weight templates (red: evidence for the digit, blue: against; 0 is white{seed})"}
    save_figure(fig, spec, path)
    return path
