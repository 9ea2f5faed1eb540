"""What a trial reports and where it lands: the one contract between the trainers
(trainables), the planner and runner (sweeps) and the readers (analysis).

- A trainer hands each report to a `Report` callback: a metric row built by
  `metric_row` (or `diverged_row`, the one report of a run whose loss went
  non-finite: `is_diverged`), and a resumable state or None.
- A study folder is `results/<study>/`: `STUDY_FILE` (the spec and provenance, read
  and written by `read_record` / `write_record` only), Tune's experiments `TUNE_DIR`,
  `TUNE_DIR-2`, ... (one folder per trial, named by its cell's content id), and what
  analysis writes: `HISTORY_FILE`, `TRIALS_FILE`, `STEPS_FILE` and `REPORT_DIR/`.
- A trial folder holds Tune's `params.json` (the trial's config) and `result.json`
  (one report per line); `read_cells` reads them back, packed trials expanded into
  their cells, and `cell_status` says how each cell ended.

Neither Ray nor torch is imported here: analysis reads results without either, and
every layer may import this module.
"""

from __future__ import annotations

import functools
import json
import math
import os
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, NamedTuple, Sequence

from trainables import storage
from trainables.errors import UserError

# A trainer's callback: (metrics row, state to resume from or None). The Tune glue
# (trainables/trial.py) turns it into `tune.report` with a checkpoint.
Report = Callable[[dict, "dict | None"], None]

# ---------------------------------------------------------------------------
# The study folder

STUDY_FILE = "study.json"
TUNE_DIR = "tune"  # the first experiment; later ones (a grown grid) are tune-2, tune-3, ...
REPORT_DIR = "report"
HISTORY_FILE = "history.parquet"
TRIALS_FILE = "trials.parquet"
STEPS_FILE = "steps.parquet"
PARAMS_FILE = "params.json"  # Tune's copy of a trial's config
RESULT_FILE = "result.json"  # Tune's reports of a trial, one JSON object per line
ERROR_FILE = "error.txt"  # Tune writes it at every failure of a trial, retried or not

# ---------------------------------------------------------------------------
# What a trial's config and reports hold

CELL_KEY = "cell"  # a grid trial's config key: its cell's resolved config
PACK_KEY = "pack"  # a packed trial's config key: {"cells": [...], "ids": [...], "id": "pack-..."}
MEMBERS_KEY = "members"  # a packed trial's report key: cell id -> that cell's metric row
STEPS_KEY = "steps"  # a report's per-step records: {"step": [...], "loss": [...], ...}
TUNING_KEY = "tuning"  # a tuned study's trial: {"cell", "role", "sample", "of", "id"} (trainables/tuning.py)
RESUME_KEY = "_resume_from"  # a carried-over cell's last checkpoint folder (bookkeeping, not identity)

# Reported by every trial row; columns not here and not metrics are config.
CONTRACT_METRICS = ["train_loss", "train_acc", "test_loss", "test_acc", "gap_acc", "gap_loss",
                    "weight_norm", "grad_norm", "time_s"]
# Per-trial facts the trial reports with every row; they go to trials.parquet.
TRIAL_FACTS = ["n_params", "device", "gpu_name", "gpu_ids", "hostname", "node_id", "num_threads",
               "pack_id", "pack_size", "plugin_sha256"]
# In the first report of a trial that trained again from the start because its
# checkpoint was damaged (trainables.trial.restored_state).
STARTED_OVER_KEY = "started_over"

# Bookkeeping keys in a report, Tune's and ours (not metrics; left out of the tables).
TUNE_KEYS = frozenset({STARTED_OVER_KEY, "timestamp", "checkpoint_dir_name", "done", "training_iteration", "date",
                       "time_this_iter_s", "time_total_s", "pid", "node_ip", "time_since_restore", "iterations_since_restore", "config",
                       "should_checkpoint", "trial_id"})
# A report's `status`: "running" until the last one, which says "ok" or "diverged".
# Readers add "error" (failed out of retries) and "incomplete" (no last report yet).
ENDED = ("ok", "diverged")


class Evaluation(NamedTuple):
    """One model on one split, in eval mode."""

    loss: float  # mean cross-entropy (mean squared error for a regression)
    acc: float  # fraction correct, in [0, 1] (NaN for a regression)
    per_class_acc: list[float]  # accuracy on each class's images (NaN for an absent class; [] for a regression)


def member_rows(report: dict) -> dict[str | None, dict]:
    """The metric rows of an engine report: {None: row} for one model, {cell id:
    row} for a pack (a family's callback edits them in place to add measurements)."""
    return report[MEMBERS_KEY] if MEMBERS_KEY in report else {None: report}


