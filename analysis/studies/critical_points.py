"""Figure kind of the minimal-ratio study (sweeps/minimal_ratio.yaml, family
trainables/critical_points.py):

- `minimal_ratio`: each run's minimal ratio (fraction of positive Hessian
  eigenvalues) against its training loss at the point where phase 2 stopped, one
  point per run (log x). Runs whose gradient norm got below the tolerance are
  filled circles; runs that did not are crosses. `y` picks the panels (default
  [minimal_ratio]; also minimal_ratio_curved, minimal_ratio_raw, minimal_ratio_perturb).

    .venv/bin/python -m analysis report results/minimal_ratio-quick
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from analysis.figures import last_evaluations, log_axis, register_figure, save_figure

Y_LABELS = {
    "minimal_ratio": "minimal ratio\n(fraction of eigenvalues > 0)",
    "minimal_ratio_curved": "minimal ratio of the curved directions\n(positive / (positive + negative))",
    "minimal_ratio_raw": "fraction of eigenvalues with sign > 0\n(no rounding tolerance)",
    "minimal_ratio_perturb": "fraction of random perturbations\nthat raise the loss",
}


@register_figure("minimal_ratio")
def minimal_ratio(history: pd.DataFrame, trials: pd.DataFrame, fig_spec: dict, path: Path) -> Path | None:
    if "minimal_ratio" not in history:
        return None
    last = last_evaluations(history, trials, ["gn_tolerance", "n_params"])
    last = last[last["minimal_ratio"].notna()]
    ys = [y for y in (fig_spec.get("y") or ["minimal_ratio"]) if y in last]
    if last.empty or not ys:
        return None
    converged = last["converged"].astype(bool)
    tols = sorted(last["gn_tolerance"].unique()) if "gn_tolerance" in last else []
    tol = f"{tols[0]:.0e}" if len(tols) == 1 else "tol"
    fig, axes = plt.subplots(1, len(ys), figsize=(5.6 * len(ys) + 1.6, 4.3), squeeze=False)
    for c, y in enumerate(ys):
        ax = axes[0][c]
        done, stuck = last[converged], last[~converged]
        ax.scatter(done["critical_loss"], done[y], marker="o", s=28, color="tab:blue", alpha=0.8,
                   label=f"converged: ||grad L|| < {tol} ({len(done)} runs)")
        ax.scatter(stuck["critical_loss"], stuck[y], marker="x", s=30, color="tab:red", alpha=0.8,
                   label=f"not converged ({len(stuck)} runs)")
        log_axis(ax, "x", True)
        ax.set_xlabel("training loss (MSE) where phase 2 stopped")
        ax.set_ylabel(Y_LABELS.get(y, y))
        ax.grid(alpha=0.3)
    axes[0][-1].legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8)
    params = last["n_params"].dropna().unique() if "n_params" in last else []
    size = f", {int(params[0])} parameters" if len(params) == 1 else ""
    title = fig_spec.get("title") or "Minimal ratio against loss at the end of gradient-norm minimization"
    fig_spec = {**fig_spec, "title": f"{title} ({len(last)} runs{size})"}
    save_figure(fig, fig_spec, path)
    return path
