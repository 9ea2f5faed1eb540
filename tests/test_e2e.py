"""End to end: every spec's smoke profile (sweeps/*.yaml and the plugin examples,
examples/*.yaml) on a local Ray, through the CLI, produces the output contract
(Parquet columns, report PNGs); a re-run resumes instead of retraining; a folder
holding another spec's results is refused."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest
import yaml

pytestmark = pytest.mark.study  # runs studies on Ray: left out of `make test-fast`

REPO = Path(__file__).resolve().parent.parent
SPECS = sorted((REPO / "sweeps").glob("*.yaml")) + sorted((REPO / "examples").glob("*.yaml"))

HISTORY_COLUMNS = ["trial_id", "epoch", "train_loss", "train_acc", "test_loss", "test_acc", "gap_acc", "gap_loss",
                   "weight_norm", "grad_norm", "time_s", "weight_decay", "lr", "batch_size", "train_size", "seed", "model"]
TRIAL_COLUMNS = ["trial_id", "status", "n_params", "wall_s", "epochs_done", "final_test_acc", "device", "hostname",
                 "weight_decay", "lr", "seed", "model"]


def sweeps_cli(*args: str, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sweeps", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory) -> dict[str, tuple[Path, subprocess.CompletedProcess]]:
    """Every spec's smoke run, each its own driver (`gensweep run --address`), on one
    local Ray node started once: starting and stopping a Ray per study was half of
    each run's 17 s. The runs of a study without --address (Ray in the driver) are
    the other tests here and in test_faults, test_tuned, test_own_experiments."""
    from sweeps import cluster as local_cluster

    results = tmp_path_factory.mktemp("results")
    state = Path(tempfile.mkdtemp(prefix="gs-e2e-", dir="/tmp"))  # short: Ray's socket paths live under it
    node = local_cluster.up(workers=0, cpus=2, state_dir=state, default_ports=False)

    def run(spec: Path) -> subprocess.CompletedProcess:
        return sweeps_cli("run", str(spec), "--profile", "smoke", "--results", str(results),
                          "--address", node.gcs_address, env={"RAY_AUTH_MODE": "token"})

    try:
        # Two studies at a time: much of a smoke run is the driver's imports and the
        # report, which leave the second core idle.
        with ThreadPoolExecutor(max_workers=2) as pool:
            procs = dict(zip(SPECS, pool.map(run, SPECS)))
    finally:
        local_cluster.down(state)
        shutil.rmtree(state, ignore_errors=True)
    runs = {}
    for spec, proc in procs.items():
        assert proc.returncode == 0, f"{spec.name}:\n" + proc.stdout[-3000:] + proc.stderr[-3000:]
        runs[spec.stem] = (results / f"{yaml.safe_load(spec.read_text())['name']}-smoke", proc)
    return runs


def test_the_plugin_example_runs_its_own_model_dataset_probe_family_and_figure(smoke_runs):
    """examples/own.yaml (docs/own-experiments.md): every piece is a plugin file."""
    folder, proc = smoke_runs["own"]
    trials = pd.read_parquet(folder / "trials.parquet")
    assert sorted(trials["arch"].unique()) == ["cnn_small", "resmlp"] and sorted(trials["max_shift"].unique()) == [0, 1]
    assert (trials["dataset"] == f"npz:{REPO / 'examples' / 'data' / 'digits14.npz'}").all()
    assert trials["final_margin_mean"].notna().all() and trials["final_margin_neg_frac"].between(0, 1).all()
    # the plugin model on 1x14x14 inputs: 196*128 + 128 + 2 blocks (LayerNorm 256 + 128*128 + 128) + 128*10 + 10
    assert set(trials.loc[trials["arch"] == "resmlp", "n_params"]) == {196 * 128 + 128 + 2 * (256 + 128 * 128 + 128) + 1290}
    record = json.loads((folder / "study.json").read_text())
    assert [p["plugin"] for p in record["plugins"]] == ["plugins/resmlp.py", "plugins/margin.py", "plugins/shifted.py"]
    shas = {Path(p["path"]).name: p["sha256"] for p in record["plugins"]}
    assert (trials["plugin_sha256"] == ", ".join(f"{name}={sha}" for name, sha in shas.items())).all()
    assert (folder / "report" / "03-margin_bars.png").stat().st_size > 10_000


@pytest.mark.parametrize("spec", [s.stem for s in SPECS])
def test_smoke_writes_the_output_contract(smoke_runs, spec):
    folder, proc = smoke_runs[spec]
    history = pd.read_parquet(folder / "history.parquet")
    trials = pd.read_parquet(folder / "trials.parquet")
    # Regression families (function fitting) have losses but no accuracy and no model
    # name from the registry; everything else of the contract holds for them too.
    classifies = "train_acc" in history
    not_for_regression = {"train_acc", "test_acc", "gap_acc", "model", "final_test_acc"}
    missing = [c for c in HISTORY_COLUMNS if c not in history and (classifies or c not in not_for_regression)]
    assert not missing, f"history.parquet lacks {missing}"
    # a family that trains two solutions names their settings apart (interpolation: lr_a, lr_b)
    assert not [c for c in TRIAL_COLUMNS if c not in trials and f"{c}_a" not in trials
                and (classifies or c not in not_for_regression)]
    assert len(trials) >= 2 and (trials["status"] == "ok").all()
    if classifies:
        assert history["train_acc"].between(0, 1).all() and history["test_acc"].between(0, 1).all()
        assert (history["gap_acc"] - (history["train_acc"] - history["test_acc"])).abs().max() < 1e-9
    else:
        assert (history["gap_loss"] - (history["test_loss"] - history["train_loss"])).abs().max() < 1e-9
    # one row per trial x evaluated epoch (x phase x alpha for the interpolation family)
    assert not history.duplicated(["trial_id", "epoch", *[c for c in ("phase", "alpha") if c in history]]).any()
    assert set(history["trial_id"]) == set(trials["trial_id"])
    assert (trials["device"] == "cpu").all() and (trials["n_params"] > 0).all()
    pngs = sorted((folder / "report").glob("*.png"))
    assert len(pngs) >= 2 and all(p.stat().st_size > 10_000 for p in pngs)
    index = (folder / "report" / "index.html").read_text()
    assert all(p.name in index for p in pngs)
    assert f"report: {folder / 'report' / 'index.html'}" in proc.stdout
    record = json.loads((folder / "study.json").read_text())
    assert record["provenance"]["packages"]["torch"].startswith("2.14.1")
    assert record["provenance"]["git_commit"]


def test_weight_decay_smoke_varies_what_the_spec_says(smoke_runs):
    folder, _ = smoke_runs["wd"]
    trials = pd.read_parquet(folder / "trials.parquet")
    assert sorted(trials["weight_decay"]) == [0.0, 0.01]
    assert (trials["train_size"] == 200).all() and (trials["model"] == "cnn_overparam").all()


def test_interpolation_smoke_reports_both_trainings_and_every_alpha(smoke_runs):
    folder, _ = smoke_runs["interpolation"]
    history = pd.read_parquet(folder / "history.parquet")
    for _, rows in history.groupby("trial_id"):
        assert list(rows["phase"]) == ["A", "B"] + ["interpolation"] * 7
        assert list(rows["alpha"].iloc[2:]) == [-1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0]
        assert list(rows["batch_size"].iloc[:2]) == [64, 128]


def test_lr_search_samples_within_its_range(smoke_runs):
    folder, _ = smoke_runs["lr"]
    trials = pd.read_parquet(folder / "trials.parquet")
    assert trials["lr"].between(1e-4, 1e-1).all() and trials["lr"].nunique() == len(trials)
    assert "final_val_acc" in trials


def test_rerun_resumes_without_retraining(smoke_runs):
    folder, _ = smoke_runs["wd"]
    before = pd.read_parquet(folder / "history.parquet")
    proc = sweeps_cli("run", "sweeps/wd.yaml", "--profile", "smoke", "--results", str(folder.parent))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "wd-smoke: all 2 trials are done; rebuilding the report" in proc.stdout
    after = pd.read_parquet(folder / "history.parquet")
    # same trials, same epochs, same numbers: nothing was trained again
    cols = ["trial_id", "epoch", "train_loss", "test_acc"]
    pd.testing.assert_frame_equal(before[cols].sort_values(cols[:2]).reset_index(drop=True),
                                  after[cols].sort_values(cols[:2]).reset_index(drop=True))


def test_folder_of_a_different_spec_is_refused(smoke_runs, tmp_path):
    """Same study name, another family: not a grown version of the study."""
    folder, _ = smoke_runs["wd"]
    other = tmp_path / "wd.yaml"
    other.write_text("name: wd\nfamily: function_fit\ndescription: another study under the same name\n"
                     "fixed: {params: 60, shape: [1], max_steps: 10, train_size: 200, test_size: 200, batch_size: 50}\n"
                     "profiles: {smoke: {seeds: [0]}}\n")
    before = sorted(p.name for p in folder.rglob("*"))
    proc = sweeps_cli("run", str(other), "--profile", "smoke", "--results", str(folder.parent))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "different spec" in lines[0] and "family" in lines[0] and "--fresh" in lines[0]
    assert sorted(p.name for p in folder.rglob("*")) == before  # nothing touched


def test_report_command_rebuilds_from_the_folder(smoke_runs):
    folder, _ = smoke_runs["wd"]
    (folder / "history.parquet").unlink()
    proc = subprocess.run([sys.executable, "-m", "analysis", "report", str(folder)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "2 of 2 trials reported (2 ok)" in proc.stdout
    assert len(pd.read_parquet(folder / "history.parquet")) == 2


def test_report_on_a_non_study_folder_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "analysis", "report", str(tmp_path)], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "not a study folder" in proc.stderr


@pytest.mark.parametrize("spec", ["wd_tuned", "batch_size_tuned"])
def test_tuned_smoke_searches_each_cell_then_confirms_and_draws_its_figures(smoke_runs, spec):
    folder, proc = smoke_runs[spec]
    trials = pd.read_parquet(folder / "trials.parquet")
    axis = "weight_decay" if spec == "wd_tuned" else "batch_size"
    assert trials["tuning_cell"].nunique() == 2
    for _, cell in trials.groupby("tuning_cell"):
        assert cell[axis].nunique() == 1
        search = cell[cell["role"] == "search"]
        assert sorted(search["sample"]) == [0, 1] and set(search["seed"]) == {0}
        confirm = cell[cell["role"] == "confirm"]
        assert list(confirm["seed"]) == [1] and confirm["confirms"].iloc[0] in set(search["trial_id"])
        assert confirm["lr"].iloc[0] == search.set_index("trial_id").loc[confirm["confirms"].iloc[0], "lr"]
        baseline = cell[cell["role"] == "baseline"]
        if spec == "wd_tuned":  # batch_size_tuned's smoke profile drops the baseline
            assert sorted(baseline["seed"]) == [0, 1] and set(baseline["lr"]) == {0.02}
        else:
            assert baseline.empty
    pngs = {p.name for p in (folder / "report").glob("*.png")}
    assert {"01-isolation.png", "02-axis.png"} <= pngs
    assert "Best lr per tuning cell (chosen on val_acc):" in proc.stdout
