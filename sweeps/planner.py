"""What a run of a study does: its folder, which cells still need training, and how
they are grouped into packed trials. No Ray here: the plan is read from the study
folder alone (study.json and the trial folders, through trainables.contract).

- `study_dir_for` / `check_study_dir`: the study's folder, and whether it already
  holds this study (resume), another spec's results (refused) or nothing yet.
- `plan_grid`: a cell is done when a trial with its content id ended ok or diverged.
  If the unfinished cells are exactly the unfinished ones of the latest experiment,
  that experiment is resumed as it was (Tune restore); otherwise (grid grown, values
  changed) a new experiment `tune-N` trains them, each continuing from its last
  checkpoint if it has one.
- `pack_cells` / `packs_for`: a spec's `pack: K` groups cells equal in every key but
  the per-model ones (seed, lr, weight_decay, momentum:
  trainables.packed.PER_MODEL_KEYS) into trials of at most K cells, in grid order.
  A pack is one Tune trial whose config is `{"pack": {"cells": [...], "ids": [...],
  "id": "pack-<12 hex>"}}`; its folder is named by that id (a hash of the member
  ids), and each cell still gets its own rows, under its own id, in the results.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import NamedTuple

from sweeps.schema import Study, cell_id
from sweeps.specyaml import SpecError
from trainables import storage
from trainables.checkpoint import good_checkpoint
from trainables.contract import (
    ENDED, PACK_KEY, RESUME_KEY, TUNE_DIR, cell_status, cell_statuses, next_experiment, read_cells, read_record,
    trial_folders,
)
from trainables.packed import PER_MODEL_KEYS
from trainables.tuning import SEARCH, Candidate, candidate, study_progress

# What makes two runs the same study; resources, figures and retries may change.
IDENTITY_KEYS = ("family", "fixed", "grid", "search", "scheduler", "seeds")


def study_dir_for(study: Study, results: str | Path, fresh: bool) -> Path | str:
    """The study's folder under `results`: a local path, or a URI (cloud storage).
    `fresh`: a new folder beside an existing one, named with the time."""
    if storage.is_uri(results):
        base: Path | str = storage.join(str(results), study.study_name)
        taken = storage.exists(base)
    else:
        base = Path(results).resolve() / study.study_name
        taken = base.exists()
    if fresh and taken:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
        name = f"{study.study_name}-{stamp}"
        return base.parent / name if isinstance(base, Path) else storage.join(base.rsplit("/", 1)[0], name)
    return base


def check_study_dir(study: Study, folder: Path | str) -> dict | None:
    """The stored record when `folder` holds this study already (resume), else None;
    refuses a folder that holds a different spec's results, and one that cannot be
    written."""
    stored = read_record(folder)
    if stored is not None:
        mine = json.loads(study.spec.model_dump_json())
        # A grid study may grow or change (new cells become new trials, finished ones
        # are kept, figures show the current cells only); a search, another family or
        # a folder from before trial ids were stable may not.
        # A tuned study's cells keep their searches only under the same search and
        # scheduler (they decide which trial is best).
        keys = IDENTITY_KEYS if growable(stored) is False else (
            ("family", "search", "scheduler") if study.spec.search else ("family", "search"))
        changed = [k for k in keys if stored["spec"].get(k) != mine.get(k)]
        if changed:
            raise SpecError(
                f"{folder}: holds results of a different spec (differs in: {', '.join(changed)}); "
                f"use --fresh to start a new study beside it, or --results to put it elsewhere"
            )
    if not storage.is_uri(folder):
        storage.writable_ancestor(Path(folder))
    return stored


def plugin_changes(study: Study, folder: Path | str, stored: dict | None, accept: bool) -> list[dict]:
    """The study record's log of accepted plugin changes, with any new ones. A plugin
    file whose sha256 differs from the one the study's cells ran with is refused
    (results must not mix two versions of the code) unless `accept`, which logs it."""
    log = list((stored or {}).get("plugin_changes") or [])
    before = {p["plugin"]: p for p in (stored or {}).get("plugins") or []}
    for plugin in study.plugins:
        old = before.get(plugin.entry)
        if old is None or old["sha256"] == plugin.sha256:
            continue
        if not accept:
            raise SpecError(f"{plugin.path}: plugin changed since the cells in {folder} ran (sha256 "
                            f"{old['sha256'][:12]} -> {plugin.sha256[:12]}); run with --fresh to start a new study, "
                            f"or with --accept-plugin-change to keep its results and record the change")
        log.append({"plugin": plugin.entry, "path": plugin.path, "from": old["sha256"], "to": plugin.sha256,
                    "at": datetime.now(timezone.utc).isoformat(timespec="seconds")})
        print(f"{plugin.path}: plugin changed (sha256 {old['sha256'][:12]} -> {plugin.sha256[:12]}); "
              f"keeping the study's results and recording the change in study.json", flush=True)
    return log


def growable(stored: dict | None) -> bool | None:
    """Whether a study folder's record lists its experiments and cell ids (and so can
    grow); None for a new folder."""
    return None if stored is None else "experiments" in stored


class Plan(NamedTuple):
    """What a run of a study does: resume an experiment, start a new one over the
    cells not finished yet, or nothing."""

    experiment: str | None  # name of the Tune experiment to run; None: every cell is done
    restore: bool  # resume that experiment exactly (Tune restore)
    cells: list[dict]  # cells of a new experiment (resumable ones carry RESUME_KEY)
    done: int  # cells finished earlier and kept


def tracks_cells(study: Study, folder: Path | str, stored: dict | None) -> bool:
    """Whether the study keeps its cells' ids and experiments in study.json, and so can
    grow: a grid or tuned study in a local or shared folder. Folders in cloud storage
    or from before trial ids were stable resume their one experiment as it was."""
    return not (storage.is_uri(folder) or growable(stored) is False)


def plan_study(study: Study, folder: Path | str, stored: dict | None, can_restore) -> Plan:
    """The plan for `study` in `folder`. `can_restore(path) -> bool`: whether a Tune
    experiment folder can be resumed (Tune's own check, passed in by the runner)."""
    if not tracks_cells(study, folder, stored):
        path = storage.join(str(folder), TUNE_DIR) if storage.is_uri(folder) else str(Path(folder) / TUNE_DIR)
        return Plan(TUNE_DIR, can_restore(path), study.tuning_cells if study.spec.search else study.cells, 0)
    return plan_grid(study, Path(folder), stored, can_restore)


def plan_grid(study: Study, folder: Path, stored: dict | None, can_restore) -> Plan:
    """Decide from the study folder which cells of a grid still need training (see the
    module docstring). A tuned study's cells are its tuning cells (Study.tuning_cells):
    one is done when its search, confirm and baseline trials all ended."""
    tuned = study.spec.search is not None
    ids, all_cells = (study.tuning_ids, study.tuning_cells) if tuned else (study.cell_ids, study.cells)
    experiments = (stored or {}).get("experiments") or []
    if not experiments:
        return Plan(TUNE_DIR, False, all_cells, 0)
    if tuned:
        record = {"spec": json.loads(study.spec.model_dump_json())}
        done = {i for i, p in study_progress(folder, record, ids).items() if p.done}
    else:
        status = cell_statuses(folder, ids)
        done = {i for i in ids if status.get(i) in ENDED}
    todo = [(i, c) for i, c in zip(ids, all_cells) if i not in done]
    if not todo:
        return Plan(None, False, [], len(done))
    latest = experiments[-1]
    if ({i for i in latest["cell_ids"] if i not in done} == {i for i, _ in todo}
            and can_restore(str(Path(folder) / latest["name"]))):
        return Plan(latest["name"], True, [], len(done))
    if tuned:  # each cell's searcher picks up its trials on disk (tuning_priors)
        cells = [cell for _, cell in todo]
    else:
        folders = trial_folders(folder)
        cells = []
        for i, cell in todo:
            checkpoint = resume_point(folders[i][-1]) if i in folders else None
            cells.append({**cell, RESUME_KEY: str(checkpoint.parent)} if checkpoint else cell)
    return Plan(next_experiment(folder, [e["name"] for e in experiments]), False, cells, len(done))


def resume_point(trial_dir: Path) -> Path | None:
    """The newest whole checkpoint of a trial folder to continue from (None: start
    over); says in one line which damaged ones it passed over (trainables.checkpoint.damage)."""
    state, damaged = good_checkpoint(trial_dir)
    for line in damaged:
        then = f"continuing from {state.parent.name}" if state else "its cell starts over"
        print(f"{line}; {then}", flush=True)
    return state


class Prior(NamedTuple):
    """A trial of a tuning cell from an earlier experiment of the study, for its
    searcher (sweeps.cellsearch) to pick up."""

    trial_id: str
    role: str  # trainables.tuning.SEARCH / CONFIRM / BASELINE
    sample: int | None
    seed: int
    params: dict  # its nuisance values
    ended: bool  # ended ok or diverged; else it is proposed again, from its checkpoint if it has one
    candidate: Candidate | None  # a search trial's metric
    resume: str | None  # its last checkpoint folder, if any
    of: str | None = None  # a confirm trial: the search trial whose values it repeats


def tuning_priors(study: Study, folder: Path | str, cell_ids: list[str]) -> dict[str, list[Prior]]:
    """Tuning cell id -> its trials already in the study folder (none in a new or
    cloud folder)."""
    out: dict[str, list[Prior]] = {i: [] for i in cell_ids}
    if storage.is_uri(folder) or not Path(folder).exists():
        return out
    space = list(study.spec.search.space)
    for result in read_cells(Path(folder), cell_ids):
        info = result.tuning or {}
        if info.get("cell") not in out:
            continue
        status = cell_status(result)
        checkpoint = resume_point(result.trial_dir)
        out[info["cell"]].append(Prior(
            result.trial_id, info["role"], info.get("sample"), result.config.get("seed"),
            {k: result.config[k] for k in space if k in result.config}, status in ENDED,
            candidate(result, study.spec.search.metric) if info["role"] == SEARCH else None,
            str(checkpoint.parent) if checkpoint else None, info.get("of")))
    return out


def tuning_configs(study: Study) -> dict[str, dict[int, dict]]:
    """Tuning cell id -> seed -> that cell's resolved config on that seed."""
    per = len(study.spec.seeds)
    return {i: dict(zip(study.spec.seeds, study.cells[k * per:(k + 1) * per]))
            for k, i in enumerate(study.tuning_ids)}


def varying_keys(study: Study) -> list[str]:
    """The keys that tell a study's trials apart: grid axes, searched values, seed."""
    keys = list(study.spec.grid)
    if study.spec.search:
        keys += list(study.spec.search.space)
    if len(study.spec.seeds) > 1:
        keys.append("seed")
    return keys


# ---------------------------------------------------------------------------
# Packs


def _shared(cell: dict) -> str:
    """What the cells of one pack must have in common: everything but the per-model
    keys and bookkeeping (keys starting with "_")."""
    return json.dumps({k: v for k, v in cell.items() if k not in PER_MODEL_KEYS and not k.startswith("_")},
                      sort_keys=True, default=str)


def pack_cells(cells: list[dict], ids: list[str], size: int) -> list[dict]:
    """Packs (`{"cells", "ids", "id"}`) covering every cell once: groups of equal shared keys,
    each split into the fewest chunks of at most `size` cells, of equal sizes (+-1),
    in first-seen group order and grid order within a group."""
    groups: dict[str, list[int]] = {}
    for index, cell in enumerate(cells):
        groups.setdefault(_shared(cell), []).append(index)
    packs = []
    for members in groups.values():
        # Balanced: 21 cells at size 8 make packs of 7, 7, 7 rather than 8, 8, 5, so
        # packs running side by side end together.
        count = -(-len(members) // size)
        bounds = [round(i * len(members) / count) for i in range(count + 1)]
        for start, stop in zip(bounds, bounds[1:]):
            chunk = members[start:stop]
            chunk_ids = [ids[i] for i in chunk]
            packs.append({"cells": [cells[i] for i in chunk], "ids": chunk_ids, "id": pack_id(chunk_ids)})
    return packs


def pack_id(cell_ids: list[str]) -> str:
    """A packed trial's folder name: stable for the same member cells."""
    return "pack-" + hashlib.sha256(",".join(cell_ids).encode()).hexdigest()[:12]


def trial_size(config: dict) -> int:
    """Cells a Tune trial's config trains: a pack's size, else 1."""
    return len(config[PACK_KEY]["ids"]) if PACK_KEY in config else 1


def packs_for(study: Study, cells: list[dict], folder: Path | str) -> list[dict]:
    """The packed trials (spec `pack:`) training `cells`. A pack whose exact members
    ran before as a pack (same folder name) continues from that folder's last
    checkpoint (its cells carry it under RESUME_KEY); otherwise its cells start over
    (a cell's own single-model checkpoint, from an unpacked run, does not fit a pack)."""
    plain = [{k: v for k, v in cell.items() if k != RESUME_KEY} for cell in cells]
    packs = pack_cells(plain, [cell_id(study.spec.family, c) for c in plain], study.spec.pack)
    folders = {} if storage.is_uri(folder) or not Path(folder).exists() else trial_folders(Path(folder))
    for pack in packs:
        state = resume_point(folders[pack["id"]][-1]) if pack["id"] in folders else None
        if state is not None:
            pack["cells"] = [{**cell, RESUME_KEY: str(state.parent)} for cell in pack["cells"]]
    return packs


def resumed(trials: list[dict]) -> int:
    """How many of a new experiment's trials (cells, or packs) continue from a checkpoint."""
    return sum(RESUME_KEY in (t["cells"][0] if "cells" in t else t) for t in trials)