def is_diverged(loss: float) -> bool:
    """The divergence rule: a non-finite loss (NaN or inf) ends a model's run."""
    return not math.isfinite(loss)


def metric_row(position: Mapping[str, Any], evaluations: Mapping[str, Evaluation], *, classify: bool = True,
               per_class: bool = False, measures: Mapping[str, Any] | None = None,
               status: str | None = "running") -> dict:
    """One report in the output contract.

    `position` places it in the trial ({"epoch", "step"}, or e.g. {"alpha"}); then
    each split's `<split>_loss` (and `<split>_acc` when `classify`; per-class test
    accuracies `test_acc_<c>` with `per_class`), the gaps `gap_acc` = train_acc -
    test_acc and `gap_loss` = test_loss - train_loss when both splits are there,
    `measures` (probes, running_loss, weight_norm, grad_norm, time_s in seconds, ...)
    and `status` (None: the caller sets it)."""
    row: dict = dict(position)
    for name, result in evaluations.items():
        row[f"{name}_loss"] = result.loss
        if classify:
            row[f"{name}_acc"] = result.acc
            if per_class and name == "test":
                row.update({f"test_acc_{c}": acc for c, acc in enumerate(result.per_class_acc)})
    if classify and "train" in evaluations and "test" in evaluations:
        row["gap_acc"] = row["train_acc"] - row["test_acc"]
    if "train" in evaluations and "test" in evaluations:
        row["gap_loss"] = row["test_loss"] - row["train_loss"]
    row.update(measures or {})
    if status is not None:
        row["status"] = status
    return row


def diverged_row(position: Mapping[str, Any], splits: Sequence[str], *, running_loss: float, time_s: float,
                 classify: bool = True, steps: dict | None = None) -> dict:
    """The last report of a run whose loss went non-finite: every metric it would
    report, as NaN (a search or scheduler still finds its metric), its running loss
    and time, status "diverged"; with the per-step records since the last report
    (they show the blow-up), if any."""
    nan = float("nan")
    row: dict = {**position, "running_loss": running_loss, "time_s": time_s, "status": "diverged"}
    for name in (*splits, "gap"):
        row[f"{name}_loss"] = nan
        if classify:
            row[f"{name}_acc"] = nan
    row.update(weight_norm=nan, grad_norm=nan)
    if steps:
        row[STEPS_KEY] = steps
    return row


# ---------------------------------------------------------------------------
# study.json: the one reader and writer


def _record_path(folder: Path | str) -> Path | str:
    return storage.join(str(folder), STUDY_FILE) if storage.is_uri(folder) else Path(folder) / STUDY_FILE


def read_record(folder: Path | str) -> dict | None:
    """A study folder's study.json (local path or URI), or None when there is none.
    An unreadable one is a UserError naming the file."""
    path = _record_path(folder)
    if storage.is_uri(folder):
        text = storage.read_text(path) if storage.exists(path) else None
    else:
        text = path.read_text() if path.exists() else None
    if text is None:
        return None
    try:
        record = json.loads(text)
        record["spec"]
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{path}: unreadable study record ({exc}); move the folder away or use --fresh") from None
    return record


def require_record(folder: Path | str) -> dict:
    """`read_record`, refusing a folder that is not a study folder."""
    record = read_record(folder)
    if record is None:
        raise UserError(f"{folder}: not a study folder (no {STUDY_FILE}); run `gensweep run SPEC` first")
    return record


def write_record(folder: Path | str, record: dict) -> None:
    """Write study.json; locally through a temporary file, so a crash never leaves
    half a record."""
    text = json.dumps(record, indent=2, default=str)
    if storage.is_uri(folder):
        storage.write_text(str(_record_path(folder)), text)
        return
    path = Path(_record_path(folder))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def expected_trials(record: dict) -> int:
    """Trials a study should end with: its cells; a tuned study's (a search) per grid
    cell its search, confirm and baseline trials (trainables.tuning.trials_per_cell,
    when every cell's search finds a best)."""
    spec = record["spec"]
    search = spec.get("search")
    if not search:
        return record["n_cells"]
    seeds = len(spec.get("seeds") or [0])
    return record["n_cells"] // seeds * trials_per_cell(search["num_samples"], seeds, bool(search.get("baseline")))


def trials_per_cell(num_samples: int, seeds: int, baseline: bool) -> int:
    """Trials one tuning cell of a tuned study runs when its search finds a best: the
    search, one confirm trial per seed after the first (the best search trial is the
    first seed's run), and a baseline trial per seed when the spec has a baseline."""
    return num_samples + (seeds - 1) + (seeds if baseline else 0)


