"""`python -m analysis summary`: final metrics per cell as mean ± the 95% confidence
interval over seeds (Student's t), the numbers docs/results.md quotes."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from analysis.__main__ import main, markdown
from analysis.report import ci95, summary_table
from trainables.contract import TRIALS_FILE, write_record


def test_the_interval_is_students_t_over_the_seeds():
    (half,) = ci95([0.01], [3])
    assert half == pytest.approx(4.302653 * 0.01 / math.sqrt(3), rel=1e-6)
    assert ci95([0.01], [2])[0] == pytest.approx(12.7062 * 0.01 / math.sqrt(2), rel=1e-5)
    assert math.isnan(ci95([0.01], [1])[0]) and math.isnan(ci95([float("nan")], [3])[0])


def study_folder(tmp_path):
    record = {"spec": {"family": "classifier", "grid": {"weight_decay": [0.0, 0.1]}, "seeds": [0, 1, 2]},
              "n_cells": 6}
    write_record(tmp_path, record)
    trials = pd.DataFrame({"weight_decay": [0.0] * 3 + [0.1] * 3, "seed": [0, 1, 2] * 2, "status": ["ok"] * 6,
                           "final_test_acc": [0.90, 0.91, 0.92, 0.80, 0.80, 0.80],
                           "final_test_loss": [0.3, 0.3, 0.3, 0.5, 0.6, 0.7]})
    trials.to_parquet(tmp_path / TRIALS_FILE)
    return record, trials


def test_the_summary_table_gives_mean_and_half_width(tmp_path, capsys):
    record, trials = study_folder(tmp_path)
    table = summary_table(trials, record, spread="ci95", metrics=["test_acc"])
    half = 4.302653 * 0.01 / math.sqrt(3)
    assert list(table["test_acc"]) == [f"0.9100 ± {half:.4f}", "0.8000 ± 0.0000"]
    assert main(["summary", str(tmp_path), "--metrics", "test_acc,test_loss"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "| weight_decay | n | test_acc | test_loss |"
    assert out[2].startswith("| 0.0 | 3 | 0.9100 ± 0.0248 | 0.3000 ± 0.0000 |")


def test_a_folder_without_results_is_refused_in_one_line(tmp_path, capsys):
    assert main(["summary", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    write_record(tmp_path, {"spec": {"family": "classifier"}, "n_cells": 1})
    assert main(["summary", str(tmp_path)]) == 2
    assert "gensweep report" in capsys.readouterr().err


def test_markdown_writes_lists_as_labels():
    assert markdown(pd.DataFrame({"channels": [[8, 16]], "n": [3]})).splitlines()[2] == "| 8-16 | 3 |"
