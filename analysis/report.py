"""Write a study's tables, figures and index page.

    python -m analysis report results/wd-quick
"""

from __future__ import annotations

import html
import itertools
import json
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd

from analysis.collect import collect_tables
from analysis.figures import KINDS, default_figures, figure_name, label, wants_spec
from analysis.tuning import (
    baseline_label, baseline_runs, best_trials, boundary_lines, confirmed_runs, is_tuned, test_metric,
    unfinished_cells, value_label as _value_label,
)
from trainables.errors import UserError
from trainables.families import suggest
from trainables.contract import HISTORY_FILE, REPORT_DIR, STEPS_FILE, TRIALS_FILE, expected_trials, require_record
from trainables.tuning import EDGE_FRACTION


def load_recorded_plugins(study: dict) -> None:
    """Import the plugins a study ran with (from study.json), so `gensweep report`
    on its own draws their figure kinds too. A plugin that is gone is skipped: the
    built-in figures are still drawn, and its own kinds are refused by name."""
    from trainables import plugins

    present = [p for p in study.get("plugins") or [] if Path(p["path"]).is_file()]
    if present and not plugins.active():
        try:
            plugins.activate(plugins.resolve([p["path"] for p in present], Path("/")))
        except plugins.PluginError as exc:
            raise UserError(f"{study.get('source')}: plugins: {exc}") from None


def figure_kinds() -> dict:
    """Every figure kind, the study modules' included."""
    import analysis.studies  # noqa: F401  (registers their kinds)

    return KINDS


_TUNED_KINDS = ("isolation", "axis")  # figure kinds that draw a tuned study's search


def check_figures(figures: list[dict], source: str, spec: dict | None = None) -> None:
    """Refuse, in one line naming the spec file and key, a figure of an unknown kind
    or a built-in kind without what it needs (`figures` as in the spec: dicts).
    `spec` (the spec as a dict, optional): also check what the tuned-study kinds need
    from it (a search; for `isolation`, grid axes as x and hue)."""
    kinds = figure_kinds()
    for i, fig in enumerate(figures):
        kind = fig.get("kind")
        if kind not in kinds:
            raise UserError(f"{source}: figures[{i}].kind: unknown figure kind {kind!r}{suggest(str(kind), kinds)}; "
                            f"known: {', '.join(sorted(kinds))}")
        if kind in ("curves", "final") and not fig.get("y"):
            raise UserError(f"{source}: figures[{i}].y: name at least one metric to plot")
        if kind == "final" and fig.get("x") is None:
            raise UserError(f"{source}: figures[{i}].x: a 'final' figure needs x (the hyperparameter on the x axis)")
        if kind in _TUNED_KINDS and spec is not None:
            _check_tuned_figure(fig, f"{source}: figures[{i}]", spec)


def _check_tuned_figure(fig: dict, where: str, spec: dict) -> None:
    kind = fig["kind"]
    if not spec.get("search"):
        raise UserError(f"{where}.kind: an {kind!r} figure shows a search re-tuned per grid cell; "
                        f"this spec has no search: (add one, or remove the figure)")
    grid = list(spec.get("grid") or {})
    if kind != "isolation":
        return
    if not grid:
        raise UserError(f"{where}.kind: an 'isolation' figure draws results against a grid axis; this spec has no "
                        f"grid: (use kind 'axis' or 'final' for a search without grid axes)")
    for role in ("x", "hue"):
        column = fig.get(role)
        if column is not None and column not in grid:
            raise UserError(f"{where}.{role}: {column!r} is not a grid axis (grid: {', '.join(grid)})"
                            f"{suggest(str(column), grid)}")


