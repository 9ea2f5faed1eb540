"""Atomic writes, tried with real crashes: a writer that dies halfway (after writing
part of its bytes) leaves the previous checkpoint, study.json, Parquet table, PNG or
index.html intact under its name, never half a file; and the report of a
half-finished study (one trial unfinished, one never started) still builds and
names the missing trials by their hyperparameters.

The report tests use one real smoke study (3 tiny trials, ~20 s with Ray's start).

    .venv/bin/python -m pytest -q tests/test_atomic.py
"""

from __future__ import annotations

import errno
import io
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import matplotlib.figure
from matplotlib.image import imread
import pandas as pd
import pytest
import torch

from trainables.checkpoint import STATE_FILE, last_checkpoint, load_state, save_state

REPO = Path(__file__).resolve().parent.parent

SMOKE = """\
name: atomic
family: classifier
description: atomic-write test study
fixed: {dataset: mnist, model: mlp, hidden: [16], epochs: 1, train_size: 64, test_size: 64, batch_size: 32, lr: 0.05}
grid:
  weight_decay: [0, 0.01, 0.1]
seeds: [0]
figures:
  - {kind: curves, y: [test_acc], hue: weight_decay}
"""


def _disk_full() -> OSError:
    return OSError(errno.ENOSPC, "No space left on device (simulated crash mid-write)")


