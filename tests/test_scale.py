"""What a study of 1,000 short trials needed (benchmark 8, bench/many.py, runs one):
Tune is given the grid's trials one by one (sweeps.gridorder), not a grid_search it
deep-copies per trial (N trials x N cells); and every trial's status is read from one
parse of the experiment state (tens of MB at 1,000 trials), not one per trial.

    .venv/bin/python -m pytest -q tests/test_scale.py
"""

from __future__ import annotations

import json
from pathlib import Path


from sweeps.gridorder import GridOrder
from sweeps.schema import load_study
from sweeps import tuneconfig
from trainables import contract

REPO = Path(__file__).resolve().parent.parent


def test_a_grid_is_proposed_in_order_once_and_resumes_where_it_was(tmp_path):
    cells = [{"seed": i} for i in range(5)]
    order = GridOrder(contract.CELL_KEY, cells)
    assert order.planned() == 5
    assert [order.suggest(f"t{i}") for i in range(3)] == [{"cell": {"seed": i}} for i in range(3)]
    order.save(str(tmp_path / "state.json"))
    again = GridOrder(contract.CELL_KEY, cells)
    again.restore(str(tmp_path / "state.json"))
    assert [again.suggest("a"), again.suggest("b")] == [{"cell": {"seed": 3}}, {"cell": {"seed": 4}}]
    assert again.suggest("c") == GridOrder.FINISHED


def test_a_grid_study_gives_tune_its_trials_through_a_searcher():
    study = load_study(REPO / "sweeps" / "function_fit.yaml", "smoke")
    config = tuneconfig.tune_config(study, None, study.cells)
    searcher = config.search_alg
    assert config.num_samples == len(study.cells)
    assert config.max_concurrent_trials == 200  # trials waiting for a CPU, as Tune's grid_search keeps them
    packs = [{"cells": study.cells, "ids": ["a", "b"], "id": "pack-x"}]
    assert tuneconfig.tune_config(study, None, packs).search_alg.suggest("t") == {"pack": packs[0]}
    assert type(searcher).__name__ == "GridOrder" and searcher.planned() == len(study.cells)


def test_every_trials_status_comes_from_one_read_of_the_experiment_state(tmp_path):
    experiment = tmp_path / "tune"
    experiment.mkdir()
    names = [f"trial{i:04d}" for i in range(300)]
    trial_data = [[json.dumps({"relative_logdir": n, "trial_id": f"id{i}"}), json.dumps({"status": "TERMINATED"})]
                  for i, n in enumerate(names)]
    (experiment / "experiment_state-2026.json").write_text(json.dumps({"trial_data": trial_data}))
    contract._experiment_statuses.cache_clear()
    assert [contract.tune_trial_status(experiment / n) for n in names] == ["TERMINATED"] * 300
    assert contract._experiment_statuses.cache_info().misses == 1  # parsed once, not once per trial
    assert contract.tune_trial_status(experiment / "missing") is None
