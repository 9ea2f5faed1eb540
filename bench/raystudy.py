"""Running the benchmark grid through `sweeps.runner.run_study`, timed and watched.

Benchmarks 3-5 (overhead, scaling, memory) measure the same study: 16 cells
(lr x weight decay x 4 seeds) of the 784-512-10 MLP, 2 epochs on all 60k MNIST
images, evaluated on 60k + 10k, about 5 s of training and evaluation per trial on one
core, 1 CPU per trial. A session starts Ray itself (timed: start-up is reported
apart from the studies), measures an idle Ray worker that imported the trial's
modules, runs a small warm-up study (Ray's worker pool, the page cache, the report's
imports), then the study `reps` times, each into a fresh temporary folder, and shuts
Ray down. While a study runs, a thread samples the memory of Ray's worker processes
from /proc (Linux). Sessions are kept per (CPUs, reps, quick), so benchmarks that
need the same runs share them.

Timings of one study run (`StudyRun`):
- `wall_s`: the `run_study` call (data loading, Tune, every trial, the report);
- `trial_compute_s`: each trial's own `time_s` from trials.parquet: the engine's
  seconds of training + evaluation inside the trial (no process start, imports,
  data fetch, model build, checkpoint writing or Tune bookkeeping);
- `trial_lifetime_s`: each trial from Tune's `on_trial_start` to `on_trial_complete`
  (as the driver sees it: includes the trial process's start and its checkpoints);
- `report_s`: the report written at the end (`analysis.report.write_report`).
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ray import tune

from bench.machine import TreeCpu, descendants

GRID_SPEC = """\
name: bench-{name}
family: classifier
description: benchmark grid (bench/raystudy.py)
fixed: {{dataset: mnist, model: mlp, hidden: [512], optimizer: adam, batch_size: 128, epochs: {epochs}{extra}}}
grid: {{lr: [0.001, 0.0003], weight_decay: {decays}}}
seeds: {seeds}
resources: {{cpu: 1}}
"""

FULL = {"epochs": 2, "extra": "", "decays": [0.0, 0.0001], "seeds": [0, 1, 2, 3]}  # 16 cells, train_size null
QUICK = {"epochs": 1, "extra": ", train_size: 2000, test_size: 500", "decays": [0.0], "seeds": [0, 1]}  # 4 cells
WARMUP = {"epochs": 1, "extra": ", train_size: 1000, test_size: 200", "decays": [0.0], "seeds": [0]}  # 2 cells

SAMPLE_EVERY_S = 0.5  # a /proc scan (a few ms) plus /proc/<pid>/status per worker
USS_EVERY_S = 2.0  # smaps_rollup: about 9 ms per torch process, so less often

MB = 2**20


def write_spec(folder: Path, name: str, sizes: dict) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(GRID_SPEC.format(name=name, **sizes))
    return path


# ---- memory of processes, from /proc ------------------------------------------------

def _status_bytes(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM (peak RSS), RssAnon, RssFile, RssShmem of a process, in bytes."""
    wanted = ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem")
    out = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            key, _, rest = line.partition(":")
            if key in wanted:
                out[key] = int(rest.split()[0]) * 1024
    return out


def _uss_bytes(pid: int) -> int:
    """Unique set size: pages mapped by this process alone (Private_Clean +
    Private_Dirty of smaps_rollup). The object store's pages, mapped by the store and
    every reader, are shared and not in it."""
    total = 0
    with open(f"/proc/{pid}/smaps_rollup") as fh:
        for line in fh:
            if line.startswith(("Private_Clean:", "Private_Dirty:")):
                total += int(line.split()[1]) * 1024
    return total


def _cmdline(pid: int) -> str:
    with open(f"/proc/{pid}/cmdline", "rb") as fh:
        return fh.read().replace(b"\0", b" ").decode(errors="replace")


def _ray_workers(root: int) -> list[int]:
    """Processes below `root` whose title Ray set to `ray::...` (workers and actors:
    the trials' processes among them)."""
    found = []
    for pid in descendants(root):
        with contextlib.suppress(OSError):
            if _cmdline(pid).startswith("ray::"):
                found.append(pid)
    return found


@dataclass
class Peak:
    """The largest values seen for one process, in bytes."""

    rss: int = 0  # VmHWM: the kernel's own peak RSS, so nothing between samples is missed
    uss: int = 0
    shmem: int = 0  # RssShmem: object-store (and other shared memory) pages touched
    anon: int = 0  # RssAnon: the process's heap and stacks
    title: str = ""


