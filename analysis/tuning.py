"""A tuned study's results by tuning cell: which search trial is each cell's best,
the confirmed and baseline runs around it, the boundary check, what is missing.
The rules themselves (best trial, edges, labels, trial counts) are
`trainables.tuning`'s, shared with the searcher; this module applies them to the
trials table (analysis.collect), and the report and figures read it from here.

    from analysis.tuning import best_trials
    best_trials(pd.read_parquet("results/wd_tuned/trials.parquet"), record["spec"])
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping

import pandas as pd

from trainables.tuning import (
    BASELINE, CONFIRM, SEARCH, Candidate, best_candidate, boundary_warning, cell_label, range_of,
)

FINISHED = ("ok", "diverged", "error")  # an "incomplete" trial may still report


def value_label(value) -> str:
    """A grid value as the trials table holds it: a variant by its name, a list joined
    by '-' (as analysis.collect does), a number in short form."""
    if isinstance(value, dict):
        return str(value.get("name") or ",".join(f"{k}={v}" for k, v in value.items()))
    if isinstance(value, list):
        return "-".join(map(str, value))
    return f"{value:g}" if isinstance(value, float) else str(value)


def is_tuned(spec: Mapping) -> bool:
    """A study with a `search:` (nuisance values re-tuned per grid cell)."""
    return bool(spec.get("search"))


def test_metric(metric: str) -> str:
    """The reported counterpart of a search metric: val_acc -> test_acc (the search
    selects on validation data; the held-out test value is what a table reports)."""
    return "test_" + metric.removeprefix("val_")


def baseline_label(spec: Mapping) -> str | None:
    """'fixed lr=0.001' for a spec with `search.baseline`, else None."""
    baseline = (spec.get("search") or {}).get("baseline")
    return f"fixed {cell_label(baseline, list(baseline))}" if baseline else None


def tuned_rows(trials: pd.DataFrame) -> pd.DataFrame:
    """`trials` with `tuning_cell` and `role` always present. A search run before
    tuning cells existed (no such columns) is one cell ("") of search trials."""
    rows = trials.copy()
    if "tuning_cell" not in rows:
        rows["tuning_cell"], rows["role"] = "", SEARCH
    for column in ("sample", "confirms", "stopped_early", "seed"):
        if column not in rows:
            rows[column] = None
    rows["stopped_early"] = rows["stopped_early"].map(_flag).astype(bool)  # None/NaN: a trial without reports
    return rows


def _flag(value) -> bool:
    """A bool column that may hold None/NaN (a trial without reports)."""
    return bool(value) if value is not None and not (isinstance(value, float) and pd.isna(value)) else False


def _grid_order(spec: Mapping):
    """A sort key for rows by the spec's grid order (value labels' positions)."""
    grid = spec.get("grid") or {}
    positions = {k: {value_label(v): i for i, v in enumerate(values)} for k, values in grid.items()}
    return lambda row: tuple(positions[k].get(value_label(row.get(k)), len(positions[k])) for k in grid)


def _best_id(cell: pd.DataFrame, metric: str, mode: str) -> str | None:
    """The cell's best search trial. What the searcher confirmed wins: it decided
    when the search ended, and the confirm trials repeat that trial's values."""
    named = cell.loc[cell["role"] == CONFIRM, "confirms"].dropna()
    if len(named):
        return str(named.iloc[0])
    search = cell[cell["role"] == SEARCH]
    if "sample" in search and search["sample"].notna().any():
        search = search.sort_values("sample", kind="stable")  # ties go to the earlier sample
    column = f"final_{metric}"
    found = best_candidate(
        (Candidate(str(r["trial_id"]), r.get(column, float("nan")),
                   r["status"] == "ok" and not r["stopped_early"])
         for r in search.to_dict("records")), mode)
    return found.trial_id if found else None


def best_trials(trials: pd.DataFrame, spec: Mapping) -> pd.DataFrame:
    """One row per tuning cell, in grid order: `tuning_cell`, `label` (cell_label),
    the grid values, `best_trial` (None while no search trial ran its whole budget),
    the best value of each nuisance key, the search metric of the best trial (a
    column named as the metric, e.g. val_acc), `n_search` (search trials finished),
    `n_diverged` (of them diverged) and `diverged_fraction`."""
    search = spec["search"]
    metric, keys, grid = search["metric"], list(search["space"]), list(spec.get("grid") or {})
    columns = ["tuning_cell", "label", *grid, "best_trial", *keys, metric, "n_search", "n_diverged",
               "diverged_fraction"]
    if trials.empty or "trial_id" not in trials:
        return pd.DataFrame(columns=columns)
    rows = tuned_rows(trials)
    out = []
    for cell_id, cell in rows.groupby("tuning_cell", sort=False, dropna=False):
        first = cell.iloc[0].to_dict()
        best_id = _best_id(cell, metric, search.get("mode", "max"))
        # the best's values from its search trial, else from a confirm row (the same values)
        holders = cell[cell["trial_id"].astype(str) == best_id]
        if holders.empty:
            holders = cell[cell["confirms"].astype(str) == best_id]
        source = holders.iloc[0] if best_id is not None and len(holders) else None
        searched = cell[(cell["role"] == SEARCH) & cell["status"].isin(FINISHED)]
        n_diverged = int((searched["status"] == "diverged").sum())
        record = {"tuning_cell": cell_id, "label": cell_label(first, grid),
                  **{k: first.get(k) for k in grid}, "best_trial": best_id,
                  **{k: (source.get(k) if source is not None else None) for k in keys},
                  metric: (source.get(f"final_{metric}") if source is not None and source.get("role") == SEARCH
                           else float("nan")),
                  "n_search": len(searched), "n_diverged": n_diverged,
                  "diverged_fraction": n_diverged / len(searched) if len(searched) else float("nan")}
        out.append(record)
    return pd.DataFrame(sorted(out, key=_grid_order(spec)), columns=columns)