def _half(data: bytes) -> bytes:
    return data[: len(data) // 2]


# --- checkpoints -----------------------------------------------------------------

def _state(epoch: int) -> dict:
    torch.manual_seed(epoch)
    return {"epoch": epoch, "model": {"w": torch.randn(64, 64)}, "rng": torch.get_rng_state()}


def test_checkpoint_write_failing_halfway_keeps_the_previous_state(tmp_path, monkeypatch):
    save_state(tmp_path, _state(1))
    before = (tmp_path / STATE_FILE).read_bytes()
    real_save = torch.save
    written = []

    monkeypatch.setattr(torch, "save", _half_then_fail(real_save, written))
    with pytest.raises(OSError, match="No space left"):
        save_state(tmp_path, _state(2))
    assert written and written[0].name != STATE_FILE  # the half file went to a temporary name
    assert (tmp_path / STATE_FILE).read_bytes() == before
    assert load_state(tmp_path)["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [STATE_FILE]  # the temporary file is cleaned up


def test_checkpoint_writer_killed_halfway_keeps_the_previous_state(tmp_path):
    """A real process death (os._exit, no cleanup) in the middle of save_state."""
    folder = tmp_path / "checkpoint_000001"
    folder.mkdir()
    save_state(folder, _state(1))
    before = (folder / STATE_FILE).read_bytes()
    script = textwrap.dedent(f"""
        import io, os, torch
        from trainables import checkpoint
        real_save = torch.save
        def dies(obj, target, *a, **k):
            buffer = io.BytesIO()
            real_save(obj, buffer, *a, **k)
            with open(target, "wb") as fh:
                fh.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
                fh.flush()
            os._exit(9)
        torch.save = dies
        torch.manual_seed(2)
        checkpoint.save_state({str(folder)!r}, {{"epoch": 2, "model": {{"w": torch.randn(64, 64)}}}})
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 9, proc.stderr[-2000:]
    assert (folder / STATE_FILE).read_bytes() == before
    assert load_state(folder)["epoch"] == 1
    assert last_checkpoint(tmp_path) == folder / STATE_FILE
    leftovers = [p for p in folder.iterdir() if p.name != STATE_FILE]
    assert leftovers, "the killed writer left its temporary file (nothing cleans up after os._exit)"
    with pytest.raises(Exception):  # ... which is indeed half a file: it must never sit under the real name
        torch.load(leftovers[0], weights_only=True)


# --- study.json --------------------------------------------------------------------

def test_study_record_write_failing_halfway_keeps_the_previous_record(tmp_path, monkeypatch):
    from trainables.contract import read_record, write_record

    write_record(tmp_path, {"spec": {"name": "old"}, "n_cells": 1})
    before = (tmp_path / "study.json").read_bytes()
    real_write_text = Path.write_text

    def dies_halfway(self, text, *args, **kwargs):
        real_write_text(self, text[: len(text) // 2], *args, **kwargs)
        raise _disk_full()

    monkeypatch.setattr(Path, "write_text", dies_halfway)
    with pytest.raises(OSError, match="No space left"):
        write_record(tmp_path, {"spec": {"name": "new"}, "n_cells": 2, "padding": "x" * 10_000})
    monkeypatch.undo()
    assert (tmp_path / "study.json").read_bytes() == before
    assert read_record(tmp_path)["spec"] == {"name": "old"}


# --- the report: Parquet, PNG, index.html ---------------------------------------------

@pytest.fixture(scope="module")
def smoke_study(tmp_path_factory) -> Path:
    """A real 3-trial study, run through the CLI once for this module."""
    tmp = tmp_path_factory.mktemp("atomic")
    spec = tmp / "atomic.yaml"
    spec.write_text(SMOKE)
    proc = subprocess.run([sys.executable, "-m", "sweeps", "run", str(spec), "--results", str(tmp / "results")],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    folder = tmp / "results" / "atomic"
    assert len(pd.read_parquet(folder / "trials.parquet")) == 3
    return folder


def _report_files(folder: Path) -> dict[str, bytes]:
    names = ["history.parquet", "trials.parquet", "report/index.html", *[
        f"report/{p.name}" for p in (folder / "report").glob("*.png")]]
    return {name: (folder / name).read_bytes() for name in names}


def _half_then_fail(write, written: list[Path], **fixed):
    """`write(obj, target, ...)` (torch.save, DataFrame.to_parquet, Figure.savefig)
    made to put half of its real output at `target` and then fail as a full disk."""

    def crashing(obj, target, *args, **kwargs):
        buffer = io.BytesIO()
        write(obj, buffer, *args, **fixed, **kwargs)
        Path(target).write_bytes(_half(buffer.getvalue()))
        written.append(Path(target))
        raise _disk_full()

    return crashing


def _crashing_writer(kind: str, written: list[Path]):
    """(object, attribute, replacement): the real writer, but it writes half of its
    output to the target and then fails."""
    if kind == "parquet":
        return pd.DataFrame, "to_parquet", _half_then_fail(pd.DataFrame.to_parquet, written)
    if kind == "png":
        return matplotlib.figure.Figure, "savefig", _half_then_fail(matplotlib.figure.Figure.savefig, written,
                                                                    format="png")
    real_write_text = Path.write_text

    def write_text(self, text, *args, **kwargs):
        real_write_text(self, text[: len(text) // 2], *args, **kwargs)
        written.append(self)
        raise _disk_full()

    return Path, "write_text", write_text


def _final_name(tmp: Path) -> Path:
    """history.parquet.tmp -> history.parquet, 01-x.tmp.png -> 01-x.png, index.html.tmp -> index.html."""
    return tmp.with_name(tmp.name.replace(".tmp", ""))


@pytest.mark.study  # runs a study on Ray: left out of `make test-fast`
@pytest.mark.parametrize("kind", ["parquet", "png", "html"])
def test_report_write_failing_halfway_keeps_the_previous_files(smoke_study, tmp_path, monkeypatch, kind):
    from analysis.report import write_report

    folder = tmp_path / "study"
    shutil.copytree(smoke_study, folder)
    write_report(folder)
    before = _report_files(folder)
    written: list[Path] = []
    owner, attribute, crashing = _crashing_writer(kind, written)
    monkeypatch.setattr(owner, attribute, crashing)
    with pytest.raises(OSError, match="No space left"):
        write_report(folder)
    monkeypatch.undo()
    assert len(written) == 1
    target = _final_name(written[0])
    assert written[0] != target, f"{kind} was written straight to its final name"
    assert (folder / target.relative_to(folder)).read_bytes() == before[str(target.relative_to(folder))]
    # every file under its real name is whole: the previous one or a complete new one
    assert len(pd.read_parquet(folder / "history.parquet")) == 3
    assert len(pd.read_parquet(folder / "trials.parquet")) == 3
    assert (folder / "report" / "index.html").read_text().rstrip().endswith("</html>")
    for png in (folder / "report").glob("*.png"):
        if ".tmp" not in png.name:
            assert imread(png).ndim == 3
    # the next report replaces the half file, and leaves no temporary name behind
    write_report(folder)
    assert not [p for p in folder.rglob("*") if ".tmp" in p.name]
    assert _report_files(folder).keys() == before.keys()


@pytest.mark.study  # runs a study on Ray: left out of `make test-fast`
def test_report_of_a_half_finished_study_names_the_missing_trials(smoke_study, tmp_path):
    folder = tmp_path / "half"
    shutil.copytree(smoke_study, folder)
    trials = pd.read_parquet(folder / "trials.parquet").set_index("weight_decay")
    trial_dirs = {wd: next(p for p in folder.glob(f"tune*/{trials.loc[wd, 'trial_id']}")) for wd in trials.index}
    # weight_decay 0.01: started but its results were lost (as after a crash before its first report)
    (trial_dirs[0.01] / "result.json").unlink()
    # weight_decay 0.1: never started (as when the driver died before Tune created it)
    shutil.rmtree(trial_dirs[0.1])
    proc = subprocess.run([sys.executable, "-m", "analysis", "report", str(folder)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    unfinished = f"weight_decay=0.01 (unfinished, trial {trials.loc[0.01, 'trial_id']})"
    assert "atomic: 2 of 3 trials reported (1 incomplete, 1 ok)" in proc.stdout, proc.stdout
    assert "2 trial(s) not finished yet" in proc.stdout
    assert f"missing or unfinished: {unfinished}; weight_decay=0.1 (not started)" in proc.stdout, proc.stdout
    page = (folder / "report" / "index.html").read_text()
    assert f"Missing or unfinished: {unfinished}; weight_decay=0.1 (not started)." in page
    written = pd.read_parquet(folder / "trials.parquet").set_index("weight_decay")["status"].to_dict()
    assert written == {0.0: "ok", 0.01: "incomplete"}
    history = pd.read_parquet(folder / "history.parquet")
    assert set(history["weight_decay"]) == {0.0}
    assert json.loads((folder / "study.json").read_text())["study"] == "atomic"


def test_unfinished_trials_are_named_by_their_grid_values_seeds_and_variants():
    from analysis.report import unfinished_trials

    study = {"spec": {"grid": {"weight_decay": [0, 1e-2], "arch": [{"name": "small", "model": "mlp", "hidden": [8]},
                                                                    {"model": "linear"}]},
                      "seeds": [0, 1]}}
    trials = pd.DataFrame([
        {"trial_id": "a", "weight_decay": 0.0, "arch": "small", "seed": 0, "status": "ok"},
        {"trial_id": "b", "weight_decay": 0.0, "arch": "small", "seed": 1, "status": "diverged"},
        {"trial_id": "c", "weight_decay": 0.0, "arch": "model=linear", "seed": 0, "status": "error"},
        {"trial_id": "d", "weight_decay": 0.01, "arch": "small", "seed": 0, "status": "incomplete"},
    ])
    assert unfinished_trials(trials, study) == [
        "weight_decay=0, arch=model=linear, seed=1 (not started)",
        "weight_decay=0.01, arch=small, seed=0 (unfinished, trial d)",
        "weight_decay=0.01, arch=small, seed=1 (not started)",
        "weight_decay=0.01, arch=model=linear, seed=0 (not started)",
        "weight_decay=0.01, arch=model=linear, seed=1 (not started)",
    ]
    # one seed: not named; a finished study: nothing to name
    one_seed = {"spec": {"grid": {"weight_decay": [0, 1e-2]}, "seeds": [0]}}
    assert unfinished_trials(trials, one_seed) == ["weight_decay=0.01 (unfinished, trial d)"]
    assert unfinished_trials(trials.assign(status="ok"), one_seed) == []
    search = {"spec": {"search": {"space": {"lr": {"loguniform": [1e-4, 0.1]}}, "num_samples": 4}}}
    sampled = pd.DataFrame([{"trial_id": "s1", "lr": 0.003, "status": "ok"},
                            {"trial_id": "s2", "lr": 0.05, "status": "incomplete"}])
    assert unfinished_trials(sampled, search) == ["trial s2 (lr=0.05, unfinished)", "2 sample(s) not started"]
    assert unfinished_trials(pd.DataFrame(), one_seed) == ["weight_decay=0 (not started)", "weight_decay=0.01 (not started)"]
