"""Damaged files in a study folder: a checkpoint cut short or with a flipped byte, a
trial that trained again from the start, a truncated table. What must hold: the
damage is found without unpickling anything (trainables.checkpoint.damage), a resume
takes the newest whole checkpoint or starts over and says so in one line, the rows
of an abandoned attempt are not doubled, and a cut-short table is one error line
that says how to rebuild it. tests/test_faults.py damages a checkpoint under a
running study (a worker killed after its checkpoint was corrupted).

    .venv/bin/python -m pytest -q tests/test_checkpoint_faults.py
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from analysis.collect import read_table
from sweeps.planner import resume_point
from trainables.checkpoint import STATE_FILE, CheckpointError, damage, good_checkpoint, load_state, save_state
from trainables.contract import RESULT_FILE, STARTED_OVER_KEY, trial_reports, write_record
from trainables.errors import UserError

REPO = Path(__file__).resolve().parent.parent


def _checkpoint(trial_dir: Path, index: int, step: int) -> Path:
    folder = trial_dir / f"checkpoint_{index:06d}"
    folder.mkdir(parents=True)
    save_state(folder, {"model": {"w": torch.arange(20_000, dtype=torch.float32) * step}, "step": step})
    return folder / STATE_FILE


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside the tensor's bytes
    path.write_bytes(bytes(data))


def _cut(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def test_damage_finds_a_cut_a_flipped_byte_an_empty_and_a_missing_file(tmp_path):
    whole = _checkpoint(tmp_path, 0, 1)
    assert damage(whole) is None and load_state(whole)["step"] == 1
    flipped, cut, empty = (_checkpoint(tmp_path, i, 1) for i in (1, 2, 3))
    _flip(flipped)
    _cut(cut)
    empty.write_bytes(b"")
    # torch.load alone reads the flipped file as if nothing happened: the CRC check is what finds it
    assert torch.load(flipped, weights_only=True)["step"] == 1
    assert damage(flipped) == "record state.pt/data/0 fails its CRC check (corrupted)"
    assert damage(cut).startswith("cut short or not a checkpoint (BadZipFile")
    assert damage(empty) == "empty file"
    assert damage(tmp_path / "nothere" / STATE_FILE) == "missing"
    with pytest.raises(CheckpointError, match=rf"^{flipped}: record .* fails its CRC check \(corrupted\)$"):
        load_state(flipped.parent)


def test_a_resume_takes_the_newest_whole_checkpoint_and_says_which_it_passed_over(tmp_path, capsys):
    trial = tmp_path / "trial"
    _checkpoint(trial, 0, 1)
    newest = _checkpoint(trial, 1, 2)
    assert good_checkpoint(trial) == (newest, [])
    _cut(newest)
    state, damaged = good_checkpoint(trial)
    assert state == trial / "checkpoint_000000" / STATE_FILE and load_state(state)["step"] == 1
    assert damaged == [f"{newest}: {damage(newest)}"]
    assert resume_point(trial) == state
    assert capsys.readouterr().out == f"{newest}: {damage(newest)}; continuing from checkpoint_000000\n"
    _flip(state)
    assert resume_point(trial) is None
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[-1].endswith("; its cell starts over")


def _rows(trial_dir: Path, rows: list[dict]) -> None:
    trial_dir.mkdir(parents=True, exist_ok=True)
    (trial_dir / RESULT_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_the_rows_of_an_attempt_abandoned_for_a_damaged_checkpoint_are_dropped(tmp_path):
    # epochs 1-2, then the worker died and its checkpoint was damaged: Tune's count went
    # on (iterations 3-5) while the trial trained epochs 1-3 again
    rows = [{"training_iteration": 1, "epoch": 1, "test_acc": 0.5}, {"training_iteration": 2, "epoch": 2, "test_acc": 0.6},
            {"training_iteration": 3, "epoch": 1, "test_acc": 0.51, STARTED_OVER_KEY: True},
            {"training_iteration": 4, "epoch": 2, "test_acc": 0.61}, {"training_iteration": 5, "epoch": 3, "test_acc": 0.7}]
    _rows(tmp_path / "t", rows)
    kept = trial_reports([tmp_path / "t"])
    assert [r["epoch"] for r in kept] == [1, 2, 3] and [r["training_iteration"] for r in kept] == [3, 4, 5]
    _rows(tmp_path / "u", [r for r in rows if STARTED_OVER_KEY not in r])  # without the marker: all rows
    assert [r["epoch"] for r in trial_reports([tmp_path / "u"])] == [1, 2, 2, 3]


def test_a_cut_short_table_is_one_line_naming_it_and_how_to_rebuild_it(tmp_path):
    folder = tmp_path / "study"
    write_record(folder, {"spec": {"family": "classifier", "grid": {}, "seeds": [0]}, "n_cells": 1})
    table = folder / "trials.parquet"
    pd.DataFrame({"trial_id": ["a", "b"], "final_test_acc": [0.5, 0.6]}).to_parquet(table)
    assert read_table(table)["final_test_acc"].tolist() == [0.5, 0.6]
    _cut(table)
    with pytest.raises(UserError, match=rf"^{table}: unreadable, cut short or corrupted \(.*\); rebuild it from the "
                                        rf"trial folders: gensweep report {folder}$"):
        read_table(table)
    proc = subprocess.run([sys.executable, "-m", "analysis", "summary", str(folder)], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
    assert lines[0].startswith(f"error: {table}: unreadable, cut short or corrupted")
