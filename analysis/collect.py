"""A study folder -> tidy DataFrames (the output contract: docs/output.md).

Reads the trial folders through `trainables.contract` (Tune's `params.json`,
`result.json`, `error.txt`), so a report needs neither Ray running nor the study to
be finished.

Per-step records (a report's `steps` key: a dict of equal-length lists, at least
`step` and `loss`, e.g. from the engine's `log_every_steps`) are kept out of the
history and expanded into a third table, one row per trial x logged step
(`collect_tables(...).steps`, written as steps.parquet by the report).
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from trainables.contract import (
    PACK_KEY, STEPS_KEY, TRIAL_FACTS, TUNE_KEYS, CellResult, cell_status, read_cells, trial_folders, trial_params,
)


class Tables(NamedTuple):
    history: pd.DataFrame
    trials: pd.DataFrame
    steps: pd.DataFrame  # trial_id, step, loss, grad_norm, ..., config columns; empty when none logged


def _hashable(value):
    return "-".join(map(str, value)) if isinstance(value, list) else value


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


def collect_tables(folder: Path, trial_ids: list[str] | None = None) -> Tables:
    """(history, trials, steps) for a study folder. History: one row per trial x report
    (an evaluated epoch, or e.g. an interpolation point), each once (a restarted trial
    re-reports what came after its checkpoint; the last report wins). Trials: one row
    per trial with config, final metrics, `status` (ok / diverged / error /
    incomplete: `trainables.contract.cell_status`), `epochs_done`, `stopped_early`
    (by a scheduler) and wall time; a tuned study's trials also name their
    `tuning_cell`, `role` (search / confirm / baseline), `sample` and `confirms`.
    `trial_ids`: only these trials (the current spec's cells), else all."""
    history_parts, trial_rows, step_parts = [], [], []
    for cell in read_cells(Path(folder), trial_ids):
        history, record, steps = _cell_tables(cell)
        trial_rows.append(record)
        if history is not None:
            history_parts.append(history)
        if steps is not None:
            step_parts.append(steps)
    history = pd.concat(history_parts, ignore_index=True) if history_parts else pd.DataFrame()
    steps = pd.concat(step_parts, ignore_index=True) if step_parts else pd.DataFrame()
    return Tables(history, pd.DataFrame(trial_rows), steps)


def _cell_tables(cell: CellResult) -> tuple[pd.DataFrame | None, dict, pd.DataFrame | None]:
    """One cell's history rows, trials row and step rows, from its reports."""
    config = {k: _hashable(v) for k, v in cell.config.items() if not k.startswith("_")}
    if cell.tuning:  # a tuned study's trial: its tuning cell and role (trainables.tuning)
        config.update(tuning_cell=cell.tuning.get("cell"), role=cell.tuning.get("role"),
                      sample=cell.tuning.get("sample"), confirms=cell.tuning.get("of"))
    record = {"trial_id": cell.trial_id, **config}
    status = cell_status(cell)
    if not cell.rows:
        record.update(epochs_done=0, wall_s=np.nan, status=status)
        return None, record, None
    frame = pd.DataFrame(cell.rows)
    steps = _expand_steps(frame.pop(STEPS_KEY), cell.trial_id, config) if STEPS_KEY in frame else None
    facts = {k: frame[k].iloc[-1] for k in TRIAL_FACTS if k in frame}
    frame = frame.drop(columns=[c for c in frame.columns if c in TUNE_KEYS or c in TRIAL_FACTS])
    # The config's values on every row, in one step (a column at a time cost a
    # 1,000-trial report about 4 s): a key the rows have already keeps its place.
    order = ["trial_id", *frame.columns, *(k for k in config if k not in frame.columns)]
    constant = pd.DataFrame({"trial_id": cell.trial_id, **{k: [v] * len(frame) for k, v in config.items()}},
                            index=frame.index)
    frame = pd.concat([frame.drop(columns=[c for c in config if c in frame.columns]), constant], axis=1)[order]
    last = frame.iloc[-1].to_dict()
    record.update({f"final_{k}": v for k, v in last.items() if k not in config and k not in ("trial_id", "status")})
    record.update(facts)
    record["epochs_done"] = cell.epochs_done
    # Ended "ok" but its last report still says "running": a scheduler (ASHA) stopped
    # it before its budget, so its final metrics are from a smaller budget.
    record["stopped_early"] = status == "ok" and cell.rows[-1].get("status") == "running"
    record["wall_s"] = float(last.get("time_s", np.nan))
    record["status"] = status
    return frame, record, steps


def read_table(path: Path) -> pd.DataFrame:
    """One of a study's tables (history, trials, steps .parquet); a file cut short or
    corrupted (a full disk, a copy that stopped) is a UserError naming it, with the
    way to rebuild it: the tables are derived from the trial folders."""
    from trainables.errors import UserError

    try:
        return pd.read_parquet(path)
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        if not Path(path).is_file():
            raise
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"{path}: unreadable, cut short or corrupted ({reason}); rebuild it from the trial folders: "
                        f"gensweep report {Path(path).parent}") from None


def last_model_state(folder: Path, trial_id: str, pack_id: str | None = None) -> dict | None:
    """A trial's model weights (a module state_dict) from its last whole checkpoint,
    or None when it has none. `pack_id` (trials.parquet's column): the cell trained in that
    packed trial, whose checkpoint holds every member's weights stacked."""
    from trainables.checkpoint import good_checkpoint, load_state

    folders = trial_folders(Path(folder))
    packed = isinstance(pack_id, str) and pack_id in folders
    dirs = folders.get(pack_id if packed else trial_id, [])
    state_file, damaged = good_checkpoint(dirs[-1]) if dirs else (None, [])
    for line in damaged:  # a damaged newest checkpoint: the newest whole one serves, and the user is told
        print(f"{line}; {'using ' + state_file.parent.name if state_file else 'no weights for this trial'}", flush=True)
    if state_file is None:
        return None
    state = load_state(state_file)
    if not packed:
        return state["model"]
    from trainables.packed import member_state

    members = trial_params(dirs[-1])[PACK_KEY]["ids"]
    return member_state(state["models"], members.index(trial_id))