# ---------------------------------------------------------------------------
# Trial folders and their reports


def experiment_dirs(folder: Path) -> list[Path]:
    """The study's Tune experiments in the order they ran: `tune/`, then `tune-2/`,
    `tune-3/`, ... (a grown or changed spec runs its new cells as a new experiment)."""
    def number(path: Path) -> int | None:
        if path.name == TUNE_DIR:
            return 1
        suffix = path.name.removeprefix(f"{TUNE_DIR}-")
        return int(suffix) if suffix != path.name and suffix.isdigit() else None

    found = [(number(p), p) for p in Path(folder).glob(f"{TUNE_DIR}*") if p.is_dir() and number(p)]
    return [p for _, p in sorted(found)]


def next_experiment(folder: Path, taken: Sequence[str] = ()) -> str:
    """The name for a new experiment of the study: tune-2, tune-3, ... (the first
    free one; `taken`: names recorded elsewhere, e.g. in study.json)."""
    used = {p.name for p in experiment_dirs(folder)} | set(taken)
    number = 2
    while f"{TUNE_DIR}-{number}" in used:
        number += 1
    return f"{TUNE_DIR}-{number}"


def trial_folders(folder: Path) -> dict[str, list[Path]]:
    """Trial id -> its folders, oldest experiment first. A grid trial's folder is named
    by its cell id (sweeps.schema.cell_id), so a trial resumed in a later experiment
    has one folder in each."""
    out: dict[str, list[Path]] = {}
    for experiment in experiment_dirs(folder):
        for trial_dir in sorted(p for p in experiment.iterdir() if p.is_dir()):
            out.setdefault(trial_dir.name, []).append(trial_dir)
    return out


def read_rows(path: Path) -> list[dict]:
    """result.json is one JSON object per line; a line cut short by a crash is skipped."""
    rows = []
    if not Path(path).exists():
        return rows
    for line in Path(path).read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def flat_config(config: dict) -> dict:
    """A grid or search trial's Tune config as one dict: its cell's values (CELL_KEY),
    then a search's sampled ones (a tuned trial's TUNING_KEY is bookkeeping, left out)."""
    return {**config.get(CELL_KEY, {}), **{k: v for k, v in config.items() if k not in (CELL_KEY, TUNING_KEY)}}


def trial_params(trial_dir: Path) -> dict | None:
    """A trial's config as Tune saved it, or None when it is missing or unreadable."""
    try:
        return json.loads((Path(trial_dir) / PARAMS_FILE).read_text())
    except (OSError, ValueError):
        return None


# Keys that place a report within its trial: reports equal in these are the same
# report, re-sent after a restart (the last one wins).
POSITION_KEYS = ("phase", "epoch", "alpha")


def trial_reports(trial_dirs: Sequence[Path]) -> list[dict]:
    """A trial's reports, each once, in order. Tune numbers reports per trial
    (training_iteration) and restores that count with a checkpoint, so a report
    repeated after a restart has the same number: the last copy wins. A trial resumed
    in a later experiment (whose count starts again) has a folder there too: reports
    at the same position (POSITION_KEYS) are the same report, and the last wins."""
    parts = []
    for trial_dir in trial_dirs:
        by_iteration: dict = {}
        rows = read_rows(Path(trial_dir) / RESULT_FILE)
        # A trial whose checkpoint was damaged trained again from the start (its first
        # report then says STARTED_OVER_KEY): the abandoned attempt's rows are dropped.
        starts = [i for i, row in enumerate(rows) if row.get(STARTED_OVER_KEY)]
        for row in rows[starts[-1]:] if starts else rows:
            by_iteration[row.get("training_iteration")] = row
        if by_iteration:
            parts.append([by_iteration[k] for k in sorted(by_iteration, key=lambda i: (i is None, i or 0))])
    rows = [row for part in parts for row in part]
    if len(parts) < 2:
        return rows
    keys = [k for k in POSITION_KEYS if any(k in row for row in rows)]
    if not keys:
        return rows
    seen, kept = set(), []
    for row in reversed(rows):
        position = tuple(_position_value(row.get(k)) for k in keys)
        if position not in seen:
            seen.add(position)
            kept.append(row)
    return kept[::-1]


def _position_value(value):
    return None if isinstance(value, float) and math.isnan(value) else value


