"""Tuned studies for real, through the CLI on a local Ray: the driver is SIGKILLed in
the middle of a grid x search study and the same command finishes it (no trial run
twice, no cell's search started again); the grown grid searches only its new cell;
a too-narrow lr range is reported at the end of the run."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from test_faults import ONE_CPU, Cli, ended_and_started, result_rows, run_to_end, wait_until
from trainables.contract import read_cells

pytestmark = pytest.mark.study  # runs studies on Ray: left out of `make test-fast`

REPO = Path(__file__).resolve().parent.parent

# Two grid cells, three lr trials each on seed 0, then the best on seed 1: 8 trials of
# about 2 s, one at a time (Ray gets one CPU).
TUNED = """\
name: {name}
family: classifier
description: tuned fault test
fixed: {{model: cnn_small, channels: [8, 8], train_size: 3000, val_size: 500, test_size: 200, batch_size: 32,
         epochs: 2, optimizer: sgd}}
grid:
  weight_decay: {decays}
search:
  algo: random
  space:
    lr: {{loguniform: [0.003, 0.3]}}
  num_samples: 3
  seed: 5
seeds: [0, 1]
"""


def write(folder: Path, name: str, decays: str) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(TUNED.format(name=name, decays=decays))
    return path


def tuned_trials(folder: Path) -> dict[str, dict]:
    """Trial id -> its tuning info, for the trials created so far."""
    return {cell.trial_id: {**cell.tuning, "lr": cell.config["lr"], "seed": cell.config["seed"]}
            for cell in read_cells(folder) if cell.tuning}


@pytest.fixture(scope="module")
def narrow(tmp_path_factory):
    """The too-narrow-range study (NARROW, below), started first: it runs on the core
    the one-CPU driver-kill runs leave free."""
    tmp = tmp_path_factory.mktemp("narrow")
    spec = tmp / "narrow.yaml"
    spec.write_text(NARROW)
    proc = subprocess.Popen([sys.executable, "-m", "sweeps", "run", str(spec), "--results", str(tmp / "r")],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    yield proc, tmp / "r" / "narrow"
    if proc.poll() is None:
        proc.kill()


@pytest.fixture(scope="module")
def killed(tmp_path_factory, narrow):
    tmp = tmp_path_factory.mktemp("tuned")
    spec = write(tmp, "tuned-fault", "[0.0, 0.01]")
    results = tmp / "results"
    folder = results / "tuned-fault"
    command = ("run", str(spec), "--results", str(results))
    seen: dict = {}
    first = Cli(*command, log=tmp / "run1.log", env=ONE_CPU)
    try:
        def three_done_one_started():
            first.watch()
            ended, started = ended_and_started(folder)
            return True if len(ended) >= 3 and started else None

        wait_until(three_done_one_started, 240, "three finished trials and a started one", while_alive=first)
        time.sleep(0.3)
        seen["rows_at_kill"] = result_rows(folder)
        seen["trials_at_kill"] = tuned_trials(folder)
        seen["searcher_state"] = sorted(p.name for p in (folder / "tune").glob("searcher-state-*.json"))
        seen["kill_code"], seen["orphans"] = first.kill_driver()
    finally:
        first.cleanup()
    seen["code"], seen["output"] = run_to_end(*command, log=tmp / "run2.log", env=ONE_CPU)
    seen["rows"] = result_rows(folder)
    seen["trials"] = tuned_trials(folder)
    seen.update(folder=folder, tmp=tmp, results=results)
    return seen


def test_a_killed_tuned_study_resumes_its_searches_and_runs_no_trial_twice(killed):
    assert killed["kill_code"] == -signal.SIGKILL
    assert killed["searcher_state"], "Tune saved the searcher with the experiment"
    assert killed["code"] == 0, killed["output"][-3000:]
    assert "resuming tuned-fault" in killed["output"]
    trials = killed["trials"]
    # Per cell: samples 0, 1, 2 once each, and one confirm run of the best on seed 1.
    cells = sorted({t["cell"] for t in trials.values()})
    assert len(cells) == 2 and len(trials) == 8
    for cell in cells:
        mine = [t for t in trials.values() if t["cell"] == cell]
        assert sorted(t["sample"] for t in mine if t["role"] == "search") == [0, 1, 2]
        confirm = [t for t in mine if t["role"] == "confirm"]
        assert len(confirm) == 1 and confirm[0]["seed"] == 1
        best = trials[confirm[0]["of"]]
        assert best["cell"] == cell and best["lr"] == confirm[0]["lr"]
    # The trials proposed before the kill are the same trials after it (the searchers
    # went on; a searcher started again would propose other points or re-run sample 0).
    for trial_id, info in killed["trials_at_kill"].items():
        assert trials[trial_id] == info
    # Trials that had ended were not trained again; every trial reported each epoch once.
    for name, rows in killed["rows_at_kill"].items():
        if rows and rows[-1]["status"] == "ok":
            assert killed["rows"][name] == rows, name
    for name, rows in killed["rows"].items():
        assert [r["epoch"] for r in rows] == [1, 2], name
    table = pd.read_parquet(killed["folder"] / "trials.parquet")
    assert len(table) == 8 and (table["status"] == "ok").all()
    assert sorted(table["role"].value_counts().items()) == [("confirm", 2), ("search", 6)]
    assert "tuned-fault: 8 of 8 trials reported (8 ok)" in killed["output"]


def test_growing_the_grid_searches_only_the_new_cell(killed):
    before = killed["trials"]
    grown = write(killed["tmp"], "tuned-fault", "[0.0, 0.01, 0.1]")
    proc = subprocess.run([sys.executable, "-m", "sweeps", "run", str(grown), "--results", str(killed["results"])],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "2 of 3 grid cells done and kept; tuning 1 more" in proc.stdout
    after = tuned_trials(killed["folder"])
    new = {k: v for k, v in after.items() if k not in before}
    assert len(new) == 4 and len({t["cell"] for t in new.values()}) == 1
    assert {k: after[k] for k in before} == before
    status = subprocess.run([sys.executable, "-m", "sweeps", "status", str(grown), "--results", str(killed["results"])],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert "3 grid cells (each a search, then its best on every seed): 3 done" in status.stdout, status.stdout


# lr from 1e-5 to 4e-5 for SGD without momentum, one epoch: the validation loss falls
# all the way up the range, so the best lr is its largest value.
NARROW = """\
name: narrow
family: classifier
description: a too-narrow lr range
fixed: {model: mlp, hidden: [32], train_size: 500, val_size: 200, test_size: 100, batch_size: 50, epochs: 1,
        optimizer: sgd}
grid:
  weight_decay: [0.0]
search:
  algo: grid
  space:
    lr: {choice: [1.0e-5, 2.0e-5, 4.0e-5]}
  num_samples: 3
  metric: val_loss
  mode: min
"""


def test_a_best_value_at_the_edge_of_its_range_is_reported_at_the_end_of_the_run(narrow):
    proc, folder = narrow
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stdout[-3000:] + stderr[-2000:]
    line = "lr: best 4e-05 for weight_decay=0 is at the upper edge of [1e-05, 4e-05]: widen the range"
    assert line in stdout, stdout[-3000:]
    assert stdout.count(line) == 1
    assert line in (folder / "report" / "index.html").read_text()
