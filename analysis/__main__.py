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
    return parser


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
    return report(args.study)


if __name__ == "__main__":
    sys.exit(main())