class MemorySampler:
    """A thread sampling every Ray worker below this process until stopped."""

    def __init__(self) -> None:
        self.peaks: dict[int, Peak] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-memory", daemon=True)

    def __enter__(self) -> "MemorySampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        last_uss = 0.0
        while not self._stop.is_set():
            with_uss = time.monotonic() - last_uss >= USS_EVERY_S
            for pid in _ray_workers(os.getpid()):
                with contextlib.suppress(OSError, ValueError):  # the process may exit meanwhile
                    status = _status_bytes(pid)
                    peak = self.peaks.setdefault(pid, Peak(title=_cmdline(pid).strip()))
                    peak.rss = max(peak.rss, status.get("VmHWM", 0))
                    peak.shmem = max(peak.shmem, status.get("RssShmem", 0))
                    peak.anon = max(peak.anon, status.get("RssAnon", 0))
                    if with_uss:
                        peak.uss = max(peak.uss, _uss_bytes(pid))
            if with_uss:
                last_uss = time.monotonic()
            self._stop.wait(SAMPLE_EVERY_S)


# ---- an idle worker: the memory baseline ------------------------------------------

# What a trial process has imported by the time it trains: torch, Tune, the Tune
# configuration (which unpickles run_trial) and the family. torch._dynamo is imported by torch.optim
# when a trial builds its first optimizer (sympy, triton, ...: about 150 MB RSS and
# 1 s); every trial pays it, data or not, so the baseline has it too.
IDLE_MODULES = ("torch", "ray.tune", "sweeps.tuneconfig", "trainables.classifier", "trainables.engine",
                "trainables.trial", "analysis.collect", "torch._dynamo")


def _idle_actor_class():
    import ray

    @ray.remote(num_cpus=0)
    class IdleWorker:
        """A Ray worker that imported what a trial imports, and does nothing."""

        def __init__(self, modules: tuple[str, ...]) -> None:
            import importlib

            for name in modules:
                importlib.import_module(name)

        def pid(self) -> int:
            return os.getpid()

    return IdleWorker


@dataclass
class IdleMemory:
    rss: int
    uss: int
    anon: int
    start_s: float  # from creating the actor to its answer: a worker's start-up and the imports


def idle_worker_memory(modules: tuple[str, ...] = IDLE_MODULES, settle_s: float = 1.0) -> IdleMemory:
    """RSS, USS and anonymous RSS of an idle Ray actor that imported `modules`, and
    how long it took to start."""
    import ray

    started = time.perf_counter()
    actor = _idle_actor_class().remote(modules)
    try:
        pid = ray.get(actor.pid.remote())
        start_s = time.perf_counter() - started
        time.sleep(settle_s)  # let import-time threads and allocations settle
        status = _status_bytes(pid)
        return IdleMemory(status["VmRSS"], _uss_bytes(pid), status["RssAnon"], start_s)
    finally:
        ray.kill(actor)


# ---- one study run -----------------------------------------------------------------

class TrialClock(tune.Callback):
    """When each trial started and ended, as the driver's Tune loop sees it."""

    def __init__(self) -> None:
        self.started: dict[str, float] = {}
        self.ended: dict[str, float] = {}

    def on_trial_start(self, iteration, trials, trial, **info):
        self.started[trial.trial_id] = time.monotonic()

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.ended[trial.trial_id] = time.monotonic()

    on_trial_error = on_trial_complete


@dataclass
class StudyRun:
    wall_s: float
    report_s: float
    first_start_s: float  # from calling run_study to the first trial's start (data, Tune set-up)
    trial_compute_s: list[float]
    trial_lifetime_s: list[float]
    num_threads: list[int]
    statuses: list[str]
    trial_pids: list[int]
    # CPU-seconds of the driver (this process) and Ray's own processes during the
    # study, i.e. everything in this process tree but the trials' workers.
    support_cpu_s: float = 0.0
    memory: dict[int, Peak] = field(default_factory=dict)  # pid -> peaks, for every Ray worker seen


def _trial_pids(folder: Path) -> list[int]:
    """The process each trial ran in (Tune's `pid` in every result row)."""
    from trainables.contract import read_rows, trial_folders

    pids = set()
    for dirs in trial_folders(folder).values():
        for trial_dir in dirs:
            pids.update(int(row["pid"]) for row in read_rows(trial_dir / "result.json") if "pid" in row)
    return sorted(pids)


