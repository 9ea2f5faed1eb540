"""python -m analysis report results/<study>: tables, figures and index page.

The study folder may also be a storage URI (s3://bucket/results/wd): it is read into a
temporary copy, and the new tables and report are uploaded next to the results.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis")
    sub = parser.add_subparsers(dest="command", required=True)
    report = sub.add_parser("report", help="write history.parquet, trials.parquet and report/ for a study folder")
    report.add_argument("study", help="a study folder, e.g. results/wd-quick, or its URI (s3://..., gs://...)")
    args = parser.parse_args(argv)
    from analysis.report import write_report
    from sweeps.storage import local_copy
    from trainables.errors import UserError

    try:
        with local_copy(args.study) as folder:
            summary = write_report(folder).replace(str(folder), str(args.study))  # the real place, not the copy
        print(summary)
    except (FileNotFoundError, UserError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
