"""A tuned study's report (analysis/tuning.py, analysis/studies/tuned.py and the
tuned parts of analysis/report.py): the best trial per tuning cell, the table, the
boundary check, what is missing, the `isolation` and `axis` figures, and
write_report on a synthetic study folder."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from analysis.figures import default_figures  # noqa: E402
from analysis.report import check_figures, draw_figure, tuned_table, unfinished_trials, write_report  # noqa: E402
from analysis.tuning import best_trials, boundary_lines, confirmed_runs  # noqa: E402
from trainables.errors import UserError  # noqa: E402

NAN = float("nan")
LR = {"loguniform": [1e-4, 0.1]}


def tuned_spec(grid: dict | None = None, seeds=(0, 1), num_samples: int = 4, baseline: dict | None = None,
               mode: str = "max", figures: list | None = None) -> dict:
    return {"name": "tuned", "family": "classifier", "description": "", "fixed": {},
            "grid": {"weight_decay": [1e-4, 1e-2]} if grid is None else grid,
            "search": {"algo": "tpe", "space": {"lr": LR}, "num_samples": num_samples, "metric": "val_acc",
                       "mode": mode, "seed": 0, "max_concurrent": None, "baseline": baseline},
            "seeds": list(seeds), "figures": figures or []}


def row(trial_id: str, cell: str, role: str, lr: float, *, val: float = NAN, test: float = NAN, seed: int = 0,
        status: str = "ok", sample: int | None = None, confirms: str | None = None, early: bool = False,
        wd: float | None = None) -> dict:
    return {"trial_id": trial_id, "tuning_cell": cell, "role": role, "sample": sample, "confirms": confirms,
            "weight_decay": wd if wd is not None else {"A": 1e-4, "B": 1e-2}[cell], "seed": seed, "lr": lr,
            "final_val_acc": val, "final_test_acc": test, "status": status, "stopped_early": early,
            "epochs_done": 3, "wall_s": 1.0}


def study_trials() -> pd.DataFrame:
    """Two cells. A: the metric-best search trial was stopped early and another
    diverged, so a06 (lr 0.003, mid-range) is best; B: its best (lr 0.089) is at the
    upper edge, and a diverged trial with a better last val_acc does not count."""
    return pd.DataFrame([
        row("a00", "A", "search", 3e-4, val=0.90, test=0.89, sample=0),
        row("a06", "A", "search", 3e-3, val=0.95, test=0.94, sample=1),
        row("a02", "A", "search", 0.05, status="diverged", sample=2),
        row("a03", "A", "search", 0.01, val=0.97, test=0.96, sample=3, early=True),
        row("a10", "A", "confirm", 3e-3, val=0.94, test=0.92, seed=1, confirms="a06"),
        row("a20", "A", "baseline", 1e-3, val=0.93, test=0.91, seed=0),
        row("a21", "A", "baseline", 1e-3, val=0.92, test=0.90, seed=1),
        row("b00", "B", "search", 0.089, val=0.96, test=0.95, sample=0),
        row("b01", "B", "search", 1e-3, val=0.94, test=0.93, sample=1),
        row("b02", "B", "search", 2e-4, val=0.80, test=0.79, sample=2),
        row("b03", "B", "search", 0.02, val=0.99, test=0.98, sample=3, status="diverged"),
        row("b10", "B", "confirm", 0.089, val=0.95, test=0.97, seed=1, confirms="b00"),
        row("b20", "B", "baseline", 1e-3, val=0.90, test=0.88, seed=0),
    ])


# ---- the best trial per cell ------------------------------------------------------------

def test_best_per_cell_excludes_stopped_early_and_diverged_trials():
    spec = tuned_spec()
    trials = study_trials()
    unconfirmed = trials[trials["role"] != "confirm"]  # the metric rule alone, not the searcher's choice
    best = best_trials(unconfirmed, spec).set_index("tuning_cell")
    assert best.loc["A", "best_trial"] == "a06" and best.loc["A", "lr"] == pytest.approx(3e-3)
    assert best.loc["B", "best_trial"] == "b00" and best.loc["B", "val_acc"] == pytest.approx(0.96)
    assert best.loc["B", "label"] == "weight_decay=0.01"
    # mode min picks the lowest complete one
    low = best_trials(unconfirmed, tuned_spec(mode="min")).set_index("tuning_cell")
    assert low.loc["A", "best_trial"] == "a00" and low.loc["B", "best_trial"] == "b02"


def test_the_confirmed_trial_is_the_best_even_where_the_metric_disagrees():
    trials = study_trials()
    # the searcher confirmed b01 (e.g. it chose before b00 finished): the report follows it
    trials.loc[trials["trial_id"] == "b10", ["confirms", "lr"]] = ["b01", 1e-3]
    best = best_trials(trials, tuned_spec()).set_index("tuning_cell")
    assert best.loc["B", "best_trial"] == "b01" and best.loc["B", "lr"] == pytest.approx(1e-3)
    assert best.loc["B", "val_acc"] == pytest.approx(0.94)
    runs = confirmed_runs(trials, tuned_spec())
    assert sorted(runs["trial_id"]) == ["a06", "a10", "b01", "b10"]


def test_diverged_fraction_counts_finished_search_trials_only():
    trials = pd.concat([study_trials(), pd.DataFrame([row("a04", "A", "search", 2e-3, status="incomplete",
                                                          sample=4)])])
    best = best_trials(trials, tuned_spec()).set_index("tuning_cell")
    assert (best.loc["A", "n_search"], best.loc["A", "n_diverged"]) == (4, 1)
    assert best.loc["A", "diverged_fraction"] == pytest.approx(0.25)


def test_a_cell_with_no_complete_search_trial_has_no_best():
    trials = pd.DataFrame([row("a00", "A", "search", 0.05, status="diverged", sample=0),
                           row("a01", "A", "search", 0.01, val=0.5, sample=1, early=True)])
    best = best_trials(trials, tuned_spec()).iloc[0]
    assert best["best_trial"] is None and pd.isna(best["lr"])
    assert boundary_lines(best_trials(trials, tuned_spec()), tuned_spec()) == []


# ---- boundary check ------------------------------------------------------------------------

def test_boundary_lines_name_the_cell_and_the_edge():
    spec = tuned_spec()
    assert boundary_lines(best_trials(study_trials(), spec), spec) == [
        "lr: best 0.089 for weight_decay=0.01 is at the upper edge of [0.0001, 0.1]: widen the range"]


def test_a_best_in_the_middle_or_a_search_without_grid_axes():
    middle = pd.DataFrame([row("a00", "A", "search", 3e-3, val=0.9, sample=0)])
    assert boundary_lines(best_trials(middle, tuned_spec()), tuned_spec()) == []
    low = pd.DataFrame([row("x0", "", "search", 1.2e-4, val=0.9, sample=0, wd=0.0)])
    spec = tuned_spec(grid={}, seeds=[0])
    assert boundary_lines(best_trials(low, spec), spec) == [
        "lr: best 0.00012 is at the lower edge of [0.0001, 0.1]: widen the range"]


# ---- the table -----------------------------------------------------------------------------

def test_tuned_table_one_row_per_cell():
    study = {"spec": tuned_spec(baseline={"lr": 1e-3})}
    table = tuned_table(study_trials(), study)
    assert list(table.columns) == ["weight_decay", "lr", "val_acc", "test_acc", "n", "test_acc (fixed lr=0.001)",
                                   "n (fixed lr=0.001)", "search trials", "diverged"]
    a, b = table.to_dict("records")
    assert (a["weight_decay"], b["weight_decay"]) == ("0.0001", "0.01") and a["lr"] == "0.003"
    assert a["val_acc"] == "0.9500" and b["val_acc"] == "0.9600"
    # the best search trial (seed 0) and its confirm trial (seed 1): mean ± std, n = 2
    assert a["test_acc"] == f"0.9300 ± {np.std([0.94, 0.92], ddof=1):.4f}" and a["n"] == 2
    assert b["test_acc"] == f"0.9600 ± {np.std([0.95, 0.97], ddof=1):.4f}"
    assert a["test_acc (fixed lr=0.001)"] == "0.9050 ± 0.0071" and a["n (fixed lr=0.001)"] == 2
    assert b["test_acc (fixed lr=0.001)"] == "0.8800" and b["n (fixed lr=0.001)"] == 1  # one seed: no spread
    assert (a["search trials"], a["diverged"]) == (4, "1/4")
    assert (b["search trials"], b["diverged"]) == (4, "1/4")
    # without a baseline in the spec: no baseline columns
    assert "n (fixed lr=0.001)" not in tuned_table(study_trials(), {"spec": tuned_spec()})


def test_unfinished_cells_say_what_is_missing():
    spec = tuned_spec(grid={"weight_decay": [1e-4, 1e-2, 0.1]}, baseline={"lr": 1e-3})
    trials = study_trials()
    trials = trials[trials["trial_id"] != "a10"]  # A: confirm seed 1 not started
    trials = pd.concat([trials, pd.DataFrame([row("b21", "B", "baseline", 1e-3, seed=1, status="incomplete")])])
    trials.loc[trials["trial_id"] == "b02", "status"] = "incomplete"  # B's search not finished
    assert unfinished_trials(trials, {"spec": spec}) == [
        "weight_decay=0.0001: confirm seed 1 not started",
        "weight_decay=0.01: 3 of 4 search trials finished (1 unfinished)",
        "weight_decay=0.01: baseline seed 1 unfinished (trial b21)",
        "weight_decay=0.1: not started (0 of 4 search trials)",
    ]
    fewer = trials[~trials["trial_id"].isin(["b02", "b03"])]
    assert "weight_decay=0.01: 2 of 4 search trials finished (2 not started)" in unfinished_trials(
        fewer, {"spec": spec})
    dead = pd.DataFrame([row("a00", "A", "search", 0.05, status="diverged", sample=0)])
    assert unfinished_trials(dead, {"spec": tuned_spec(grid={"weight_decay": [1e-4]}, num_samples=1)}) == [
        "weight_decay=0.0001: no search trial ran its whole budget (of 1: 1 diverged); nothing to confirm"]


# ---- figures ---------------------------------------------------------------------------------

def vertical_lines(ax) -> list[float]:
    """x of each axvline (a line from the bottom to the top of the axes)."""
    return sorted(float(line.get_xdata()[0]) for line in ax.get_lines()
                  if len(line.get_xdata()) == 2 and list(line.get_ydata()) == [0, 1])


def test_axis_figure_a_panel_per_cell_with_edges_best_and_diverged(tmp_path, kept_figures):
    spec = tuned_spec()
    path = draw_figure({"kind": "axis", "y": []}, pd.DataFrame(), study_trials(), tmp_path / "axis.png", spec)
    assert path == tmp_path / "axis.png" and path.stat().st_size > 10_000
    (fig,) = kept_figures()
    panels = fig.axes
    assert [ax.get_title().split("\n")[0] for ax in panels] == ["weight_decay=0.0001", "weight_decay=0.01"]
    assert all("1 of 4 diverged" in ax.get_title() for ax in panels)
    for ax in panels:
        assert vertical_lines(ax) == pytest.approx([1e-4, 0.1])
        assert ax.get_xscale() == "log"
        lo, hi = ax.get_xlim()
        assert lo < 1e-4 and hi > 0.1  # the edges are inside the view
    stars = [line for line in panels[1].get_lines() if line.get_marker() == "*"]
    assert len(stars) == 1 and stars[0].get_xdata()[0] == pytest.approx(0.089)
    crosses = [line for line in panels[0].get_lines() if line.get_marker() == "x"]
    assert list(crosses[0].get_xdata()) == [0.05]


def test_axis_figure_wraps_many_cells(tmp_path, kept_figures):
    grid = {"weight_decay": [0.0, 1e-5, 1e-4, 1e-3, 1e-2]}
    spec = tuned_spec(grid=grid)
    trials = pd.DataFrame([row(f"t{i}{j}", f"c{i}", "search", lr, val=0.9 + 0.01 * j, sample=j, wd=wd)
                           for i, wd in enumerate(grid["weight_decay"]) for j, lr in enumerate([1e-3, 1e-2])])
    draw_figure({"kind": "axis"}, pd.DataFrame(), trials, tmp_path / "axis.png", spec)
    (fig,) = kept_figures()
    assert len(fig.axes) == 5
    assert sorted({round(ax.get_position().y0, 3) for ax in fig.axes}, reverse=True)[1:] != []  # two rows
    assert sum(ax.get_position().y0 > 0.5 for ax in fig.axes) == 4  # of 4, then 1


def test_isolation_figure_tuned_beside_the_baseline(tmp_path, kept_figures):
    spec = tuned_spec(baseline={"lr": 1e-3})
    fig_spec = {"kind": "isolation", "x": "weight_decay", "y": ["test_acc"], "logx": True}
    path = draw_figure(fig_spec, pd.DataFrame(), study_trials(), tmp_path / "isolation.png", spec)
    assert path.exists() and path.stat().st_size > 10_000
    (fig,) = kept_figures()
    left, right = fig.axes
    assert left.get_ylabel() == "validation accuracy" and right.get_ylabel() == "test accuracy"
    assert right.get_xscale() == "log"
    legend = [t.get_text() for t in right.get_legend().get_texts()]
    assert "re-tuned lr" in legend and "fixed lr=0.001" in legend
    # lines: the re-tuned means (solid) and the baseline's (dashed), at both cells
    by_style = {line.get_linestyle(): line for line in right.get_lines() if len(line.get_xdata()) == 2}
    assert list(by_style["-"].get_ydata()) == pytest.approx([0.93, 0.96])
    assert list(by_style["--"].get_ydata()) == pytest.approx([0.905, 0.88])
    assert list(by_style["-"].get_xdata()) == pytest.approx([1e-4, 1e-2])
    left_solid = [line for line in left.get_lines() if line.get_linestyle() == "-" and len(line.get_xdata()) == 2]
    assert list(left_solid[0].get_ydata()) == pytest.approx([0.95, 0.96])  # each cell's best val_acc


def test_the_tuned_kinds_draw_nothing_without_a_search(tmp_path):
    plain = {"grid": {"weight_decay": [0.0]}, "seeds": [0]}
    for kind in ("axis", "isolation"):
        assert draw_figure({"kind": kind}, pd.DataFrame(), study_trials(), tmp_path / f"{kind}.png", plain) is None


def test_default_figures_and_check_figures_for_a_tuned_study():
    spec = tuned_spec(grid={"batch_size": [16, 64, 256], "train_size": [1000, 10000]})
    assert default_figures({"spec": spec}) == [
        {"kind": "isolation", "x": "batch_size", "hue": "train_size", "y": [], "logx": 2}, {"kind": "axis", "y": []}]
    assert default_figures({"spec": tuned_spec(grid={})}) == [{"kind": "axis", "y": []}]
    check_figures([{"kind": "isolation", "x": "batch_size"}, {"kind": "axis"}], "s.yaml", spec)
    check_figures([{"kind": "axis"}], "s.yaml")  # without the spec: the kind alone
    with pytest.raises(UserError, match=r"s.yaml: figures\[0\].x: 'lr' is not a grid axis"):
        check_figures([{"kind": "isolation", "x": "lr"}], "s.yaml", spec)
    with pytest.raises(UserError, match=r"figures\[1\].kind: an 'axis' figure .* no search"):
        check_figures([{"kind": "curves", "y": ["test_acc"]}, {"kind": "axis"}], "s.yaml",
                      {"grid": {"weight_decay": [0.0]}, "search": None})
    with pytest.raises(UserError, match="no grid"):
        check_figures([{"kind": "isolation"}], "s.yaml", tuned_spec(grid={}))


# ---- write_report on a study folder ------------------------------------------------------------

def write_tuned_study(folder: Path, spec: dict, trials: pd.DataFrame) -> None:
    """A study folder as a tuned run leaves it: study.json, per trial Tune's
    params.json (the cell's values, the sampled lr, the tuning key) and result.json
    (three epochs), and an experiment state saying which trials Tune terminated (a
    stopped-early trial ended 'running', then Tune terminated it)."""
    n_cells = int(np.prod([len(v) for v in spec["grid"].values()])) * len(spec["seeds"])  # grid cells x seeds
    (folder / "study.json").write_text(json.dumps({
        "spec": spec, "profile": None, "study": spec["name"], "source": "tuned.yaml", "n_cells": n_cells,
        "provenance": {}}))
    tune = folder / "tune"
    states = []
    for r in trials.to_dict("records"):
        trial_dir = tune / r["trial_id"]
        trial_dir.mkdir(parents=True)
        cell = {k: r[k] for k in spec["grid"]} | {"seed": r["seed"], "model": "mlp"}
        tuning = {"cell": r["tuning_cell"], "role": r["role"], "sample": r["sample"], "of": r["confirms"]}
        (trial_dir / "params.json").write_text(json.dumps({"cell": cell, "lr": r["lr"], "tuning": tuning}))
        last = {"ok": "running" if r["stopped_early"] else "ok", "diverged": "diverged"}.get(r["status"], "running")
        reports = [{"epoch": e, "train_acc": r["final_val_acc"], "val_acc": r["final_val_acc"],
                    "test_acc": r["final_test_acc"], "status": last if e == 3 else "running",
                    "training_iteration": e, "time_s": float(e)} for e in (1, 2, 3)]
        (trial_dir / "result.json").write_text("\n".join(json.dumps(x) for x in reports) + "\n")
        states.append({"trial_id": r["trial_id"], "status": "RUNNING" if r["status"] == "incomplete" else "TERMINATED"})
    (tune / "experiment_state-2026-01-01.json").write_text(json.dumps({"trial_data": states}))


def test_write_report_shows_the_table_and_the_boundary_lines(tmp_path):
    spec = tuned_spec(baseline={"lr": 1e-3})
    write_tuned_study(tmp_path, spec, study_trials())
    summary = write_report(tmp_path)
    collected = pd.read_parquet(tmp_path / "trials.parquet").set_index("trial_id")
    assert bool(collected.loc["a03", "stopped_early"]) and collected.loc["a03", "status"] == "ok"
    lines = summary.splitlines()
    assert "  boundary: lr: best 0.089 for weight_decay=0.01 is at the upper edge of [0.0001, 0.1]: widen the range" \
        in lines
    assert sum(line.startswith("  boundary:") for line in lines) == 1
    assert lines[-1].startswith("report: ") and lines[-2].startswith("  boundary: ")
    assert lines[0] == "tuned: 13 of 14 trials reported (2 diverged, 11 ok)"
    assert ("  tuning: lr searched in each weight_decay cell (4 trials on seed 0, chosen by the highest val_acc); "
            "the best re-run on seed 1; baseline: fixed lr=0.001 on every seed") in lines
    heading = lines.index("Best lr per tuning cell (chosen on val_acc):")
    header, first, second = lines[heading + 1: heading + 4]
    assert header.split()[:4] == ["weight_decay", "lr", "val_acc", "test_acc"]
    assert "0.003" in first and "0.9500" in first and "1/4" in first
    assert "0.089" in second and "0.9600 ±" in second and "0.8800" in second
    assert "missing or unfinished: weight_decay=0.01: baseline seed 1 not started" in summary
    report = tmp_path / "report"
    page = (report / "index.html").read_text()
    assert "Best lr per tuning cell" in page and "fixed lr=0.001" in page
    assert "Boundary: lr: best 0.089 for weight_decay=0.01 is at the upper edge" in page
    pngs = sorted(p.name for p in report.glob("*.png"))
    assert pngs == ["01-isolation.png", "02-axis.png"]
    assert all((report / name).stat().st_size > 10_000 and name in page for name in pngs)


def test_write_report_of_a_search_without_grid_axes(tmp_path):
    spec = tuned_spec(grid={}, seeds=[0], num_samples=3)
    trials = pd.DataFrame([row("s0", "only", "search", 3e-3, val=0.95, test=0.94, sample=0, wd=0.0),
                           row("s1", "only", "search", 1e-4, val=0.90, test=0.90, sample=1, wd=0.0),
                           row("s2", "only", "search", 0.08, status="diverged", sample=2, wd=0.0)])
    write_tuned_study(tmp_path, spec, trials)
    summary = write_report(tmp_path)
    assert "Best lr per tuning cell (chosen on val_acc):" in summary
    assert "Search trials, best val_acc first:" in summary  # the ranking, as a search's report always had
    ranking = summary.split("Search trials, best val_acc first:\n")[1].splitlines()
    assert [float(line.split()[0]) for line in ranking[1:3]] == [0.003, 0.0001]  # val_acc 0.95, 0.90
    assert summary.splitlines()[0] == "tuned: 3 of 3 trials reported (1 diverged, 2 ok)"
    assert "boundary:" not in summary and "missing or unfinished" not in summary and "not finished" not in summary
    assert sorted(p.name for p in (tmp_path / "report").glob("*.png")) == ["01-axis.png"]


def test_a_search_run_before_tuning_cells_is_one_cell():
    spec = tuned_spec(grid={}, seeds=[0], num_samples=2)
    legacy = pd.DataFrame([{"trial_id": "t0", "lr": 0.05, "final_val_acc": 0.9, "status": "ok", "seed": 0},
                           {"trial_id": "t1", "lr": 0.003, "final_val_acc": 0.95, "status": "ok", "seed": 0}])
    best = best_trials(legacy, spec)
    assert len(best) == 1 and best.iloc[0]["best_trial"] == "t1" and best.iloc[0]["n_search"] == 2
    assert tuned_table(legacy, {"spec": spec}).iloc[0]["diverged"] == "0/2"