def _write_parquet(frame: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        frame.to_parquet(tmp, index=False)
        os.replace(tmp, path)  # atomic: a reader sees the old table or the new one, never half
    finally:
        tmp.unlink(missing_ok=True)  # a write cut short (a full disk) leaves no stray file


def _varying(study: dict) -> list[str]:
    spec = study["spec"]
    keys = list(spec.get("grid") or {})
    if spec.get("search"):
        keys += list(spec["search"]["space"])
    return keys


def unfinished_trials(trials: pd.DataFrame, study: dict) -> list[str]:
    """The grid cells (x seeds) that have no finished trial, named by their varying
    hyperparameters: 'weight_decay=0.01, seed=1 (unfinished, trial <id>)' or
    '... (not started)'; a tuned study: per tuning cell, the search, confirm and
    baseline trials not finished (`analysis.tuning.unfinished_cells`). Finished: ok,
    diverged, or error (out of retries)."""
    spec = study["spec"]
    if is_tuned(spec) and (spec.get("grid") or "role" in trials):
        return unfinished_cells(trials, spec)  # per tuning cell: search, confirm and baseline trials
    finished = {"ok", "diverged", "error"}
    rows = trials.to_dict("records") if "status" in trials else []
    if spec.get("search"):  # a search run before tuning cells: its trials only
        names = [f"trial {r['trial_id']} ("
                 + ", ".join(f"{k}={_value_label(r.get(k))}" for k in spec["search"]["space"]) + ", unfinished)"
                 for r in rows if r["status"] not in finished]
        not_drawn = spec["search"]["num_samples"] - len(rows)
        return names + ([f"{not_drawn} sample(s) not started"] if not_drawn > 0 else [])
    axes = dict(spec.get("grid") or {})
    if len(spec.get("seeds") or [0]) > 1:
        axes["seed"] = spec["seeds"]
    out = []
    for combo in itertools.product(*axes.values()):
        cell = dict(zip(axes, map(_value_label, combo)))
        matching = [r for r in rows if all(_value_label(r.get(k)) == v for k, v in cell.items())]
        if any(r["status"] in finished for r in matching):
            continue
        name = ", ".join(f"{k}={v}" for k, v in cell.items()) or "the study's trial"
        out.append(f"{name} (unfinished, trial {matching[0]['trial_id']})" if matching else f"{name} (not started)")
    return out


def _listed(names: list[str], most: int = 12) -> str:
    return "; ".join(names[:most]) + (f"; and {len(names) - most} more" if len(names) > most else "")


def column_format(values: Iterable[float]) -> str:
    """One format spec for every number of a table column (means and stds alike),
    from the column's magnitude: 4 decimals (accuracies: 0.9520); more, up to 6, when
    the column's smallest nonzero value needs them for 3 significant digits (an MSE of
    0.00943 next to 0.0175: 0.00943 and 0.01750, not 0.0094); scientific with 3
    significant digits when that is still too few and every value is below 0.01
    (1.23e-07); 1 decimal when every value is 100 or more (step counts)."""
    sizes = [abs(float(v)) for v in values if pd.notna(v) and math.isfinite(v) and v != 0]
    if not sizes:
        return ".4f"
    if min(sizes) >= 100:
        return ".1f"
    decimals = max(4, 2 - math.floor(math.log10(min(sizes))))
    if decimals > 6:
        if max(sizes) < 0.01:
            return ".2e"
        decimals = 6
    return f".{decimals}f"


def format_mean_std(mean: float, std: float, n: int, spec: str = ".4f") -> str:
    """'mean ± std' in format `spec` (see `column_format`); the value alone when n is 1
    (no spread was measured), 'n/a' when there is no value."""
    if n < 1 or pd.isna(mean):
        return "n/a"
    if n == 1 or pd.isna(std):
        return f"{mean:{spec}}"
    return f"{mean:{spec}} ± {std:{spec}}"


def mean_std_column(means: Sequence[float], stds: Sequence[float], counts: Sequence[int]) -> list[str]:
    """A table column of `format_mean_std` texts, one format for all its rows."""
    spec = column_format(means)
    return [format_mean_std(m, s, int(n), spec) for m, s, n in zip(means, stds, counts)]


def ci95(stds: Sequence[float], counts: Sequence[int]) -> list[float]:
    """Half-widths of 95% confidence intervals of means over n seeds (Student's t,
    n - 1 degrees of freedom: 4.30 x std / sqrt(3) for 3 seeds); NaN for n < 2."""
    from scipy import stats

    return [float(stats.t.ppf(0.975, n - 1) * s / math.sqrt(n)) if n >= 2 and pd.notna(s) else math.nan
            for s, n in zip(stds, counts)]


def summary_table(trials: pd.DataFrame, study: dict, spread: str = "std",
                  metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """Final metrics of ok trials as mean ± std over seeds (`spread="ci95"`: ± the
    95% confidence interval's half-width), with n, per grid cell (the value alone
    where one trial was averaged); a search: one row per trial. Each metric column has
    one number format (`column_format`). `metrics`: these instead of the family's."""
    ok = trials[trials["status"] == "ok"]
    keys = [k for k in _varying(study) if k in ok]
    from trainables.families import get_family

    wanted = metrics or get_family(study["spec"]["family"]).summary_metrics or (
        "train_acc", "val_acc", "test_acc", "gap_acc", "weight_norm")
    metrics = [f"final_{m}" for m in wanted if f"final_{m}" in ok]
    if ok.empty or not metrics:
        return pd.DataFrame()
    if study["spec"].get("search"):
        table = ok[keys + ["epochs_done"] + metrics].sort_values(
            "final_val_acc" if "final_val_acc" in metrics else metrics[0], ascending=False)
        for m in metrics:  # one trial per row: values alone, one format per column
            table[m] = mean_std_column(list(table[m]), [float("nan")] * len(table), [1] * len(table))
        return table.rename(columns=lambda c: c.removeprefix("final_"))
    grouped = ok.groupby(keys, dropna=False) if keys else ok.assign(trials="all").groupby("trials")
    out = pd.DataFrame({"n": grouped.size()})
    if "n_params" in ok and ok["n_params"].nunique() > 1:  # capacity varies: say how much
        out["params"] = grouped["n_params"].first().astype(int)
    for m in metrics:
        # n per metric: the values averaged (a trial may lack one); n = 1 shows no ±
        counts = list(grouped[m].count())
        spreads = list(grouped[m].std()) if spread == "std" else ci95(list(grouped[m].std()), counts)
        out[m.removeprefix("final_")] = mean_std_column(list(grouped[m].mean()), spreads, counts)
    out = out.reset_index()
    # widths like "128-96" sort as text; order by size instead
    return out.sort_values("params", kind="stable") if "params" in out else out


def tuned_table(trials: pd.DataFrame, study: dict) -> pd.DataFrame:
    """A tuned study's table, one row per tuning cell (analysis.tuning.best_trials):
    its grid values, the best value of each nuisance key, the search metric of the
    best search trial, the test metric of the best values as mean ± std over seeds
    with n (the best search trial and the confirm trials that repeat it), the
    baseline's likewise (with `search.baseline`), the search trials finished and how
    many of them diverged ('2/8')."""
    spec = study["spec"]
    search = spec["search"]
    best = best_trials(trials, spec)
    if best.empty:
        return pd.DataFrame()
    metric, test = search["metric"], test_metric(search["metric"])
    # grid values as the cells' labels show them (0.01, not 0.0100)
    out = pd.DataFrame({k: [_value_label(v) for v in best[k]] for k in spec.get("grid") or {}}, index=best.index)
    for key in search["space"]:
        out[key] = [_nuisance_text(v) for v in best[key]]
    values = pd.to_numeric(best[metric], errors="coerce")
    out[metric] = mean_std_column(list(values), [math.nan] * len(best), list(values.notna().astype(int)))
    _spread_columns(out, best, confirmed_runs(trials, spec, best), test, test, "n")
    fixed = baseline_label(spec)
    if fixed:
        _spread_columns(out, best, baseline_runs(trials), test, f"{test} ({fixed})", f"n ({fixed})")
    out["search trials"] = list(best["n_search"])
    out["diverged"] = [f"{d}/{n}" for d, n in zip(best["n_diverged"], best["n_search"])]
    return out


def _nuisance_text(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"  # no search trial of the cell ran its whole budget (yet)
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _spread_columns(out: pd.DataFrame, best: pd.DataFrame, runs: pd.DataFrame, metric: str, name: str,
                    n_name: str) -> None:
    """Add `name` (mean ± std of final_`metric` over a cell's `runs`) and `n_name`."""
    column = f"final_{metric}"
    if runs.empty:  # nothing finished yet: the column says so
        out[name], out[n_name] = "n/a", 0
        return
    if column not in runs:  # a family without this metric
        return
    grouped = pd.to_numeric(runs[column], errors="coerce").groupby(runs["tuning_cell"])
    cells = list(best["tuning_cell"])
    means, stds = grouped.mean().reindex(cells), grouped.std().reindex(cells)
    counts = grouped.count().reindex(cells).fillna(0).astype(int)
    out[name] = mean_std_column(list(means), list(stds), list(counts))
    out[n_name] = list(counts)


def _tables(trials: pd.DataFrame, study: dict) -> list[tuple[str, pd.DataFrame]]:
    """(heading, table) pairs for the report: a tuned study's best values per cell
    (and, for a search without grid axes, its trials ranked), else the final metrics."""
    if not len(trials):
        return []
    spec = study["spec"]
    if not is_tuned(spec):
        return [("Final metrics", summary_table(trials, study))]
    keys = ", ".join(spec["search"]["space"])
    tables = [(f"Best {keys} per tuning cell (chosen on {spec['search']['metric']})", tuned_table(trials, study))]
    if not spec.get("grid"):  # one cell: its few trials, ranked, as a search's table always showed
        tables.append((f"Search trials, best {spec['search']['metric']} first", summary_table(trials, study)))
    return [(heading, table) for heading, table in tables if not table.empty]


def _tuning_line(spec: dict) -> str:
    """One line saying how a tuned study chose its nuisance values."""
    search, seeds = spec["search"], list(spec.get("seeds") or [0])
    grid = list(spec.get("grid") or {})
    where = f" in each {' x '.join(grid)} cell" if grid else ""
    best = "highest" if search.get("mode", "max") == "max" else "lowest"
    line = (f"  tuning: {', '.join(search['space'])} searched{where} ({search['num_samples']} trials on seed "
            f"{seeds[0]}, chosen by the {best} {search['metric']})")
    if len(seeds) > 1:
        line += f"; the best re-run on seed{'s' if len(seeds) > 2 else ''} {', '.join(map(str, seeds[1:]))}"
    if baseline_label(spec):
        line += f"; baseline: {baseline_label(spec)} on every seed"
    return line


def draw_figure(fig_spec: dict, history: pd.DataFrame, trials: pd.DataFrame, path: Path,
                spec: dict | None = None) -> Path | None:
    """Draw one figure as the PNG `path` (None: nothing to draw); a kind that takes the
    study's spec (analysis.figures.wants_spec) gets `spec`."""
    kinds = figure_kinds()
    if fig_spec["kind"] not in kinds:  # a plugin's kind, and the plugin file is gone
        raise UserError(f"figure kind {fig_spec['kind']!r} is not registered: the plugin that adds it "
                        f"(see study.json's plugins) is missing")
    function = kinds[fig_spec["kind"]]
    extra = {"spec": spec} if wants_spec(function) else {}
    return function(history, trials, fig_spec, path, **extra)


def write_report(folder: Path) -> str:
    """Write history.parquet, trials.parquet and report/ (PNGs + index.html) for a
    study folder; returns a short text summary for the terminal. A tuned study's
    summary has its best values per tuning cell (`tuned_table`) and, last before the
    report's path, one '  boundary: ' line per best value at an edge of its range."""
    folder = Path(folder)
    study = require_record(folder)
    load_recorded_plugins(study)
    # Only the current spec's cells: trials of an earlier version of the spec (another
    # fixed value, a removed grid value) stay on disk but never mix into the figures.
    history, trials, steps = collect_tables(folder, study.get("cell_ids"))
    report_dir = folder / REPORT_DIR
    report_dir.mkdir(exist_ok=True)
    _write_parquet(history, folder / HISTORY_FILE)
    _write_parquet(trials, folder / TRIALS_FILE)
    if not steps.empty:  # per-step records (engine option log_every_steps); figure kind `steps` reads them
        _write_parquet(steps, folder / STEPS_FILE)

    expected = expected_trials(study)
    counts = trials["status"].value_counts().to_dict() if len(trials) else {}
    missing = max(0, expected - len(trials)) + counts.get("incomplete", 0)
    spec = study["spec"]
    figures = []
    for i, fig_spec in enumerate(spec.get("figures") or default_figures(study)):
        path = draw_figure(fig_spec, history, trials, report_dir / figure_name(i, fig_spec), spec)
        if path is not None:
            figures.append((path.name, fig_spec))
    tables = _tables(trials, study)
    unfinished = unfinished_trials(trials, study)
    # a best value at an edge of its range: said once, at the end of the summary
    boundary = boundary_lines(best_trials(trials, spec), spec) if is_tuned(spec) and len(trials) else []
    _write_index(report_dir, study, trials, counts, missing, figures, tables, unfinished, boundary)

    status = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no trials"
    lines = [f"{study['study']}: {len(trials)} of {expected} trials reported ({status})"]
    if missing:
        lines.append(f"  {missing} trial(s) not finished yet; the figures show the finished ones")
    if unfinished:
        lines.append(f"  missing or unfinished: {_listed(unfinished)}")
    if counts.get("diverged"):
        per_cell = " (the table counts a cell's diverged search trials)" if is_tuned(spec) else ""
        lines.append(f"  {counts['diverged']} diverged trial(s) are left out of means and figures{per_cell}")
    if is_tuned(spec):
        lines.append(_tuning_line(spec))
    for heading, table in tables:
        lines += ([f"{heading}:"] if is_tuned(spec) else []) + [table.to_string(index=False)]
    lines += [f"  boundary: {line}" for line in boundary]
    lines.append(f"report: {report_dir / 'index.html'}")
    return "\n".join(lines)


def _write_index(report_dir: Path, study: dict, trials: pd.DataFrame, counts: dict, missing: int,
                 figures: list, tables: list[tuple[str, pd.DataFrame]], unfinished: list[str] = (),
                 boundary: list[str] = ()) -> None:
    spec, prov = study["spec"], study["provenance"]
    esc = html.escape
    notes = []
    if missing:
        notes.append(f"{missing} trial(s) missing or unfinished; figures show the finished ones.")
    if unfinished:
        notes.append(f"Missing or unfinished: {esc(_listed(unfinished))}.")
    if counts.get("diverged"):
        notes.append(f"{counts['diverged']} trial(s) diverged (non-finite loss) and are excluded from means and figures.")
    if counts.get("error"):
        notes.append(f"{counts['error']} trial(s) failed; their tracebacks are in tune/&lt;trial&gt;/error.txt.")
    notes += [f"Boundary: {esc(line)}." for line in boundary]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{esc(study['study'])}</title>",
        "<style>body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
        "img{max-width:100%;border:1px solid #ddd}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}.note{color:#a40}</style></head><body>",
        f"<h1>{esc(study['study'])}</h1><p>{esc(spec.get('description', ''))}</p>",
        f"<p>Trials: {esc(', '.join(f'{n} {s}' for s, n in sorted(counts.items())) or 'none')}.</p>",
        *[f"<p class='note'>{n}</p>" for n in notes],
    ]
    for name, fig_spec in figures:
        ys = ", ".join(label(y) for y in fig_spec.get("y") or [])
        heading = fig_spec.get("title") or (f"{ys} vs {label(fig_spec.get('x') or 'epoch')}" if ys else fig_spec["kind"])
        caption = ""
        if fig_spec["kind"] in ("curves", "final"):
            by = f"; lines: {label(fig_spec['hue'])}" if fig_spec.get("hue") else ""
            by += f"; panels: {label(fig_spec['col'])}" if fig_spec.get("col") else ""
            caption = f"<p>Mean over seeds, 95% CI band{esc(by)}.</p>"
        elif fig_spec["kind"] in _TUNED_KINDS and spec.get("search"):
            heading, caption = _tuned_caption(fig_spec, spec)
        parts.append(f"<h2>{esc(heading)}</h2>{caption}<img src='{esc(name)}' alt='{esc(heading)}'>")
    for heading, table in tables:
        parts.append(f"<h2>{esc(heading)}</h2>" + table.to_html(index=False, border=0))
    parts.append("<h2>Provenance</h2><pre>" + esc(json.dumps(
        {"spec_file": study.get("source"), "profile": study.get("profile"), **prov}, indent=2)) + "</pre>")
    parts.append("</body></html>")
    tmp = report_dir / "index.html.tmp"
    tmp.write_text("\n".join(parts))
    os.replace(tmp, report_dir / "index.html")


def _tuned_caption(fig_spec: dict, spec: dict) -> tuple[str, str]:
    """(heading, caption paragraph) of an isolation or axis figure."""
    search = spec["search"]
    keys, metric = ", ".join(search["space"]), search["metric"]
    if fig_spec["kind"] == "axis":
        return (fig_spec.get("title") or f"{label(metric)} against {keys}, every search trial",
                f"<p>One point per search trial, a panel per tuning cell; star: the cell's best; dashed: the range's "
                f"edges, shaded: the outer {EDGE_FRACTION:.0%} where the boundary check warns; hollow: stopped "
                f"early by the scheduler; x on the bottom edge: diverged.</p>")
    x = fig_spec.get("x") or next(iter(spec.get("grid") or {}), "")
    fixed = baseline_label(spec)
    return (fig_spec.get("title") or f"{label(x)} with {keys} re-tuned per cell",
            f"<p>Left: each cell's best {html.escape(label(metric))} (its search, on the first seed). Right: the "
            f"best values re-run on every seed, mean and 95% CI band"
            + (html.escape(f"; dashed: {fixed} on every seed") if fixed else "") + ".</p>")

