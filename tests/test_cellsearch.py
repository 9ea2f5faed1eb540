"""The tuned study's searcher without Ray running: one seeded Optuna study per grid
cell, cells taking turns, confirm and baseline trials once a cell's search ended,
state saved and restored as Tune does, warm start from earlier trials, and ASHA
within a cell. Tune's loop is played by `drive` (suggest, then complete)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from sweeps.cellsearch import CellASHA, CellSearch, TuningCell
from sweeps.planner import Prior, tuning_configs
from sweeps.schema import load_study
from trainables.contract import CELL_KEY, RESUME_KEY, TUNING_KEY
from trainables.tuning import BASELINE, CONFIRM, SEARCH, Candidate, best_candidate, edge


def tuned_spec(tmp_path: Path, algo: str = "tpe", num_samples: int = 4, seeds=(0, 1), baseline=None,
               space=None) -> Path:
    spec = {"name": "tuned", "family": "classifier",
            "fixed": {"model": "mlp", "hidden": [16], "epochs": 2, "train_size": 200, "val_size": 100, "test_size": 100},
            "grid": {"weight_decay": [0.0, 0.01, 0.1]},
            "search": {"algo": algo, "space": space or {"lr": {"loguniform": [1e-4, 1.0]}},
                       "num_samples": num_samples, "seed": 7, **({"baseline": baseline} if baseline else {})},
            "seeds": list(seeds)}
    path = tmp_path / "tuned.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def searcher_for(path: Path, priors: dict | None = None) -> tuple[CellSearch, object]:
    study = load_study(path)
    configs = tuning_configs(study)
    cells = [TuningCell(i, configs[i], (priors or {}).get(i, [])) for i in study.tuning_ids]
    return CellSearch("classifier", cells, study.spec.search, study.spec.seeds), study


def score(config: dict) -> float:
    """A made-up validation accuracy peaking at lr = 0.01."""
    return 0.9 - 0.05 * (math.log10(config["lr"]) + 2) ** 2


def drive(searcher: CellSearch, concurrent: int = 2, stop_after: int | None = None, start: int = 0,
          result=None) -> list[dict]:
    """Tune's loop: keep up to `concurrent` trials live, complete the oldest first;
    returns the configs in the order proposed (stops after `stop_after` completions)."""
    result = result or (lambda config: {"val_acc": score(config), "status": "ok"})
    proposed, live, done, n = [], [], 0, start
    while True:
        while len(live) < concurrent:
            config = searcher.suggest(f"t{n}")
            if config is None or config == CellSearch.FINISHED:
                break
            proposed.append(config)
            live.append((f"t{n}", config))
            n += 1
        if not live:
            assert searcher.suggest(f"t{n}") == CellSearch.FINISHED
            return proposed
        trial_id, config = live.pop(0)
        searcher.on_trial_complete(trial_id, result(config))
        done += 1
        if stop_after is not None and done >= stop_after:
            return proposed


def by_role(configs: list[dict], role: str) -> list[dict]:
    return [c for c in configs if c[TUNING_KEY]["role"] == role]


def test_each_cell_searches_on_the_first_seed_then_confirms_its_best_on_the_others(tmp_path):
    searcher, study = searcher_for(tuned_spec(tmp_path, seeds=(0, 1, 2), baseline={"lr": 0.02}))
    configs = drive(searcher)
    search = by_role(configs, SEARCH)
    assert len(search) == 3 * 4
    for cell in study.tuning_ids:
        mine = [c for c in search if c[TUNING_KEY]["cell"] == cell]
        assert [c[TUNING_KEY]["sample"] for c in mine] == [0, 1, 2, 3]
        assert {c[CELL_KEY]["seed"] for c in mine} == {0}
        assert all(1e-4 <= c["lr"] <= 1.0 for c in mine)
        best = max(mine, key=score)
        confirms = [c for c in by_role(configs, CONFIRM) if c[TUNING_KEY]["cell"] == cell]
        assert sorted(c[CELL_KEY]["seed"] for c in confirms) == [1, 2]
        assert {c["lr"] for c in confirms} == {best["lr"]}
        assert {c[TUNING_KEY]["of"] for c in confirms} == {best[TUNING_KEY]["id"]}
        baselines = [c for c in by_role(configs, BASELINE) if c[TUNING_KEY]["cell"] == cell]
        assert sorted(c[CELL_KEY]["seed"] for c in baselines) == [0, 1, 2] and {c["lr"] for c in baselines} == {0.02}
    assert len(configs) == searcher_for(tuned_spec(tmp_path, seeds=(0, 1, 2), baseline={"lr": 0.02}))[0].planned()
    ids = [c[TUNING_KEY]["id"] for c in configs]
    assert len(set(ids)) == len(ids)  # every trial its own folder
    # Cells take turns: the first three proposals are one per cell.
    assert len({c[TUNING_KEY]["cell"] for c in configs[:3]}) == 3


@pytest.mark.parametrize("algo", ["tpe", "qmc", "random"])
def test_a_cell_proposes_the_same_points_in_every_run(tmp_path, algo):
    first = [c["lr"] for c in by_role(drive(searcher_for(tuned_spec(tmp_path, algo=algo))[0]), SEARCH)]
    second = [c["lr"] for c in by_role(drive(searcher_for(tuned_spec(tmp_path, algo=algo))[0]), SEARCH)]
    assert first == second
    per_cell = [first[i::3] for i in range(3)]
    assert per_cell[0] != per_cell[1]  # each cell has its own seed


def test_grid_algo_runs_each_listed_value_once(tmp_path):
    path = tuned_spec(tmp_path, algo="grid", num_samples=3, space={"lr": {"choice": [0.001, 0.01, 0.1]}})
    search = by_role(drive(searcher_for(path)[0]), SEARCH)
    for i in range(3):
        assert sorted(c["lr"] for c in search[i::3]) == [0.001, 0.01, 0.1]


def test_a_restored_searcher_goes_on_where_it_was_not_from_scratch(tmp_path):
    path = tuned_spec(tmp_path)
    uninterrupted = drive(searcher_for(path)[0])
    searcher = searcher_for(path)[0]
    before = drive(searcher, stop_after=5)
    state = tmp_path / "searcher-state.pkl"
    searcher.save(str(state))  # as Tune does at each experiment checkpoint
    restored = searcher_for(path)[0]  # the object Tune rebuilds from tuner.pkl
    restored.restore(str(state))
    # The trials live at the save are restored by Tune with their configs: finish them.
    live = [t for t in restored.live]
    for trial_id in live:
        config = next(c for c in before if c[TUNING_KEY]["id"] == restored.live[trial_id][3])
        restored.on_trial_complete(trial_id, {"val_acc": score(config), "status": "ok"})
    after = drive(restored, start=100)
    ids = [c[TUNING_KEY]["id"] for c in before + after]
    assert len(ids) == len(set(ids)) == len(uninterrupted)
    assert sorted(ids) == sorted(c[TUNING_KEY]["id"] for c in uninterrupted)
    assert state.read_text().startswith("{")  # JSON: a study folder's files are never unpickled


def test_a_new_experiment_starts_each_cell_from_its_trials_on_disk(tmp_path):
    path = tuned_spec(tmp_path)
    full = drive(searcher_for(path)[0])
    study = load_study(path)
    cell = study.tuning_ids[0]
    mine = [c for c in by_role(full, SEARCH) if c[TUNING_KEY]["cell"] == cell]
    priors = [Prior(c[TUNING_KEY]["id"], SEARCH, c[TUNING_KEY]["sample"], 0, {"lr": c["lr"]}, True,
                    Candidate(c[TUNING_KEY]["id"], score(c), True), None) for c in mine[:2]]
    # The third was interrupted: proposed again, from its checkpoint.
    third = mine[2]
    priors.append(Prior(third[TUNING_KEY]["id"], SEARCH, 2, 0, {"lr": third["lr"]}, False, None, "/ckpt/3"))
    searcher = searcher_for(path, {cell: priors})[0]
    assert len(searcher.cells[cell].study.trials) == 2  # the ended ones, in its Optuna study
    configs = drive(searcher)
    again = [c for c in by_role(configs, SEARCH) if c[TUNING_KEY]["cell"] == cell]
    assert [c[TUNING_KEY]["sample"] for c in again] == [2, 3]
    assert again[0][TUNING_KEY]["id"] == third[TUNING_KEY]["id"] and again[0]["lr"] == third["lr"]
    assert again[0][CELL_KEY][RESUME_KEY] == "/ckpt/3"
    # Seeded per sample: the new sample is the one an uninterrupted search proposed.
    assert again[1]["lr"] == mine[3]["lr"] and again[1][TUNING_KEY]["id"] == mine[3][TUNING_KEY]["id"]
    assert len(by_role(configs, SEARCH)) == 2 + 4 + 4  # the other cells search in full


def test_a_confirm_run_that_ended_earlier_is_not_run_again_when_the_search_ends_later(tmp_path):
    """A cell whose search trial failed (run again now) but whose best was already
    confirmed in an earlier experiment: once its search ends again, with the same
    best, the confirm trial on disk counts; it is not proposed a second time."""
    path = tuned_spec(tmp_path)
    full = drive(searcher_for(path)[0])
    cell = load_study(path).tuning_ids[0]
    mine = [c for c in by_role(full, SEARCH) if c[TUNING_KEY]["cell"] == cell]
    confirm = next(c for c in by_role(full, CONFIRM) if c[TUNING_KEY]["cell"] == cell)
    priors = [Prior(c[TUNING_KEY]["id"], SEARCH, c[TUNING_KEY]["sample"], 0, {"lr": c["lr"]}, True,
                    Candidate(c[TUNING_KEY]["id"], score(c), True), None) for c in mine[:3]]
    priors.append(Prior(mine[3][TUNING_KEY]["id"], SEARCH, 3, 0, {"lr": mine[3]["lr"]}, False, None, None))
    priors.append(Prior(confirm[TUNING_KEY]["id"], CONFIRM, None, 1, {"lr": confirm["lr"]}, True, None, None,
                        of=confirm[TUNING_KEY]["of"]))
    searcher = searcher_for(path, {cell: priors})[0]
    assert searcher.planned() == 1 + 2 * (4 + 1)  # the failed trial, and the other two cells
    configs = drive(searcher)
    assert [c[TUNING_KEY]["cell"] for c in by_role(configs, CONFIRM)].count(cell) == 0
    assert len(configs) == searcher_for(path, {cell: priors})[0].planned()


def test_the_best_is_chosen_among_trials_that_ran_their_whole_budget(tmp_path):
    path = tuned_spec(tmp_path, seeds=(0, 1))
    searcher = searcher_for(path)[0]
    # The scheduler stopped the trial with the highest metric, another diverged.
    outcomes = [{"val_acc": 0.99, "status": "running"}, {"val_acc": float("nan"), "status": "diverged"},
                {"val_acc": 0.5, "status": "ok"}, {"val_acc": 0.6, "status": "ok"}]

    def result(config: dict) -> dict:
        sample = config[TUNING_KEY]["sample"]
        return outcomes[sample] if sample is not None else {"val_acc": 0.5, "status": "ok"}

    configs = drive(searcher, concurrent=1, result=result)
    confirms = by_role(configs, CONFIRM)
    search = by_role(configs, SEARCH)
    for confirm in confirms:
        cell = [c for c in search if c[TUNING_KEY]["cell"] == confirm[TUNING_KEY]["cell"]]
        assert confirm["lr"] == cell[3]["lr"]  # 0.6, not the stopped 0.99 nor the diverged one
    assert best_candidate([Candidate("a", 0.9, False), Candidate("b", math.nan, True)], "max") is None
    assert best_candidate([Candidate("a", 0.3, True), Candidate("b", 0.2, True)], "min").trial_id == "b"
    assert best_candidate([Candidate("a", 0.3, True), Candidate("b", 0.3, True)], "max").trial_id == "a"


def test_edges_are_judged_in_log_space_for_a_log_range():
    dist = {"loguniform": [1e-4, 0.1]}
    assert edge(0.089, dist) == "upper" and edge(1.1e-4, dist) == "lower"
    assert edge(0.003, dist) is None and edge(0.05, dist) is None  # 0.05 is 90% of the way in log space
    assert edge(0.09, {"uniform": [0.0, 0.1]}) is None and edge(0.095, {"uniform": [0.0, 0.1]}) == "upper"
    assert edge(0.1, {"choice": [0.001, 0.01, 0.1]}) == "upper" and edge("relu", {"choice": ["relu", "tanh"]}) is None


class FakeTrial:
    def __init__(self, trial_id: str, cell: str, role: str):
        self.trial_id = trial_id
        self.config = {TUNING_KEY: {"cell": cell, "role": role}}


def test_asha_compares_a_trial_with_its_own_cell_only_and_never_stops_confirm_runs():
    scheduler = CellASHA("val_acc", "max", time_attr="epoch", max_t=9, grace_period=1, reduction_factor=3)
    # Cell "hi" reaches 0.9 at epoch 1, cell "lo" only 0.2: lo's best trial must still go on.
    hi = [FakeTrial(f"h{i}", "hi", SEARCH) for i in range(3)]
    lo = [FakeTrial(f"l{i}", "lo", SEARCH) for i in range(3)]
    for t in hi + lo:
        scheduler.on_trial_add(None, t)
    actions = {}
    for t, value in zip(hi, (0.9, 0.91, 0.92)):
        actions[t.trial_id] = scheduler.on_trial_result(None, t, {"epoch": 1, "val_acc": value})
    for t, value in zip(lo, (0.2, 0.1, 0.05)):
        actions[t.trial_id] = scheduler.on_trial_result(None, t, {"epoch": 1, "val_acc": value})
    assert actions["l0"] == "CONTINUE"  # the first of its cell at that rung
    assert actions["l2"] == "STOP"  # worse than its own cell's others
    confirm = FakeTrial("c0", "lo", CONFIRM)
    scheduler.on_trial_add(None, confirm)
    assert scheduler.on_trial_result(None, confirm, {"epoch": 1, "val_acc": 0.0}) == "CONTINUE"
