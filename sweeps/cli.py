"""gensweep's command line: `gensweep ...` (the console script), or `python -m sweeps ...`.

    gensweep run SPEC [--profile quick|smoke] [--storage DIR|URI] [--fresh] [--pack K] [--address ADDR]
                 [--accept-plugin-change]
    gensweep validate SPEC [SPEC ...] [--profile quick|smoke]
    gensweep status SPEC [--profile quick|smoke] [--storage DIR]   # done / running / missing / failed
    gensweep report results/<study>                                # rebuild tables, figures, index page
    gensweep submit SPEC [--profile ...] [--address http://HEAD:8265] [--storage DIR|URI] [--no-wait]
    gensweep jobs | logs JOB [--follow] | stop JOB     [--address http://HEAD:8265]
    gensweep cluster up [--workers N] [--cpus C] [--gpus G] | status | down

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

# The profile names (sweeps/schema.py's PROFILES); kept here so that --help and a
# mistyped option answer without importing pydantic.
PROFILES = ("quick", "smoke", "cpu")

EXIT_BAD_INPUT = 2


def build_parser(prog: str = "gensweep") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Run declarative Ray Tune sweeps.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = _study_command(sub, "run", "run a study (resumes it if its results folder holds an unfinished run)",
                         fresh_help="start a new study beside an existing one instead of resuming")
    run.add_argument("--address", default=None, help="Ray cluster to join (default: start Ray in this process)")
    run.add_argument("--progress-every", type=float, default=20.0, metavar="SECONDS",
                     help="seconds between status tables (default 20)")
    submit = _study_command(sub, "submit", "run a study on a Ray cluster as a Ray job",
                            fresh_help="start a new study beside an existing one")
    submit.add_argument("--no-wait", action="store_true", help="print the job id and return instead of following the logs")
    jobs_help = "the cluster's job server (default: $RAY_ADDRESS, else http://127.0.0.1:8265)"
    submit.add_argument("--address", default=None, help=jobs_help)
    jobs = sub.add_parser("jobs", help="list the cluster's jobs")
    jobs.add_argument("--address", default=None, help=jobs_help)
    logs = sub.add_parser("logs", help="print a job's logs")
    logs.add_argument("job")
    logs.add_argument("--follow", action="store_true", help="keep printing until the job ends")
    logs.add_argument("--address", default=None, help=jobs_help)
    stop = sub.add_parser("stop", help="stop a running job")
    stop.add_argument("job")
    stop.add_argument("--address", default=None, help=jobs_help)
    _study_command(sub, "status", "which cells of a spec are done, running, missing or failed")
    cluster = sub.add_parser("cluster", help="start or stop a local multi-node Ray cluster (head + workers)")
    cluster.add_argument("action", choices=["up", "status", "down"])
    cluster.add_argument("--workers", type=int, default=1, help="worker nodes besides the head (default 1)")
    cluster.add_argument("--cpus", type=float, default=1, help="CPUs each node offers (default 1)")
    cluster.add_argument("--gpus", type=int, default=0, help="GPUs each node offers (default 0)")
    cluster.add_argument("--state-dir", type=Path, default=None, help="where the cluster's PIDs and logs are kept")
    report = sub.add_parser("report", help="write history.parquet, trials.parquet and report/ for a study folder")
    report.add_argument("study", help="a study folder, e.g. results/wd-quick, or its URI (s3://..., gs://...)")
    estimate = sub.add_parser("estimate", help="predict a study's trials, FLOPs, memory and wall time (CPU and GPU)")
    estimate.add_argument("spec", type=Path)
    estimate.add_argument("--profile", choices=list(PROFILES), help="apply a profile of the spec (default: the full study)")
    _pack_argument(estimate)
    estimate.add_argument("--cpus", type=int, default=None, help="CPUs to plan for (default: this machine's)")
    estimate.add_argument("--gpu", default="h100", choices=["h100", "h200", "a100", "l4", "a10"],
                          help="the GPU to plan for (default h100)")
    validate = sub.add_parser("validate", help="check specs without running anything")
    validate.add_argument("specs", type=Path, nargs="+")
    validate.add_argument("--profile", choices=list(PROFILES))
    return parser


def _study_command(sub, name: str, help: str, fresh_help: str | None = None) -> argparse.ArgumentParser:
    """A subcommand on one spec: SPEC, --profile and --storage; with `fresh_help`,
    also --fresh and --pack (the commands that run it)."""
    parser = sub.add_parser(name, help=help)
    parser.add_argument("spec", type=Path)
    parser.add_argument("--profile", choices=list(PROFILES), help="apply a profile of the spec (default: the full study)")
    _storage_arguments(parser)
    if fresh_help:
        parser.add_argument("--fresh", action="store_true", help=fresh_help)
        parser.add_argument("--accept-plugin-change", action="store_true",
                            help="resume although a plugin file changed since the study's cells ran "
                                 "(the change is recorded in study.json); default: refuse")
        _pack_argument(parser)
    return parser


def _storage_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--storage", "--results", dest="storage", default=None,
                        help="parent folder of study folders: a path (shared by all nodes on a cluster) or a URI "
                             "(s3://..., gs://...); default: the spec's `storage`, else $GENSWEEP_RESULTS, else results/")


def _pack_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pack", type=int, default=None, metavar="K",
                        help="train up to K grid cells per trial, vectorized (overrides the spec's `pack`; 1: unpacked)")


def storage_of(args: argparse.Namespace, study) -> str | None:
    """--storage, else the spec's `storage`, else $GENSWEEP_RESULTS; None: results/."""
    return args.storage or study.spec.storage or os.environ.get("GENSWEEP_RESULTS")


