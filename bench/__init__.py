"""gensweep's benchmarks: the engine against the notebook baseline and the machine's
limit, and the sweep machinery's overhead, scaling and memory (issue 7).

    python -m bench                       # all (make bench); writes bench/results.json and the table in docs/performance.md
    python -m bench --only datapath flops # some of them (results.json and docs/performance.md merge them in)
    python -m bench --quick --only flops  # tiny sizes: plumbing only; writes nothing unless --out/--readme

Every comparison is a ratio measured in the same run on the same machine; absolute
times are context. A figure is the median of >= 5 repetitions after a warm-up, except
where a benchmark says otherwise in its notes (whole-study benchmarks repeat fewer
times; memory takes the worst trial).

Adding a benchmark: write one module with

    def run(reps: int, quick: bool) -> list[bench.record.Figure]

that measures `reps` repetitions after a warm-up (`bench.record.repeat` does both),
with tiny sizes when `quick`, and returns its figures: `Figure.of(name, reps_list,
unit=..., target=..., higher_is_better=..., notes=...)` takes the median (or build
`Figure(...)` with another statistic and say so in `notes`); `target=None` for context
figures. Then add one line to BENCHMARKS below. Names of figures are unique across
benchmarks. A benchmark that needs Ray starts and stops it itself
(bench.raystudy.session does both; bench.raystudy.start_ray and run_once run one
spec through sweeps.runner.run_study, timed). EXPERIMENTS hold measurements that are not part of
the default run (`--only NAME` runs them).
"""

from __future__ import annotations

from importlib import import_module
from typing import Callable

from bench.record import Figure

Benchmark = Callable[[int, bool], list[Figure]]


def _lazy(module: str, function: str = "run") -> Benchmark:
    """bench.<module>.<function>, imported when it runs: the Ray benchmarks' modules
    import Ray, and importing `bench` (e.g. for bench.gpu_wd on a GPU machine without
    Ray) must not."""

    def run(reps: int, quick: bool) -> list[Figure]:
        return getattr(import_module(f"bench.{module}"), function)(reps, quick)

    run.__qualname__ = run.__name__ = f"{module}.{function}"
    return run


BENCHMARKS: dict[str, Benchmark] = {
    "datapath": _lazy("datapath"),  # 1. engine vs notebook epoch
    "flops": _lazy("flops"),  # 2. training FLOP/s vs matmul peak
    "overhead": _lazy("overhead"),  # 3. study wall vs ideal, 2 CPUs
    "scaling": _lazy("scaling"),  # 4. one vs two trials at a time
    "memory": _lazy("memory"),  # 5. trial RSS above an idle worker
    "packing": _lazy("packing"),  # 6. packed trials vs one model per trial
    "tiny": _lazy("tiny"),  # 7. packed tiny models (minimal_ratio, function_fit)
    "many": _lazy("many"),  # 8. 1,000 short trials: wall vs ideal, driver memory
}

EXPERIMENTS: dict[str, Benchmark] = {
    "overhead_new_process": _lazy("overhead", "run_without_reuse"),  # benchmark 3, a new worker process per trial
    "scaling_new_process": _lazy("scaling", "run_without_reuse"),  # benchmark 4, a new worker process per trial
}
