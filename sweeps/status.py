"""Which cells of a spec are done, running, missing or failed.

    python -m sweeps status sweeps/wd.yaml --profile quick

Cells are matched to trials by their stable id (sweeps.schema.cell_id), so the
answer holds for a spec that has grown since its last run: new grid values or seeds
show as missing, and a changed fixed value makes every cell missing again. A tuned
study (grid x search) shows one row per grid cell: its search's progress, the best
nuisance values so far, and how many seeds confirmed them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from sweeps.planner import study_dir_for, varying_keys
from sweeps.schema import Study
from trainables.contract import ENDED, cell_status, read_cells, read_record
from trainables.tuning import study_progress

# Cell status (trainables.contract.cell_status) -> what the cell needs.
_STATE = {"ok": "done", "diverged": "done (diverged)", "error": "failed", "incomplete": "running"}


def cell_states(study: Study, results: str | Path) -> pd.DataFrame:
    """One row per cell: its varying keys, trial_id, state and epochs done."""
    folder = study_dir_for(study, results, fresh=False)
    ids = study.cell_ids
    known = {}
    if Path(folder).exists() and read_record(folder) is not None:
        known = {cell.trial_id: cell for cell in read_cells(Path(folder), ids)}
    keys = [k for k in varying_keys(study) if k in study.cells[0]]
    rows = []
    for trial_id, cell in zip(ids, study.cells):
        row = {k: _label(cell[k]) for k in keys}
        found = known.get(trial_id)
        if found is not None:
            status = cell_status(found)
            row.update(trial_id=trial_id, state=_STATE.get(status, status),
                       epochs=f"{found.epochs_done}/{cell.get('epochs', '?')}")
        else:
            row.update(trial_id=trial_id, state="missing", epochs=f"0/{cell.get('epochs', '?')}")
        rows.append(row)
    return pd.DataFrame(rows)


def tuned_states(study: Study, results: str | Path) -> pd.DataFrame:
    """A tuned study: one row per grid cell: its grid values, search trials ended of
    num_samples, the best nuisance values so far, confirmed seeds (and baselines), state."""
    folder = study_dir_for(study, results, fresh=False)
    record = {"spec": json.loads(study.spec.model_dump_json())}
    progress = {}
    if Path(folder).exists() and read_record(folder) is not None:
        progress = study_progress(Path(folder), record, study.tuning_ids)
    search, seeds = study.spec.search, study.spec.seeds
    rows = []
    for cell_id, cell in zip(study.tuning_ids, study.tuning_cells):
        row = {k: _label(cell[k]) for k in study.spec.grid}
        found = progress.get(cell_id)
        ended = sum(s in ENDED for _, s in found.search.values()) if found else 0
        started = len(found.search) if found else 0
        row["searched"] = f"{ended}/{search.num_samples}"
        best = found.best if found else None
        if best is not None:
            params = found.confirmed[seeds[0]][0].config
            row["best"] = ", ".join(f"{k}={params[k]:.4g}" if isinstance(params[k], float) else f"{k}={params[k]}"
                                    for k in search.space)
        else:
            row["best"] = "-"
        row["confirmed"] = f"{sum(s in ENDED for _, s in found.confirmed.values()) if found and best else 0}/{len(seeds)}"
        if search.baseline:
            row["baseline"] = f"{sum(s in ENDED for _, s in found.baselines.values()) if found else 0}/{len(seeds)}"
        failed = found is not None and any(s == "error" for _, s in [*found.search.values(), *found.confirmed.values(),
                                                                      *found.baselines.values()])
        row["state"] = ("done" if found and found.done else "failed" if failed
                        else "running" if started or (found and found.baselines) else "missing")
        row["cell_id"] = cell_id
        rows.append(row)
    return pd.DataFrame(rows)


def _label(value):
    return "-".join(map(str, value)) if isinstance(value, list) else value


def print_status(study: Study, results: str | Path) -> int:
    tuned = study.spec.search is not None
    table = tuned_states(study, results) if tuned else cell_states(study, results)
    folder = study_dir_for(study, results, fresh=False)
    counts = table["state"].str.split(" ").str[0].value_counts()
    summary = ", ".join(f"{counts.get(s, 0)} {s}" for s in ("done", "running", "missing", "failed"))
    what = "grid cells (each a search, then its best on every seed)" if tuned else "cells"
    print(f"{study.study_name} ({folder}): {len(table)} {what}: {summary}")
    print(table.to_string(index=False))
    if counts.get("running", 0):
        print("running: started and not finished, either training now or interrupted "
              "(`python -m sweeps run` with the same spec resumes it)")
    return 0