def load(path: Path, profile: str | None, pack: int | None = None):
    """A spec file as a validated Study, its trials' memory checked against this
    machine's, its figures checked by analysis (which owns the figure kinds)."""
    from sweeps.feasibility import check_memory
    from sweeps.schema import load_study

    study = load_study(path, profile, pack)
    check_memory(study)  # a trial too big for this machine's memory (or its GPU share), before anything runs
    from analysis.report import check_figures  # after: a bad spec is refused without importing seaborn (1.5 s)

    check_figures([f.model_dump() for f in study.spec.figures], str(path), study.spec.model_dump())
    return study


def main(argv: list[str] | None = None, prog: str = "gensweep") -> int:
    args = build_parser(prog).parse_args(argv)
    if args.command == "run" and args.address is None:
        # Ray's own default for the local cluster a run starts, stated before Ray is
        # imported (it reads this once): token auth stays on, and Ray does not warn
        # about choosing it at the start of every run.
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    try:
        if args.command == "validate":
            for path in args.specs:
                study = load(path, args.profile)
                if study.spec.search:
                    from sweeps.runner import tuned_summary
                    from trainables.contract import expected_trials

                    total = expected_trials({"spec": study.spec.model_dump(), "n_cells": len(study.cells)})
                    print(f"{path}: ok ({study.study_name}: {tuned_summary(study, total)})")
                else:
                    print(f"{path}: ok ({study.study_name}: {len(study.cells)} grid cells x seeds)")
            return 0
        if args.command == "cluster":
            return _cluster(args)
        if args.command == "report":
            from analysis.__main__ import report

            return report(args.study)
        if args.command in ("jobs", "logs", "stop"):
            from sweeps import submit as jobs

            if args.command == "jobs":
                return jobs.list_jobs(args.address)
            if args.command == "logs":
                return jobs.show_logs(args.address, args.job, args.follow)
            return jobs.stop(args.address, args.job)
        study = load(args.spec, args.profile, getattr(args, "pack", None))
        if args.command == "estimate":
            return _estimate(study, args)
        if args.command == "status":
            from sweeps.status import print_status

            return print_status(study, storage_of(args, study) or "results")
        if args.command == "submit":
            from sweeps.submit import submit

            return submit(study, args.spec, address=args.address, storage=storage_of(args, study),
                          fresh=args.fresh, wait=not args.no_wait, pack=args.pack,
                          accept_plugin_change=args.accept_plugin_change)
        from analysis.report import write_report
        from sweeps.runner import run_study

        _announce(study)
        outcome = run_study(study, storage_of(args, study) or "results", address=args.address, fresh=args.fresh,
                            progress_every=args.progress_every, report=write_report,
                            accept_plugin_change=args.accept_plugin_change)
        return outcome.exit_code
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:  # before or after Tune's own handling (data loading, Ray start-up, report)
        print("\ninterrupted; run the same command again to resume", file=sys.stderr)
        return 130


def _estimate(study, args: argparse.Namespace) -> int:
    from sweeps.estimate import estimate, warning

    est = estimate(study, cpus=args.cpus, gpu=args.gpu)
    if est is None:
        print(f"{study.study_name}: no cost model for family {study.spec.family!r}")
        return 0
    print("\n".join(est.lines()))
    if (line := warning(est)) is not None:
        print(line)
    return 0


def _announce(study) -> None:
    """The estimate's one line (and a warning past an hour) before a run starts. An
    estimate that fails says so and the run goes on: it is advice, not a check."""
    from sweeps.estimate import estimate, warning

    try:
        est = estimate(study)
    except Exception as exc:  # noqa: BLE001 - e.g. a plugin model the calibration cannot build on random data
        print(f"estimate: not available ({type(exc).__name__}: {exc})", flush=True)
        return
    if est is not None:
        print(est.line(), flush=True)
        if (line := warning(est)) is not None:
            print(line, flush=True)


def _cluster(args: argparse.Namespace) -> int:
    from sweeps import cluster

    state_dir = args.state_dir or cluster.DEFAULT_STATE_DIR
    if args.action == "up":
        started = cluster.up(args.workers, args.cpus, args.gpus, state_dir)
        print(f"Ray cluster up: head + {args.workers} worker(s), {args.cpus:g} CPU each; "
              f"job server {started.job_address} (GCS {started.gcs_address})")
        print(f"  submit with: make submit SPEC=sweeps/wd.yaml PROFILE=smoke RAY_ADDRESS={started.job_address}")
        print("  stop with:   make cluster-down")
        return 0
    if args.action == "down":
        stopped = cluster.down(state_dir)
        print(f"stopped {', '.join(stopped)}" if stopped else f"no cluster recorded in {state_dir}")
        return 0
    running = cluster.Cluster.load(state_dir)
    if running is None:
        print(f"no cluster recorded in {state_dir}")
        return 1
    alive = running.alive()
    print(f"job server {running.job_address}, GCS {running.gcs_address}: "
          + ", ".join(f"{name} {'up' if up else 'DOWN'}" for name, up in alive.items()))
    return 0 if all(alive.values()) else 1