def confirmed_runs(trials: pd.DataFrame, spec: Mapping, best: pd.DataFrame | None = None) -> pd.DataFrame:
    """The ok runs of each cell's best values, one per seed: the best search trial (the
    first seed's) and the confirm trials that repeat it."""
    if trials.empty or "trial_id" not in trials:
        return pd.DataFrame()
    best = best_trials(trials, spec) if best is None else best
    rows = tuned_rows(trials)
    best_ids = set(best["best_trial"].dropna().astype(str))
    is_best = rows["trial_id"].astype(str).isin(best_ids)
    repeats = (rows["role"] == CONFIRM) & rows["confirms"].astype(str).isin(best_ids)
    return rows[(is_best | repeats) & (rows["status"] == "ok")]


def baseline_runs(trials: pd.DataFrame) -> pd.DataFrame:
    """The ok baseline trials (the spec's fixed nuisance values, on every seed)."""
    if trials.empty or "trial_id" not in trials:
        return pd.DataFrame()
    rows = tuned_rows(trials)
    return rows[(rows["role"] == BASELINE) & (rows["status"] == "ok")]


def boundary_lines(best: pd.DataFrame, spec: Mapping) -> list[str]:
    """One `trainables.tuning.boundary_warning` line per cell and nuisance key whose
    best value lies at an edge of its range (a better value may lie outside it)."""
    space = spec["search"]["space"]
    lines = []
    for row in best.to_dict("records"):
        if row.get("best_trial") is None:
            continue
        for key, distribution in space.items():
            value = row.get(key)
            if range_of(distribution) is None or isinstance(value, (str, bool)) or value is None:
                continue
            line = boundary_warning(key, float(value), distribution, row["label"])
            if line:
                lines.append(line)
    return lines


def _seeds_text(seeds: list) -> str:
    return f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}"


def unfinished_cells(trials: pd.DataFrame, spec: Mapping) -> list[str]:
    """What each tuning cell still lacks, one line per cell and stage, e.g.
    'batch_size=16: 3 of 8 search trials finished (1 unfinished, 4 not started)',
    'batch_size=64: confirm seed 1 not started', 'batch_size=64: baseline seed 0
    unfinished (trial <id>)'. Confirm trials are named once the search is done (they
    start then); a cell whose search found no trial that ran its whole budget says so."""
    search, grid = spec["search"], dict(spec.get("grid") or {})
    seeds = list(spec.get("seeds") or [0])
    rows = tuned_rows(trials) if len(trials) else pd.DataFrame(
        columns=["trial_id", "tuning_cell", "role", "status", "seed", "confirms"])
    best = best_trials(trials, spec) if len(trials) else pd.DataFrame(columns=["tuning_cell", "best_trial"])
    out = []
    for combo in itertools.product(*grid.values()):
        values = dict(zip(grid, combo))
        shown = {k: v if isinstance(v, (int, float)) else value_label(v) for k, v in values.items()}
        name = cell_label(shown, list(grid))
        cell = rows[pd.Series([all(value_label(r.get(k)) == value_label(v) for k, v in values.items())
                               for r in rows.to_dict("records")], index=rows.index, dtype=bool)]
        out += [f"{name}: {line}" if name else line for line in _cell_gaps(cell, best, search, seeds)]
    return out


def _cell_gaps(cell: pd.DataFrame, best: pd.DataFrame, search: Mapping, seeds: list) -> list[str]:
    """The missing stages of one tuning cell (see `unfinished_cells`)."""
    wanted = search["num_samples"]
    if cell.empty:
        return [f"not started (0 of {wanted} search trials)"]
    lines = []
    searched = cell[cell["role"] == SEARCH]
    done = int(searched["status"].isin(FINISHED).sum())
    if done < wanted:
        running = len(searched) - done
        not_drawn = max(0, wanted - len(searched))
        detail = ", ".join([f"{running} unfinished"] * bool(running) + [f"{not_drawn} not started"] * bool(not_drawn))
        lines.append(f"{done} of {wanted} search trials finished ({detail})")
    else:
        best_id = best.loc[best["tuning_cell"] == cell["tuning_cell"].iloc[0], "best_trial"].dropna()
        if best_id.empty:
            lines.append(f"no search trial ran its whole budget (of {done}: "
                         f"{int((searched['status'] == 'diverged').sum())} diverged); nothing to confirm")
        else:
            lines += _seed_gaps(cell[cell["role"] == CONFIRM], seeds[1:], "confirm")
    if search.get("baseline"):
        lines += _seed_gaps(cell[cell["role"] == BASELINE], seeds, "baseline")
    return lines


def _seed_gaps(runs: pd.DataFrame, seeds: list, role: str) -> list[str]:
    """'confirm seeds 1, 2 not started' / 'baseline seed 0 unfinished (trial <id>)'."""
    by_seed = {s: runs[runs["seed"] == s] for s in seeds}
    missing = [s for s, r in by_seed.items() if r.empty]
    running = [(s, r) for s, r in by_seed.items() if len(r) and not r["status"].isin(FINISHED).any()]
    lines = [f"{role} {_seeds_text(missing)} not started"] if missing else []
    lines += [f"{role} seed {s} unfinished (trial {r['trial_id'].iloc[0]})" for s, r in running]
    return lines
