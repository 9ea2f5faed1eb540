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
from analysis.figures import KINDS, default_figures, figure_name, label
from trainables.errors import UserError
from trainables.families import suggest
from trainables.contract import HISTORY_FILE, REPORT_DIR, STEPS_FILE, TRIALS_FILE, expected_trials, require_record


def figure_kinds() -> dict:
    """Every figure kind, the study modules' included."""
    import analysis.studies  # noqa: F401  (registers their kinds)

    return KINDS


def check_figures(figures: list[dict], source: str) -> None:
    """Refuse, in one line naming the spec file and key, a figure of an unknown kind
    or a built-in kind without what it needs (`figures` as in the spec: dicts)."""
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


def _write_parquet(frame: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    frame.to_parquet(tmp, index=False)
    os.replace(tmp, path)  # atomic


def _varying(study: dict) -> list[str]:
    spec = study["spec"]
    keys = list(spec.get("grid") or {})
    if spec.get("search"):
        keys += list(spec["search"]["space"])
    return keys


def _value_label(value) -> str:
    """A grid value as the trials table holds it: a variant by its name, a list joined
    by '-' (as analysis.collect does), a number in short form."""
    if isinstance(value, dict):
        return str(value.get("name") or ",".join(f"{k}={v}" for k, v in value.items()))
    if isinstance(value, list):
        return "-".join(map(str, value))
    return f"{value:g}" if isinstance(value, float) else str(value)


def unfinished_trials(trials: pd.DataFrame, study: dict) -> list[str]:
    """The grid cells (x seeds) that have no finished trial, named by their varying
    hyperparameters: 'weight_decay=0.01, seed=1 (unfinished, trial <id>)' or
    '... (not started)'; for a search, the sampled trials that did not finish and the
    samples not drawn yet. Finished: ok, diverged, or error (out of retries)."""
    spec = study["spec"]
    finished = {"ok", "diverged", "error"}
    rows = trials.to_dict("records") if "status" in trials else []
    if spec.get("search"):
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


def summary_table(trials: pd.DataFrame, study: dict) -> pd.DataFrame:
    """Final metrics of ok trials as mean ± std over seeds, with n, per grid cell
    (the value alone where one trial was averaged); a search: one row per trial. Each
    metric column has one number format (`column_format`)."""
    ok = trials[trials["status"] == "ok"]
    keys = [k for k in _varying(study) if k in ok]
    from trainables.families import get_family

    wanted = get_family(study["spec"]["family"]).summary_metrics or (
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
        out[m.removeprefix("final_")] = mean_std_column(list(grouped[m].mean()), list(grouped[m].std()),
                                                        list(grouped[m].count()))
    out = out.reset_index()
    # widths like "128-96" sort as text; order by size instead
    return out.sort_values("params", kind="stable") if "params" in out else out


def write_report(folder: Path) -> str:
    """Write history.parquet, trials.parquet and report/ (PNGs + index.html) for a
    study folder; returns a short text summary for the terminal."""
    folder = Path(folder)
    study = require_record(folder)
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
    figures = []
    for i, fig_spec in enumerate(study["spec"].get("figures") or default_figures(study)):
        path = figure_kinds()[fig_spec["kind"]](history, trials, fig_spec, report_dir / figure_name(i, fig_spec))
        if path is not None:
            figures.append((path.name, fig_spec))
    table = summary_table(trials, study) if len(trials) else pd.DataFrame()
    unfinished = unfinished_trials(trials, study)
    _write_index(report_dir, study, trials, counts, missing, figures, table, unfinished)

    status = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no trials"
    lines = [f"{study['study']}: {len(trials)} of {expected} trials reported ({status})"]
    if missing:
        lines.append(f"  {missing} trial(s) not finished yet; the figures show the finished ones")
    if unfinished:
        lines.append(f"  missing or unfinished: {_listed(unfinished)}")
    if counts.get("diverged"):
        lines.append(f"  {counts['diverged']} diverged trial(s) are left out of means and figures")
    if not table.empty:
        lines.append(table.to_string(index=False))
    lines.append(f"report: {report_dir / 'index.html'}")
    return "\n".join(lines)


def _write_index(report_dir: Path, study: dict, trials: pd.DataFrame, counts: dict, missing: int,
                 figures: list, table: pd.DataFrame, unfinished: list[str] = ()) -> None:
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
        parts.append(f"<h2>{esc(heading)}</h2>{caption}<img src='{esc(name)}' alt='{esc(heading)}'>")
    if not table.empty:
        parts.append("<h2>Final metrics</h2>" + table.to_html(index=False, border=0))
    parts.append("<h2>Provenance</h2><pre>" + esc(json.dumps(
        {"spec_file": study.get("source"), "profile": study.get("profile"), **prov}, indent=2)) + "</pre>")
    parts.append("</body></html>")
    tmp = report_dir / "index.html.tmp"
    tmp.write_text("\n".join(parts))
    os.replace(tmp, report_dir / "index.html")
