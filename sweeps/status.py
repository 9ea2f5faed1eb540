"""Which cells of a spec are done, running, missing or failed.

    python -m sweeps status sweeps/wd.yaml --profile quick

Cells are matched to trials by their stable id (sweeps.schema.cell_id), so the
answer holds for a spec that has grown since its last run: new grid values or seeds
show as missing, and a changed fixed value makes every cell missing again.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from sweeps.planner import study_dir_for, varying_keys
from sweeps.schema import Study
from trainables.contract import cell_status, read_cells, read_record

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


def _label(value):
    return "-".join(map(str, value)) if isinstance(value, list) else value


def print_status(study: Study, results: str | Path) -> int:
    table = cell_states(study, results)
    folder = study_dir_for(study, results, fresh=False)
    counts = table["state"].str.split(" ").str[0].value_counts()
    summary = ", ".join(f"{counts.get(s, 0)} {s}" for s in ("done", "running", "missing", "failed"))
    print(f"{study.study_name} ({folder}): {len(table)} cells: {summary}")
    print(table.to_string(index=False))
    if counts.get("running", 0):
        print("running: started and not finished, either training now or interrupted "
              "(`python -m sweeps run` with the same spec resumes it)")
    return 0
