"""Figure kind of the trajectory study (sweeps/trajectory.yaml, family
trainables/trajectory.py):

- `trajectory_pca`: every run's weight snapshots, projected onto the first two
  principal components of all snapshots of all runs stacked together (one PCA per
  figure), one path per run from its start (circle) to its end (star); each point's
  colour is the test accuracy at that snapshot. `options: {part: first_layer}` uses
  the first layer's parameters only, `part: model` (the default) all parameters.
  The axis labels give each component's share of the variance.

    .venv/bin/python -m analysis report results/trajectory-quick
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from analysis.collect import trial_folders
from analysis.figures import ok_rows, register_figure, save_figure
from trainables.trajectory import load_snapshot, snapshot_paths

PARTS = {"first_layer": "first layer", "model": "whole model"}


class PCA(NamedTuple):
    coords: np.ndarray  # [n, k]: each row's coordinates on the components
    components: np.ndarray  # [k, d]: unit principal directions, largest variance first
    explained: np.ndarray  # [k]: fraction of the total variance along each component
    mean: np.ndarray  # [d]: the rows' mean, subtracted before projecting


def pca(rows: np.ndarray, k: int = 2) -> PCA:
    """PCA of the rows of `rows` [n, d] by a thin SVD of the centred matrix (float64).
    Each component's sign is fixed so that its largest-magnitude entry is positive
    (SVD signs are arbitrary; this makes the picture reproducible)."""
    x = np.asarray(rows, dtype=np.float64)
    mean = x.mean(axis=0)
    u, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    total = float(np.sum(s**2))
    k = min(k, len(s))
    components = vt[:k]
    signs = np.sign(components[np.arange(k), np.abs(components).argmax(axis=1)])
    signs[signs == 0] = 1.0
    components = components * signs[:, None]
    coords = u[:, :k] * s[:k] * signs
    explained = s[:k] ** 2 / total if total > 0 else np.zeros(k)
    return PCA(coords, components, explained, mean)


def load_paths(study_dir: Path, trial_ids: list[str], part: str) -> pd.DataFrame:
    """One row per snapshot: trial_id, epoch, and `vector` (the flattened parameters of
    `part`, float64). Trials without snapshots are left out."""
    folders = trial_folders(study_dir)
    records = []
    for trial_id in trial_ids:
        # a trial resumed in a later experiment keeps its earlier snapshots in the earlier folder
        paths = {p.name: p for folder in folders.get(trial_id, []) for p in snapshot_paths(folder)}
        for path in (paths[name] for name in sorted(paths)):
            epoch, params, first = load_snapshot(path)
            names = first if part == "first_layer" else list(params)
            vector = np.concatenate([params[n].astype(np.float64).ravel() for n in names])
            records.append({"trial_id": trial_id, "epoch": epoch, "vector": vector})
    return pd.DataFrame(records)


@register_figure("trajectory_pca")
def trajectory_pca(history: pd.DataFrame, trials: pd.DataFrame, fig_spec: dict, path: Path) -> Path | None:
    part = (fig_spec.get("options") or {}).get("part", "model")
    if part not in PARTS:
        raise ValueError(f"trajectory_pca: options.part must be one of {', '.join(PARTS)}, got {part!r}")
    ok = trials[trials["status"] == "ok"].sort_values("seed" if "seed" in trials else "trial_id")
    paths = load_paths(path.parent.parent, list(ok["trial_id"]), part)
    if paths.empty or paths["trial_id"].nunique() == 0:
        return None
    result = pca(np.stack(paths["vector"].to_list()), k=2)
    paths["pc1"], paths["pc2"] = result.coords[:, 0], result.coords[:, 1]
    acc = ok_rows(history, trials)[["trial_id", "epoch", "test_acc"]]
    acc = acc.drop_duplicates(["trial_id", "epoch"], keep="last")
    paths = paths.drop(columns="vector").merge(acc, on=["trial_id", "epoch"], how="left")

    fig, ax = plt.subplots(figsize=(8.2, 6.4))
    vmin, vmax = np.nanmin(paths["test_acc"]), np.nanmax(paths["test_acc"])
    seeds = dict(zip(ok["trial_id"], ok["seed"])) if "seed" in ok else {}
    for trial_id, run in paths.groupby("trial_id", sort=False):
        run = run.sort_values("epoch")
        ax.plot(run["pc1"], run["pc2"], color="0.55", linewidth=1.0, zorder=1)
        ax.scatter(run["pc1"].iloc[[0]], run["pc2"].iloc[[0]], s=130, facecolors="none", edgecolors="black",
                   linewidths=1.5, zorder=3)
        ax.scatter(run["pc1"].iloc[[-1]], run["pc2"].iloc[[-1]], s=260, marker="*", facecolors="none",
                   edgecolors="black", linewidths=1.2, zorder=3)
        if trial_id in seeds:
            ax.annotate(f"seed {seeds[trial_id]}", (run["pc1"].iloc[-1], run["pc2"].iloc[-1]), fontsize=8,
                        xytext=(6, 6), textcoords="offset points")
    points = ax.scatter(paths["pc1"], paths["pc2"], c=paths["test_acc"], cmap="viridis", vmin=vmin, vmax=vmax,
                        s=28, zorder=2, edgecolors="none")
    fig.colorbar(points, ax=ax, label="test accuracy at the snapshot")
    ax.scatter([], [], s=130, facecolors="none", edgecolors="black", label="start (epoch 0, initial weights)")
    ax.scatter([], [], s=260, marker="*", facecolors="none", edgecolors="black",
               label=f"end (epoch {int(paths['epoch'].max())})")
    ax.legend(loc="best", fontsize=8)
    ax.set_xlabel(f"PC1 ({100 * result.explained[0]:.3g}% of the variance)")
    ax.set_ylabel(f"PC2 ({100 * result.explained[1]:.3g}% of the variance)" if len(result.explained) > 1 else "PC2")
    ax.set_aspect("equal", adjustable="datalim")  # distances in the plane are distances in weight space
    ax.grid(alpha=0.3)
    n_runs, n_dims = paths["trial_id"].nunique(), result.components.shape[1]
    title = fig_spec.get("title") or "Optimization paths in weight space"
    ax.set_title(f"{title}\n{PARTS[part]} ({n_dims:,} weights): one PCA of all {len(paths)} snapshots "
                 f"of {n_runs} runs", fontsize=10)
    save_figure(fig, {**fig_spec, "title": None}, path)
    return path
