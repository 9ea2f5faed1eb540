"""A study folder -> tidy DataFrames (the output contract of DESIGN.md).

Reads Tune's per-trial files directly (`params.json`, `result.json`, `error.txt`),
so a report needs neither Ray running nor the study to be finished.

Per-step records (a report's `steps` key: a dict of equal-length lists, at least
`step` and `loss`, e.g. from the engine's `log_every_steps`) are kept out of the
history and expanded into a third table, one row per trial x logged step
(`collect_tables(...).steps`, written as steps.parquet by the report).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

TUNE_DIR = "tune"
STUDY_FILE = "study.json"

# Reported by every trial row; columns not here and not metrics are config.
CONTRACT_METRICS = ["train_loss", "train_acc", "test_loss", "test_acc", "gap_acc", "gap_loss",
                    "weight_norm", "grad_norm", "time_s"]
# Per-trial facts the trial reports with every row; they go to trials.parquet.
TRIAL_FACTS = ["n_params", "device", "gpu_name", "gpu_ids", "hostname", "node_id", "num_threads",
               "pack_id", "pack_size"]
PACK_KEY = "pack"  # a packed trial's config key (sweeps/packing.py): its cells and their ids
MEMBERS_KEY = "members"  # a packed trial's report key: cell id -> that cell's metrics
# Tune's own bookkeeping columns we drop from the history.
_TUNE_COLUMNS = {"timestamp", "checkpoint_dir_name", "done", "training_iteration", "date", "time_this_iter_s",
                 "time_total_s", "pid", "node_ip", "time_since_restore", "iterations_since_restore", "config",
                 "should_checkpoint", "trial_id"}


def read_study(folder: Path) -> dict:
    path = Path(folder) / STUDY_FILE
    if not path.exists():
        raise FileNotFoundError(f"{folder}: not a study folder (no {STUDY_FILE}); run `python -m sweeps run SPEC` first")
    return json.loads(path.read_text())


def read_rows(path: Path) -> list[dict]:
    """result.json is one JSON object per line; a line cut short by a crash is skipped."""
    rows = []
    if not path.exists():
        return rows
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def _trial_params(trial_dir: Path) -> dict | None:
    try:
        return json.loads((trial_dir / "params.json").read_text())
    except (OSError, ValueError):
        return None


def _cells_of(trial_id: str, params: dict, frame: pd.DataFrame):
    """(cell id, config, report rows) of each cell a Tune trial trained: the trial
    itself, or every member of a packed trial (`pack:` in the spec), whose rows are
    its entries of the reports' `members`, with the pack's facts."""
    if PACK_KEY not in params:
        yield trial_id, {**params.get("cell", {}), **{k: v for k, v in params.items() if k != "cell"}}, frame
        return
    pack = params[PACK_KEY]
    shared = [c for c in frame.columns if c != MEMBERS_KEY and (c in TRIAL_FACTS or c in _TUNE_COLUMNS)]
    for member_id, cell in zip(pack["ids"], pack["cells"]):
        rows = []
        for _, row in frame.iterrows():
            metrics = row.get(MEMBERS_KEY)
            if isinstance(metrics, dict) and member_id in metrics:
                rows.append({**{c: row[c] for c in shared}, **metrics[member_id], "pack_id": trial_id})
        yield member_id, cell, pd.DataFrame(rows)


def _hashable(value):
    return "-".join(map(str, value)) if isinstance(value, list) else value


class Tables(NamedTuple):
    history: pd.DataFrame
    trials: pd.DataFrame
    steps: pd.DataFrame  # trial_id, step, loss, grad_norm, ..., config columns; empty when none logged


STEPS_KEY = "steps"  # the report key holding per-step records


def _expand_steps(records: pd.Series, trial_id: str, config: dict) -> pd.DataFrame | None:
    """One trial's `steps` records (one dict of lists per report, NaN where a report
    had none) -> rows, with the trial's id first and its config columns last (a
    config key never overwrites a per-step column)."""
    parts = [pd.DataFrame(r) for r in records if isinstance(r, dict) and r]
    if not parts:
        return None
    frame = pd.concat(parts, ignore_index=True)
    frame.insert(0, "trial_id", trial_id)
    for key, value in config.items():
        if key not in frame:
            frame[key] = value
    return frame


def collect(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(history, trials) for a study folder; see `collect_tables`."""
    tables = collect_tables(folder)
    return tables.history, tables.trials


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


def trial_folders(folder: Path) -> dict[str, list[Path]]:
    """Trial id -> its folders, oldest experiment first. A grid trial's folder is named
    by its cell id (sweeps.schema.cell_id), so a trial resumed in a later experiment
    has one folder in each."""
    out: dict[str, list[Path]] = {}
    for experiment in experiment_dirs(folder):
        for trial_dir in sorted(p for p in experiment.iterdir() if p.is_dir()):
            out.setdefault(trial_dir.name, []).append(trial_dir)
    return out


# Columns that place a report within its trial: reports equal in these are the same
# report, re-sent after a restart (the last one wins).
_POSITION = ("phase", "epoch", "alpha")


def _trial_frame(trial_dirs: list[Path]) -> pd.DataFrame:
    parts = []
    for trial_dir in trial_dirs:
        rows = read_rows(trial_dir / "result.json")
        if rows:
            # Tune numbers reports per trial (training_iteration) and restores that count
            # with a checkpoint, so a report repeated after a restart has the same number.
            parts.append(pd.DataFrame(rows).drop_duplicates("training_iteration", keep="last")
                         .sort_values("training_iteration"))
    if not parts:
        return pd.DataFrame()
    frame = pd.concat(parts, ignore_index=True)
    if len(parts) > 1:  # resumed in a later experiment, whose iteration count starts again
        position = [c for c in _POSITION if c in frame]
        frame = frame.drop_duplicates(position, keep="last") if position else frame
    return frame


