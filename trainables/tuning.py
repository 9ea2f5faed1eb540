"""Scientific vs nuisance values: the rules a tuned study's searcher (sweeps) and its
report (analysis) share. No Ray, torch or Optuna here.

A tuned study has grid axes (the scientific values), a `search:` over nuisance values
(e.g. lr) and seeds. Each grid cell is a *tuning cell*: its own search of
`num_samples` trials on the first seed, then its best nuisance values re-run on every
other seed ("confirm" trials), and with `search.baseline` the fixed nuisance values
run on every seed ("baseline" trials, the comparison a fixed-lr study would make).
Every such trial's Tune config carries `TUNING_KEY`: {"cell": tuning cell id, "role",
"sample": index of a search trial in its cell (None otherwise), "of": the search
trial whose values a confirm trial repeats}.
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping, NamedTuple, Sequence

from pathlib import Path

from trainables.contract import (  # noqa: F401  (TUNING_KEY, trials_per_cell: re-exported)
    ENDED, TUNING_KEY, CellResult, cell_status, read_cells, trials_per_cell,
)

SEARCH, CONFIRM, BASELINE = "search", "confirm", "baseline"
ROLES = (SEARCH, CONFIRM, BASELINE)

# A best value within this fraction of its range from an edge (in log space for a
# log-uniform range) may be limited by the range: the boundary check says so.
EDGE_FRACTION = 0.1


class Candidate(NamedTuple):
    """A search trial as the best-trial rule sees it."""

    trial_id: str
    value: float  # the search metric at its last report (NaN when it diverged or failed)
    complete: bool  # ran its whole budget (not stopped early by the scheduler, not failed)


def best_candidate(candidates: Iterable[Candidate], mode: str) -> Candidate | None:
    """The best of a cell's search trials: the best finite metric among those that ran
    their whole budget (a trial stopped early was judged at a smaller budget, so its
    metric is not comparable); None when no trial did. Ties: the earlier trial."""
    pool = [c for c in candidates if c.complete and _finite(c.value)]
    if not pool:
        return None
    sign = 1.0 if mode == "max" else -1.0
    return max(pool, key=lambda c: sign * c.value)  # max keeps the first of equals


def _finite(value) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def candidate(result: CellResult, metric: str) -> Candidate:
    """A search trial as read from its folder: its last report's metric; complete
    when it ended ok with its last report saying so (a trial a scheduler stopped
    early ends ok, but its last report still says "running")."""
    status = cell_status(result)
    last = result.rows[-1] if result.rows else {}
    value = last.get(metric)
    complete = status == "ok" and last.get("status") == "ok"
    return Candidate(result.trial_id, float(value) if _finite(value) else math.nan, complete)


class CellProgress(NamedTuple):
    """Where one tuning cell stands, read from the study folder."""

    search: dict[int, tuple[CellResult, str]]  # sample index -> its trial and status
    best: Candidate | None  # the best search trial, once every search trial ended
    confirmed: dict[int, tuple[CellResult, str]]  # seed -> the confirm trial of `best` and its status
    baselines: dict[int, tuple[CellResult, str]]  # seed -> the baseline trial and its status
    expected: int  # trials the cell ends with (no confirm trials when the search found no best)
    ended: int  # of those, ended ok or diverged

    @property
    def done(self) -> bool:
        return self.ended >= self.expected


def cell_progress(results: Iterable[CellResult], num_samples: int, metric: str, mode: str, seeds: Sequence[int],
                  baseline: bool) -> CellProgress:
    """One tuning cell's progress from its trials (`read_cells` of the folder, this
    cell's only). A search trial ended when it ended ok or diverged (a failed one is
    run again by a rerun, as a grid cell is); the best is chosen once all
    `num_samples` ended; the first seed's confirmed run is the best search trial."""
    search, confirmed, baselines = {}, {}, {}
    results = list(results)
    for result in results:
        info = result.tuning or {}
        if info.get("role") == SEARCH and info.get("sample") is not None:
            search[int(info["sample"])] = (result, cell_status(result))
    ended_search = {i: r for i, (r, s) in search.items() if s in ENDED}
    best = None
    if len(ended_search) >= num_samples:
        best = best_candidate((candidate(ended_search[i], metric) for i in sorted(ended_search)), mode)
    for result in results:
        info = result.tuning or {}
        seed = result.config.get("seed")
        if info.get("role") == CONFIRM and best is not None and info.get("of") == best.trial_id:
            confirmed[seed] = (result, cell_status(result))
        elif info.get("role") == BASELINE:
            baselines[seed] = (result, cell_status(result))
    if best is not None and seeds:
        first = next(r for r in ended_search.values() if r.trial_id == best.trial_id)
        confirmed[seeds[0]] = (first, cell_status(first))
    expected = trials_per_cell(num_samples, len(seeds), baseline)
    if best is None and len(ended_search) >= num_samples:
        expected -= len(seeds) - 1  # the search ended without a best: nothing to confirm
    ended = (min(len(ended_search), num_samples)
             + sum(s in ENDED for seed, (_, s) in confirmed.items() if seed != (seeds[0] if seeds else None))
             + sum(s in ENDED for _, s in baselines.values()))
    return CellProgress(search, best, confirmed, baselines, expected, ended)


