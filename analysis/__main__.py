"""python -m analysis report results/<study>: tables, figures and index page
(the same as `gensweep report results/<study>`).

The study folder may also be a storage URI (s3://bucket/results/wd): it is read into a
temporary copy, and the new tables and report are uploaded next to the results.
"""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m analysis")
    sub = parser.add_subparsers(dest="command", required=True)
    report = sub.add_parser("report", help="write history.parquet, trials.parquet and report/ for a study folder")
    report.add_argument("study", help="a study folder, e.g. results/wd-quick, or its URI (s3://..., gs://...)")
    summary = sub.add_parser("summary", help="final metrics per grid cell as mean ± 95%% CI over seeds (Markdown)")
    summary.add_argument("study", help="a study folder whose report was written (trials.parquet)")
    summary.add_argument("--metrics", default=None, help="comma-separated final metrics (default: the family's)")
    return parser


def summary(study: str, metrics: str | None = None) -> int:
    """Print a study's final metrics per cell as mean ± 95% CI over seeds, as a
    Markdown table (what docs/results.md quotes); 2 for a folder without results."""
    from pathlib import Path

    from analysis.collect import read_table
    from analysis.report import summary_table
    from trainables.contract import TRIALS_FILE, require_record
    from trainables.errors import UserError

    folder = Path(study)
    try:
        record = require_record(folder)
        if not (folder / TRIALS_FILE).is_file():
            raise UserError(f"{folder / TRIALS_FILE}: not written yet; run gensweep report {study} first")
        trials = read_table(folder / TRIALS_FILE)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    table = summary_table(trials, record, spread="ci95", metrics=metrics.split(",") if metrics else None)
    print(markdown(table))
    return 0


def markdown(table) -> str:
    """A DataFrame as a Markdown table (lists as a-b-c, like the report's labels)."""
    def text(v) -> str:
        return "-".join(map(str, v)) if isinstance(v, (list, tuple)) or hasattr(v, "tolist") else str(v)

    rows = [[text(v) for v in row] for row in table.itertuples(index=False)]
    head = [str(c) for c in table.columns]
    return "\n".join(["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)] +
                      ["| " + " | ".join(r) + " |" for r in rows])


def report(study: str) -> int:
    """Write a study folder's report and print its summary; 2 (and one line) for a
    folder that is not a study."""
    from analysis.report import write_report
    from trainables.errors import UserError
    from trainables.storage import local_copy

    try:
        with local_copy(study) as folder:
            summary = write_report(folder).replace(str(folder), str(study))  # the real place, not the copy
        print(summary)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "summary":
        return summary(args.study, args.metrics)
    return report(args.study)


if __name__ == "__main__":
    sys.exit(main())
