"""Benchmark 4: concurrency scaling. The 16-trial grid of bench/raystudy.py run one
trial at a time (Ray started with 1 CPU, 1 CPU per trial) and two at a time (2 CPUs):
throughput ratio = wall(one at a time) / wall(two at a time), each the median over
whole-study runs. Trials set torch's threads to their CPUs (trainables/trial.py); the
notes give the threads the trials recorded, and how much slower a trial's own
compute got when two shared the machine (memory bandwidth, caches: what no
scheduler can remove).

    python -m bench --only scaling
    python -m bench --only scaling_new_process       # both sides with a new worker process per trial
"""

from __future__ import annotations

from bench import raystudy
from bench.record import Figure, median

TARGET = 1.8


def scaling_figure(concurrent: raystudy.Session, sequential: raystudy.Session, reps: int, name: str,
                   setting: str = "") -> Figure:
    one_wall = median([r.wall_s for r in sequential.runs])
    two_wall = median([r.wall_s for r in concurrent.runs])
    pairs = [a.wall_s / b.wall_s for a, b in zip(sequential.runs, concurrent.runs)]
    threads = sorted({t for s in (concurrent, sequential) for r in s.runs for t in r.num_threads})
    compute_one = median([t for r in sequential.runs for t in r.trial_compute_s])
    compute_two = median([t for r in concurrent.runs for t in r.trial_compute_s])
    cells = len(concurrent.runs[0].trial_compute_s)
    support_one = median([r.support_cpu_s for r in sequential.runs])
    support_two = median([r.support_cpu_s for r in concurrent.runs])
    notes = (f"value = median wall one at a time ({one_wall:.1f} s, {raystudy.describe_reps(len(sequential.runs), reps)}) "
             f"/ median wall two at a time ({two_wall:.1f} s, {raystudy.describe_reps(len(concurrent.runs), reps)}); "
             f"reps = the ratios of runs paired in order; {cells} trials{setting}; torch threads per trial: "
             f"{', '.join(map(str, threads))}; median trial compute {compute_one:.2f} s alone vs "
             f"{compute_two:.2f} s two at a time ({compute_two / compute_one - 1:+.0%}); "
             f"the driver and Ray's own processes used {support_one:.0f} core-seconds one at a time, "
             f"{support_two:.0f} two at a time ({support_two / (two_wall * 2):.0%} of the 2 cores' time, which the "
             f"trials then lack); Ray start-up with 1 CPU {sequential.ray_start_s:.1f} s (not in the walls)")
    return Figure(name=name, value=one_wall / two_wall, unit="x", target=TARGET, reps=pairs, notes=notes)


def run(reps: int, quick: bool) -> list[Figure]:
    concurrent = raystudy.session(2, raystudy.ray_reps(reps, raystudy.CONCURRENT_REPS), quick)
    sequential = raystudy.session(1, raystudy.ray_reps(reps, raystudy.SEQUENTIAL_REPS), quick, measure_idle=False)
    return [scaling_figure(concurrent, sequential, reps, "scaling_throughput_ratio")]


def run_without_reuse(reps: int, quick: bool) -> list[Figure]:
    """An experiment: both sides with a new worker process per trial (reuse_actors=False)."""
    overrides = (("reuse_actors", False),)
    concurrent = raystudy.session(2, raystudy.ray_reps(reps, raystudy.CONCURRENT_REPS), quick, overrides)
    sequential = raystudy.session(1, raystudy.ray_reps(reps, raystudy.SEQUENTIAL_REPS), quick, overrides,
                                  measure_idle=False)
    return [scaling_figure(concurrent, sequential, reps, "scaling_throughput_ratio_new_process_per_trial",
                           ", reuse_actors=False")]