def collect_tables(folder: Path, trial_ids: list[str] | None = None) -> Tables:
    """(history, trials, steps) for a study folder. History: one row per trial x report
    (an evaluated epoch, or e.g. an interpolation point), each once (a restarted trial
    re-reports what came after its checkpoint; the last report wins). Trials: one row per trial with config, final metrics,
    `status` (ok / diverged / error / incomplete), `epochs_done` and wall time.
    `trial_ids`: only these trials (the current spec's cells), else all."""
    folder = Path(folder)
    history_parts, trial_rows, step_parts = [], [], []
    wanted = None if trial_ids is None else set(trial_ids)
    for folder_id, trial_dirs in trial_folders(folder).items():
        trial_dir = trial_dirs[-1]
        params = _trial_params(trial_dir)
        if params is None:
            continue
        if wanted is not None and PACK_KEY not in params and folder_id not in wanted:
            continue  # a cell the spec no longer has: its reports are not even read
        for trial_id, config, frame in _cells_of(folder_id, params, _trial_frame(trial_dirs)):
            if wanted is None or trial_id in wanted:
                _add_trial(trial_id, config, frame, trial_dir, history_parts, trial_rows, step_parts)
    history = pd.concat(history_parts, ignore_index=True) if history_parts else pd.DataFrame()
    trials = pd.DataFrame(trial_rows)
    step_parts = [part for part in step_parts if part is not None]
    steps = pd.concat(step_parts, ignore_index=True) if step_parts else pd.DataFrame()
    return Tables(history, trials, steps)


def _add_trial(trial_id: str, config: dict, frame: pd.DataFrame, trial_dir: Path,
               history_parts: list, trial_rows: list, step_parts: list) -> None:
    """One cell's history rows, trials row and step rows, from its reports."""
    config = {k: _hashable(v) for k, v in config.items() if not k.startswith("_")}
    rows = not frame.empty
    # Tune writes error.txt at every failure, also one it then retries: it is final
    # only when the experiment state says ERROR (or there is no state to ask).
    tune_status = _tune_status(trial_dir)
    errored = (trial_dir / "error.txt").exists() and tune_status in ("ERROR", None)
    record = {"trial_id": trial_id, **config}
    if rows:
        if STEPS_KEY in frame:
            step_parts.append(_expand_steps(frame.pop(STEPS_KEY), trial_id, config))
        facts = {k: frame[k].iloc[-1] for k in TRIAL_FACTS if k in frame}
        frame = frame.drop(columns=[c for c in frame.columns if c in _TUNE_COLUMNS or c in TRIAL_FACTS])
        for key, value in config.items():
            frame[key] = value
        frame.insert(0, "trial_id", trial_id)
        history_parts.append(frame)
        last = frame.iloc[-1].to_dict()
        status = last.get("status", "ok")
        record.update({f"final_{k}": v for k, v in last.items() if k not in config and k not in ("trial_id", "status")})
        record.update(facts)
        record["epochs_done"] = int(last.get("epoch", 0))
        record["wall_s"] = float(last.get("time_s", np.nan))
    else:
        status = "incomplete"
        record.update(epochs_done=0, wall_s=np.nan)
    if status == "running":
        # Stopped before its last epoch: by the scheduler (ok), a crash, or still running.
        # Stopped early by the scheduler (TERMINATED) counts as ok.
        status = "error" if errored else ("ok" if tune_status == "TERMINATED" else "incomplete")
    elif errored and status != "diverged" and not rows:
        status = "error"
    record["status"] = status
    trial_rows.append(record)


def last_model_state(folder: Path, trial_id: str, pack_id: str | None = None) -> dict | None:
    """A trial's model weights (a module state_dict) from its last checkpoint, or None
    when it has none. `pack_id` (trials.parquet's column): the cell trained in that
    packed trial, whose checkpoint holds every member's weights stacked."""
    from trainables.checkpoint import last_checkpoint, load_state

    folders = trial_folders(Path(folder))
    packed = isinstance(pack_id, str) and pack_id in folders
    dirs = folders.get(pack_id if packed else trial_id, [])
    state_file = last_checkpoint(dirs[-1]) if dirs else None
    if state_file is None:
        return None
    state = load_state(state_file)
    if not packed:
        return state["model"]
    from trainables.packed import member_state

    members = _trial_params(dirs[-1])[PACK_KEY]["ids"]
    return member_state(state["models"], members.index(trial_id))


def _tune_status(trial_dir: Path) -> str | None:
    """The trial's status in Tune's latest experiment state (PENDING, RUNNING,
    TERMINATED, ERROR), or None when no state file mentions it."""
    for state_file in sorted(trial_dir.parent.glob("experiment_state-*.json"), reverse=True):
        try:
            state = json.loads(state_file.read_text())
        except (OSError, ValueError):
            continue
        for entry in state.get("trial_data", []):
            try:
                meta = json.loads(entry[1]) if isinstance(entry, list) else entry
                trial = json.loads(entry[0]) if isinstance(entry, list) else entry
            except (TypeError, ValueError):
                continue
            if trial_dir.name in (trial.get("relative_logdir"), trial.get("trial_id")):
                return meta.get("status", trial.get("status"))
    return None