def range_of(distribution: Mapping) -> tuple[float, float, bool] | None:
    """(low, high, log) of a search distribution as the spec writes it
    ({"loguniform": [1e-4, 0.1]}, {"uniform": ...}, {"randint": [lo, hi)},
    {"choice": [...]}: the smallest and largest of numeric choices, log when all are
    positive and span 10x or more); None for non-numeric choices."""
    (kind, args), = distribution.items()
    if kind == "choice":
        numbers = [v for v in args if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if len(numbers) != len(args) or len(set(numbers)) < 3:
            return None  # names, or too few values for an "edge" to mean anything
        low, high = min(numbers), max(numbers)
        return float(low), float(high), low > 0 and high / low >= 10
    low, high = args
    if kind == "randint":
        high -= 1  # exclusive upper end
    return float(low), float(high), kind == "loguniform"


def edge(value: float, distribution: Mapping) -> str | None:
    """"lower" or "upper" when `value` lies in the outer EDGE_FRACTION of the
    distribution's range (in log space for a log range), else None."""
    span = range_of(distribution)
    if span is None or not _finite(value):
        return None
    low, high, log = span
    if log:
        if value <= 0:
            return None
        low, high, value = math.log(low), math.log(high), math.log(value)
    if high <= low:
        return None
    position = (value - low) / (high - low)
    if position <= EDGE_FRACTION:
        return "lower"
    if position >= 1 - EDGE_FRACTION:
        return "upper"
    return None


def _short(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def boundary_warning(key: str, value: float, distribution: Mapping, cell_label: str) -> str | None:
    """One line when a cell's best `key` is at an edge of its range, e.g.
    "lr: best 0.089 for weight_decay=0.01 is at the upper edge of [0.0001, 0.1]: widen the range";
    `cell_label`: the cell's grid values ("" for a study without grid axes)."""
    side = edge(value, distribution)
    if side is None:
        return None
    low, high, _ = range_of(distribution)
    (kind, args), = distribution.items()
    shown = args if kind != "choice" else [low, high]
    where = f" for {cell_label}" if cell_label else ""
    return (f"{key}: best {_short(float(value))}{where} is at the {side} edge of "
            f"[{_short(float(shown[0]))}, {_short(float(shown[1]))}]: widen the range")


def cell_label(values: Mapping[str, object], keys: Sequence[str]) -> str:
    """A tuning cell named by its grid values: "weight_decay=0.01, train_size=1000"."""
    def text(v) -> str:
        if isinstance(v, list):
            return "-".join(map(str, v))
        return _short(v)

    return ", ".join(f"{k}={text(values.get(k))}" for k in keys)


def study_progress(folder: Path, record: dict, cell_ids: Sequence[str] | None = None) -> dict[str, CellProgress]:
    """Tuning cell id -> its `cell_progress`, for a tuned study's folder and record
    (study.json: its spec and `cell_ids`, the current spec's tuning cells)."""
    spec = record["spec"]
    search = spec["search"]
    ids = list(cell_ids if cell_ids is not None else record.get("cell_ids") or [])
    groups: dict[str, list[CellResult]] = {i: [] for i in ids}
    for result in read_cells(Path(folder), ids):
        if result.tuning and result.tuning.get("cell") in groups:
            groups[result.tuning["cell"]].append(result)
    seeds = list(spec.get("seeds") or [0])
    return {i: cell_progress(found, search["num_samples"], search["metric"], search.get("mode", "max"), seeds,
                             bool(search.get("baseline")))
            for i, found in groups.items()}
