"""Benchmark 3: sweep overhead. The 16-trial grid of bench/raystudy.py on 2 CPUs (two
trials at a time): study wall time / ideal, where ideal = sum of the trials' own
compute seconds (`time_s` in trials.parquet: training + evaluation measured inside
each trial) / 2. Ray's start-up is timed apart (the benchmark starts Ray first;
`run_study` reuses it). The notes break the excess down: time to the first trial's
start (data loading, Tune set-up), each trial's life as Tune sees it minus its
compute (process start, imports, data fetch, checkpoints), and the report.

    python -m bench --only overhead
    python -m bench --only overhead_new_process      # the same with a new worker process per trial
"""

from __future__ import annotations

from bench import raystudy
from bench.record import Figure, median

TARGET = 1.15


def _ratios(session: raystudy.Session) -> list[float]:
    return [run.wall_s / (sum(run.trial_compute_s) / session.concurrency) for run in session.runs]


def _breakdown(session: raystudy.Session) -> str:
    """Where the core-seconds of a run (wall x concurrency) went, medians over runs."""
    runs, k = session.runs, session.concurrency
    n = len(runs[0].trial_compute_s)
    slots = median([r.wall_s * k for r in runs])
    compute = median([sum(r.trial_compute_s) for r in runs])
    in_trial = median([sum(r.trial_lifetime_s) - sum(r.trial_compute_s) for r in runs])
    outside = median([r.wall_s * k - sum(r.trial_lifetime_s) for r in runs])
    support = median([r.support_cpu_s for r in runs])
    idle, idle_without_dynamo = session.idle, session.idle_without_dynamo
    dynamo_s = idle.start_s - idle_without_dynamo.start_s
    return (f"median wall {median([r.wall_s for r in runs]):.1f} s vs ideal {compute / k:.1f} s. "
            f"Core-seconds (wall x {k}) {slots:.0f} = trials' compute {compute:.0f} ({compute / slots:.0%}) "
            f"+ inside trials but not computing {in_trial:.0f} ({in_trial / n:.2f} s per trial, from Tune's trial "
            f"start to its end minus time_s: data fetch, model build, importing torch._dynamo, which torch.optim "
            f"does at a process's first optimizer ({dynamo_s:.1f} s in an idle worker), checkpoints, reports) "
            f"+ outside trials {outside:.0f} ({outside / n:.2f} s per trial: starting worker processes and "
            f"their imports (a new Ray worker importing torch, Tune and gensweep took "
            f"{idle_without_dynamo.start_s:.1f} s), Tune's scheduling, the "
            f"{median([r.first_start_s for r in runs]):.1f} s before the first trial started (data, Tune set-up) "
            f"and the {median([r.report_s for r in runs]):.1f} s report at the end). The driver and Ray's own "
            f"processes used {support:.0f} core-seconds ({support / slots:.0%}) beside the trials")


def overhead_figure(session: raystudy.Session, reps: int, name: str, setting: str = "") -> Figure:
    what = (f"{len(session.runs[0].trial_compute_s)} trials, 1 CPU each, {session.num_cpus} at a time{setting}; "
            f"per-trial compute = trials.parquet time_s; {raystudy.describe_reps(len(session.runs), reps)}; ")
    return Figure.of(name, _ratios(session), unit="x", target=TARGET, higher_is_better=False,
                     notes=what + _breakdown(session))


def run(reps: int, quick: bool) -> list[Figure]:
    session = raystudy.session(2, raystudy.ray_reps(reps, raystudy.CONCURRENT_REPS), quick)
    ray_start = Figure.of("ray_start_s", [session.ray_start_s], unit="s",
                          notes="ray.init(num_cpus=2) in the benchmark process, before the study (not in its wall time)")
    return [overhead_figure(session, reps, "sweep_overhead_ratio"), ray_start]


def run_without_reuse(reps: int, quick: bool) -> list[Figure]:
    """An experiment: the same study with a new worker process per trial
    (tune.TuneConfig(reuse_actors=False), Tune's default; sweeps/tuneconfig.py reuses them)."""
    overrides = (("reuse_actors", False),)
    session = raystudy.session(2, raystudy.ray_reps(reps, raystudy.CONCURRENT_REPS), quick, overrides)
    return [overhead_figure(session, reps, "sweep_overhead_ratio_new_process_per_trial", ", reuse_actors=False")]
