"""python -m analysis report results/<study>: tables, figures and index page."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis")
    sub = parser.add_subparsers(dest="command", required=True)
    report = sub.add_parser("report", help="write history.parquet, trials.parquet and report/ for a study folder")
    report.add_argument("study", type=Path, help="a study folder, e.g. results/wd-quick")
    args = parser.parse_args(argv)
    from analysis.report import write_report

    try:
        print(write_report(args.study))
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