class CellResult(NamedTuple):
    """One cell's results as a trial folder holds them."""

    trial_id: str  # the cell's content id
    config: dict  # its resolved config (plus a search's sampled values)
    rows: list[dict]  # its reports in order (a packed member's own rows, with the pack's facts)
    trial_dir: Path  # the latest folder of the Tune trial that trained it
    pack_id: str | None  # the packed trial it was trained in, if any
    tuning: dict | None = None  # a tuned study's trial: its TUNING_KEY (trainables.tuning)

    @property
    def epochs_done(self) -> int:
        """The epoch of its last report (0 before the first)."""
        return int(self.rows[-1].get("epoch", 0)) if self.rows else 0


def read_cells(folder: Path, trial_ids: Sequence[str] | None = None) -> Iterator[CellResult]:
    """Every cell with a trial folder in the study (or only `trial_ids`: cell ids, or a
    tuned study's tuning cell ids, which select every trial of those cells), a packed
    trial expanded into its member cells."""
    wanted = None if trial_ids is None else set(trial_ids)
    for folder_id, dirs in trial_folders(Path(folder)).items():
        params = trial_params(dirs[-1])
        if params is None:
            continue
        if PACK_KEY not in params:
            tuning = params.get(TUNING_KEY)
            if wanted is None or folder_id in wanted or (tuning is not None and tuning.get("cell") in wanted):
                yield CellResult(folder_id, flat_config(params), trial_reports(dirs), dirs[-1], None, tuning)
            continue
        pack = params[PACK_KEY]
        members = [(i, c) for i, c in zip(pack["ids"], pack["cells"]) if wanted is None or i in wanted]
        if not members:
            continue
        rows: dict[str, list[dict]] = {member_id: [] for member_id, _ in members}
        for report in trial_reports(dirs):
            metrics = report.get(MEMBERS_KEY)
            if not isinstance(metrics, dict):
                continue
            shared = {k: v for k, v in report.items() if k in TRIAL_FACTS or k in TUNE_KEYS}  # the pack's facts
            for member_id in rows.keys() & metrics.keys():
                rows[member_id].append({**shared, **metrics[member_id], "pack_id": folder_id})
        for member_id, cell in members:
            yield CellResult(member_id, cell, rows[member_id], dirs[-1], folder_id)



def cell_status(cell: CellResult) -> str:
    """How a cell ended: "ok" or "diverged" (its last report says so), "error" (its
    trial failed out of retries), or "incomplete" (started, not ended: running now
    or interrupted). A trial stopped early by a scheduler ends "ok"."""
    tune_status = tune_trial_status(cell.trial_dir)
    # error.txt is written at every failure, also one Tune then retries: it is final
    # only when the experiment state says ERROR (or there is no state to ask).
    errored = (cell.trial_dir / ERROR_FILE).exists() and tune_status in ("ERROR", None)
    if not cell.rows:
        return "error" if errored else "incomplete"
    status = cell.rows[-1].get("status", "ok")
    if status == "running":
        return "error" if errored else ("ok" if tune_status == "TERMINATED" else "incomplete")
    return status


def cell_statuses(folder: Path, trial_ids: Sequence[str] | None = None) -> dict[str, str]:
    """Cell id -> `cell_status`, for the cells with a trial folder."""
    return {cell.trial_id: cell_status(cell) for cell in read_cells(folder, trial_ids)}


def tune_trial_status(trial_dir: Path) -> str | None:
    """The trial's status in Tune's latest experiment state (PENDING, RUNNING,
    TERMINATED, ERROR), or None when no state file mentions it."""
    trial_dir = Path(trial_dir)
    for state_file in sorted(trial_dir.parent.glob("experiment_state-*.json"), reverse=True):
        try:
            stat = state_file.stat()
        except OSError:
            continue
        statuses = _experiment_statuses(str(state_file), stat.st_mtime_ns, stat.st_size)
        if trial_dir.name in statuses:
            return statuses[trial_dir.name]
    return None


@functools.lru_cache(maxsize=8)
def _experiment_statuses(state_file: str, mtime_ns: int, size: int) -> dict[str, str]:
    """Trial folder name (and trial id) -> status, from one experiment state file;
    read once per version of the file (its mtime and size are in the key): the state
    of 1,000 trials is tens of MB, and every trial's status is asked."""
    try:
        state = json.loads(Path(state_file).read_text())
    except (OSError, ValueError):
        return {}
    out: dict[str, str] = {}
    for entry in state.get("trial_data", []):
        try:
            meta = json.loads(entry[1]) if isinstance(entry, list) else entry
            trial = json.loads(entry[0]) if isinstance(entry, list) else entry
        except (TypeError, ValueError):
            continue
        status = meta.get("status", trial.get("status"))
        for name in (trial.get("relative_logdir"), trial.get("trial_id")):
            if name:
                out.setdefault(name, status)
    return out
