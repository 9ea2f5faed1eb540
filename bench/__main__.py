"""python -m bench [--only NAME ...] [--reps N] [--quick] [--out PATH] [--doc PATH]

Runs the benchmarks (all of BENCHMARKS, or --only those), prints a line per benchmark
and a final table, and (full runs) writes bench/results.json and the Performance table
of docs/performance.md. A --quick run writes only what --out / --doc ask for.
Exit status: 0 when every benchmark ran (met targets or not), 1 when one failed,
2 for an unknown name.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
DEFAULT_OUT = BENCH_DIR / "results.json"
DEFAULT_DOC = REPO / "docs" / "performance.md"
DEFAULT_REPS = 5
QUICK_REPS = 2
# Share of the machine's CPU time used by other processes above which a benchmark's
# timings are flagged as disturbed (the development machines are shared).
BUSY_SHARE = 0.05


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[1])
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these benchmarks (or experiments)")
    parser.add_argument("--reps", type=int, default=None,
                        help=f"repetitions after the warm-up (default {DEFAULT_REPS}, {QUICK_REPS} with --quick)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, to check the plumbing; writes nothing by default")
    parser.add_argument("--out", type=Path, default=None, help="results file (default bench/results.json; none with --quick)")
    # --readme: the option's name when the table lived in the README.
    parser.add_argument("--doc", "--readme", dest="doc", type=Path, default=None,
                        help="Markdown page whose Performance block to rewrite "
                             "(default docs/performance.md; none with --quick)")
    return parser


def run_benchmarks(names: list[str], registry: dict, reps: int, quick: bool) -> tuple[dict, list[str]]:
    """{name: entry} for the benchmarks that ran, and the names of those that failed."""
    from bench.machine import OtherLoad
    from bench.readme import format_value
    from sweeps.provenance import git_commit

    entries, failed = {}, []
    for i, name in enumerate(names, 1):
        print(f"[{i}/{len(names)}] {name} ...", flush=True)
        started = time.perf_counter()
        try:
            with OtherLoad() as load:
                figures = registry[name](reps, quick)
        except Exception:
            traceback.print_exc()
            print(f"[{i}/{len(names)}] {name} FAILED after {time.perf_counter() - started:.0f} s", flush=True)
            failed.append(name)
            continue
        seconds = time.perf_counter() - started
        entries[name] = {"seconds": round(seconds, 1), "reps": reps, "quick": quick, "git_commit": git_commit(),
                         "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                         "other_load": None if load.share is None else round(load.share, 3),
                         "figures": [f.to_dict() for f in figures]}
        summary = ", ".join(f"{f.name} {format_value(f.value, f.unit)}"
                            + ("" if f.met is None else f" ({'met' if f.met else 'NOT met'})") for f in figures)
        print(f"[{i}/{len(names)}] {name} done in {seconds:.0f} s: {summary}", flush=True)
        if load.share is not None and load.share > BUSY_SHARE:
            print(f"warning: other processes used {load.share:.0%} of the CPUs during {name}; "
                  f"its timings are disturbed: run it again on a quiet machine", flush=True)
    return entries, failed


def merge_results(path: Path | None, machine: dict, entries: dict, total_s: float, command: str,
                  order: list[str] = ()) -> dict:
    """The results to write: the previous file's benchmarks (if any), with the ones
    that ran now replaced (each entry keeps its own date and commit), in `order`
    (names not in it last)."""
    previous = {}
    if path is not None and path.exists():
        try:
            previous = json.loads(path.read_text()).get("benchmarks", {})
        except (ValueError, AttributeError):
            print(f"warning: {path} is not a results file; starting a new one")
    merged = {**previous, **entries}
    rank = {name: i for i, name in enumerate(order)}
    ordered = sorted(merged, key=lambda name: rank.get(name, len(rank)))
    return {"command": command, "machine": machine, "total_s": round(total_s, 1),
            "benchmarks": {name: merged[name] for name in ordered}}


def print_table(entries: dict) -> None:
    from bench.readme import format_met, format_target, format_value

    rows = [("benchmark", "figure", "value", "target", "met")]
    for name, entry in entries.items():
        for f in entry["figures"]:
            rows.append((name, f["name"], format_value(f["value"], f["unit"]), format_target(f),
                         format_met(f["met"]).strip("*")))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    for entry in entries.values():
        for f in entry["figures"]:
            if f["notes"]:
                print(f"- {f['name']}: {f['notes']}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from bench import BENCHMARKS, EXPERIMENTS

    known = {**BENCHMARKS, **EXPERIMENTS}
    names = args.only or list(BENCHMARKS)
    unknown = [n for n in names if n not in known]
    if unknown:
        print(f"error: unknown benchmark {', '.join(unknown)}; known: {', '.join(known)}", file=sys.stderr)
        return 2
    reps = args.reps or (QUICK_REPS if args.quick else DEFAULT_REPS)
    if reps < 1:
        print("error: --reps must be at least 1", file=sys.stderr)
        return 2
    out = args.out or (None if args.quick else DEFAULT_OUT)
    doc = args.doc or (None if args.quick else DEFAULT_DOC)

    from bench.machine import machine_info

    machine = machine_info()
    print(f"{machine['cpu_model']}, {machine['cores']} cores, torch {machine['torch']} with "
          f"{machine['torch_threads']} threads, Ray {machine['ray']}; reps {reps}{' (quick)' if args.quick else ''}",
          flush=True)
    started = time.perf_counter()
    entries, failed = run_benchmarks(names, known, reps, args.quick)
    total = time.perf_counter() - started
    print(f"\n{len(entries)} benchmark(s) in {total / 60:.1f} min")
    print_table(entries)
    if entries and (out or doc):
        command = "python -m bench " + " ".join(argv if argv is not None else sys.argv[1:])
        results = merge_results(out, machine, entries, total, command.strip(), order=list(known))
        if out:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(results, indent=2) + "\n")
            print(f"results: {out}")
        if doc:
            from bench.readme import render, update_doc

            if update_doc(doc, render(results)):
                print(f"Performance table: {doc}")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