def run_once(spec: Path, results: Path, sample_memory: bool) -> StudyRun:
    """Run the study in `spec` into `results` (Ray already started) and time it."""
    import pandas as pd

    from analysis.report import write_report
    from sweeps.runner import run_study
    from sweeps.schema import load_study

    study = load_study(spec)
    clock = TrialClock()
    report_s = [0.0]

    def timed_report(*args, **kwargs):
        started = time.perf_counter()
        try:
            return write_report(*args, **kwargs)
        finally:
            report_s[0] += time.perf_counter() - started

    log = io.StringIO()
    sampler = MemorySampler() if sample_memory else contextlib.nullcontext()
    with sampler, TreeCpu() as cpu, contextlib.redirect_stdout(log):
        called = time.monotonic()
        outcome = run_study(study, results, progress_every=3600, callbacks=[clock], report=timed_report)
        wall = time.monotonic() - called
    if outcome.exit_code != 0:
        raise RuntimeError(f"{spec.name}: study exit code {outcome.exit_code}; its output ended:\n{log.getvalue()[-3000:]}")
    folder = Path(outcome.folder)
    trial_pids = _trial_pids(folder)
    trials = pd.read_parquet(folder / "trials.parquet")
    if len(trials) != len(study.cells):
        raise RuntimeError(f"{spec.name}: {len(trials)} trials in trials.parquet, expected {len(study.cells)}")
    return StudyRun(
        wall_s=wall,
        report_s=report_s[0],
        first_start_s=min(clock.started.values()) - called,
        trial_compute_s=[float(x) for x in trials["wall_s"]],
        trial_lifetime_s=[clock.ended[t] - clock.started[t] for t in clock.started if t in clock.ended],
        num_threads=[int(x) for x in trials["num_threads"]],
        statuses=list(trials["status"]),
        trial_pids=trial_pids,
        support_cpu_s=sum(used for pid, used in cpu.used.items() if pid not in trial_pids),
        memory=dict(sampler.peaks) if sample_memory else {},
    )


# ---- a session: Ray up, warm-up, the study `reps` times, Ray down --------------------

@dataclass
class Session:
    num_cpus: int
    ray_start_s: float
    runs: list[StudyRun]
    # The memory baseline: an idle worker with IDLE_MODULES imported; and the same
    # without torch._dynamo (what the first optimizer costs). None: not measured.
    idle: IdleMemory | None
    idle_without_dynamo: IdleMemory | None

    @property
    def concurrency(self) -> int:
        return self.num_cpus  # 1 CPU per trial


def start_ray(num_cpus: int) -> float:
    """Start a local Ray as tests/test_gpu_packing.py does, with the runner's
    worker environment; seconds it took."""
    import ray

    from sweeps.workerenv import WORKER_ENV

    for key, value in WORKER_ENV.items():  # as the runner's own Ray start does
        os.environ.setdefault(key, value)
    started = time.perf_counter()
    ray.init(num_cpus=num_cpus, include_dashboard=False, logging_level="WARNING")
    return time.perf_counter() - started


@contextlib.contextmanager
def tune_config_overrides(overrides: tuple[tuple[str, object], ...]):
    """Run studies with some `tune.TuneConfig` fields changed (e.g. reuse_actors),
    to measure a Tune setting without editing sweeps/tuneconfig.py."""
    import dataclasses

    from sweeps import tuneconfig

    original = tuneconfig.tune_config

    def patched(study):
        return dataclasses.replace(original(study), **dict(overrides))

    tuneconfig.tune_config = patched if overrides else original
    try:
        yield
    finally:
        tuneconfig.tune_config = original


@functools.cache
def session(num_cpus: int, reps: int, quick: bool, overrides: tuple[tuple[str, object], ...] = (),
            measure_idle: bool = True) -> Session:
    """Ray with `num_cpus` CPUs, the idle-worker baseline (if `measure_idle`), the
    grid run `reps` times after a warm-up study, memory sampled throughout;
    `overrides`: TuneConfig fields to change (experiments). Cached: the overhead,
    scaling and memory benchmarks read the same runs."""
    import ray

    if ray.is_initialized():
        raise RuntimeError("a benchmark session starts its own Ray; one is already running in this process")
    tmp = Path(tempfile.mkdtemp(prefix="gensweep-bench-"))
    try:
        ray_start_s = start_ray(num_cpus)
        try:
            idle = without_dynamo = None
            if measure_idle:
                without_dynamo = idle_worker_memory(tuple(m for m in IDLE_MODULES if m != "torch._dynamo"))
                idle = idle_worker_memory()
            with tune_config_overrides(overrides):
                run_once(write_spec(tmp, "warmup", WARMUP), tmp / "warmup", sample_memory=False)
                grid = write_spec(tmp, "quick" if quick else "grid", QUICK if quick else FULL)
                runs = [run_once(grid, tmp / f"rep{i}", sample_memory=True) for i in range(reps)]
        finally:
            ray.shutdown()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return Session(num_cpus, ray_start_s, runs, idle, without_dynamo)


def ray_reps(reps: int, cap: int) -> int:
    """Repetitions of a whole study: at most `cap` (a study takes a minute or more)."""
    return max(1, min(reps, cap))


def describe_reps(reps: int, asked: int) -> str:
    return f"{reps} run(s) of the whole study" + (f" (capped from {asked} for time)" if reps < asked else "")



# Whole-study repetitions: a study of 16 five-to-seven-second trials took about 44 s two
# at a time and 79 s one at a time here (worker processes reused across trials); with
# benchmarks 1-2 and 6 this is what fits make bench's 15-minute budget.
CONCURRENT_REPS = 4
SEQUENTIAL_REPS = 2
