"""Growing a study: trials have stable ids (a hash of the resolved config), so a spec
whose grid gained values runs only the new cells, a re-run with nothing new trains
nothing, and a changed fixed value makes new trials whose results never mix with the
old ones. `python -m sweeps status` says which cells are done or missing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from sweeps.schema import cell_id, load_study

REPO = Path(__file__).resolve().parent.parent
WD = (REPO / "sweeps" / "wd.yaml").read_text()


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sweeps", *args], cwd=REPO, capture_output=True, text=True, timeout=600)


def variant(tmp_path: Path, name: str, *edits: tuple[str, str]) -> Path:
    text = WD
    for old, new in edits:
        assert old in text
        text = text.replace(old, new)
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return path


def test_cell_ids_are_stable_and_sensitive_to_every_value():
    study = load_study(REPO / "sweeps" / "wd.yaml", "smoke")
    ids = study.cell_ids
    assert len(set(ids)) == len(ids) == 2 and all(len(i) == 12 for i in ids)
    assert ids == load_study(REPO / "sweeps" / "wd.yaml", "smoke").cell_ids  # same spec, same ids
    cell = study.cells[0]
    assert cell_id("classifier", {**cell, "epochs": 2}) != ids[0]
    assert cell_id("classifier", {**cell, "seed": 1}) != ids[0]
    assert cell_id("classifier", {**cell, "dataset": "fashion_mnist"}) != ids[0]
    assert cell_id("classifier", {**cell, "_resume_from": "/x"}) == ids[0]  # bookkeeping is not identity


@pytest.fixture(scope="module")
def grown(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("grow")
    results = tmp / "results"
    base = variant(tmp, "base")
    first = cli("run", str(base), "--profile", "smoke", "--results", str(results))
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    bigger = variant(tmp, "bigger", ("      weight_decay: [0, 1e-2]", "      weight_decay: [0, 1e-3, 1e-2]"))
    status_before = cli("status", str(bigger), "--profile", "smoke", "--results", str(results))
    second = cli("run", str(bigger), "--profile", "smoke", "--results", str(results))
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-2000:]
    third = cli("run", str(bigger), "--profile", "smoke", "--results", str(results))
    return results / "wd-smoke", first, status_before, second, third, bigger


@pytest.mark.study  # runs a study on Ray: left out of `make test-fast`
def test_a_grown_grid_trains_only_its_new_cells(grown):
    folder, first, _, second, _, bigger = grown
    assert "2 of 3 trials done and kept; training 1 more" in second.stdout
    history = pd.read_parquet(folder / "history.parquet")
    trials = pd.read_parquet(folder / "trials.parquet")
    assert sorted(trials["weight_decay"]) == [0.0, 0.001, 0.01] and (trials["status"] == "ok").all()
    assert set(trials["trial_id"]) == set(load_study(bigger, "smoke").cell_ids)
    assert len(history) == 3  # one epoch each, nothing repeated
    assert sorted(p.name for p in folder.glob("tune*")) == ["tune", "tune-2"]
    assert len(list((folder / "tune-2").glob("*/params.json"))) == 1


@pytest.mark.study  # runs a study on Ray: left out of `make test-fast`
def test_a_rerun_with_nothing_new_trains_nothing(grown):
    *_, third, _ = grown
    assert third.returncode == 0 and "all 3 trials are done" in third.stdout
    assert "starting" not in third.stdout and "resuming" not in third.stdout


@pytest.mark.study  # runs a study on Ray: left out of `make test-fast`
def test_status_names_done_and_missing_cells(grown):
    _, _, status_before, *_ = grown
    assert status_before.returncode == 0
    lines = status_before.stdout.splitlines()
    assert "3 cells: 2 done, 0 running, 1 missing, 0 failed" in lines[0]
    missing = [line for line in lines if line.rstrip().endswith("missing    0/1")]
    assert len(missing) == 1 and missing[0].split()[0] == "0.001"


@pytest.mark.study  # runs a study on Ray: left out of `make test-fast`
def test_a_changed_fixed_value_makes_new_trials_and_never_mixes_them(grown, tmp_path):
    folder, *_ = grown
    longer = variant(tmp_path, "longer", ("fixed: {epochs: 1,", "fixed: {epochs: 2,"))
    proc = cli("run", str(longer), "--profile", "smoke", "--results", str(folder.parent))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    trials = pd.read_parquet(folder / "trials.parquet")
    history = pd.read_parquet(folder / "history.parquet")
    assert len(trials) == 2 and (trials["epochs"] == 2).all()  # the epochs-1 trials are left out ...
    assert set(history["epochs"]) == {2} and sorted(history["epoch"]) == [1, 1, 2, 2]
    record = json.loads((folder / "study.json").read_text())
    assert len(record["experiments"]) == 3 and set(record["cell_ids"]) == set(trials["trial_id"])
    assert len([p for p in folder.glob("tune*/*") if (p / "params.json").exists()]) == 5  # ... but kept on disk
