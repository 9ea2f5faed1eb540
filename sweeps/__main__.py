"""gensweep's command line.

    python -m sweeps run SPEC [--profile quick|smoke] [--results DIR] [--fresh] [--address ADDR]
    python -m sweeps validate SPEC [SPEC ...] [--profile quick|smoke]

Exit status: 0 when every trial ended (ok or diverged), 1 when some failed after
their retries, 130 when the study was interrupted (run it again to resume), and 2
for bad input (spec, data, results folder), which is stated in one line.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from trainables.errors import UserError

EXIT_BAD_INPUT = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sweeps", description="Run declarative Ray Tune sweeps.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a study (resumes it if its results folder holds an unfinished run)")
    run.add_argument("spec", type=Path)
    run.add_argument("--profile", choices=["quick", "smoke"], help="apply a profile of the spec (default: the full study)")
    run.add_argument("--results", type=Path, default=Path(os.environ.get("GENSWEEP_RESULTS", "results")),
                     help="parent folder of study folders (default: results/)")
    run.add_argument("--fresh", action="store_true", help="start a new study beside an existing one instead of resuming")
    run.add_argument("--address", default=None, help="Ray cluster to join (default: start Ray in this process)")
    run.add_argument("--progress-every", type=float, default=20.0, metavar="SECONDS",
                     help="seconds between status tables (default 20)")
    validate = sub.add_parser("validate", help="check specs without running anything")
    validate.add_argument("specs", type=Path, nargs="+")
    validate.add_argument("--profile", choices=["quick", "smoke"])
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from sweeps.schema import load_study

    try:
        if args.command == "validate":
            for path in args.specs:
                study = load_study(path, args.profile)
                print(f"{path}: ok ({study.study_name}: {len(study.cells)} grid cells x seeds"
                      + (f", search of {study.spec.search.num_samples} trials" if study.spec.search else "") + ")")
            return 0
        study = load_study(args.spec, args.profile)
        from sweeps.launcher import run_study

        outcome = run_study(study, args.results, address=args.address, fresh=args.fresh,
                            progress_every=args.progress_every)
        return outcome.exit_code
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
