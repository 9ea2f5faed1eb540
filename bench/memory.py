"""Benchmark 5: memory per trial. While the 16-trial grid of bench/raystudy.py runs
(full MNIST, train_size null; two trials at a time), a thread in the benchmark
process samples every Ray worker process from /proc: the kernel's peak RSS (VmHWM),
anonymous RSS (heap: what the trial allocated for itself), shared-memory RSS (pages
of Ray's object store it touched: the dataset, held once per node) and USS. The
baseline is an idle Ray actor that imported the modules a trial imports
(bench.raystudy.IDLE_MODULES). Each trial process's peak minus the idle worker's
value is one sample; the figure is the worst trial (max), not the median.

USS is reported in the notes only: it counts library pages as private when no
other process on the machine maps them, so it moves with whatever else runs.

    python -m bench --only memory
"""

from __future__ import annotations

from bench import raystudy
from bench.raystudy import MB
from bench.record import Figure, median

TARGET_MB = 100.0


def run(reps: int, quick: bool) -> list[Figure]:
    session = raystudy.session(2, raystudy.ray_reps(reps, raystudy.CONCURRENT_REPS), quick)
    idle = session.idle
    peaks = [run.memory[pid] for run in session.runs for pid in run.trial_pids if pid in run.memory]
    if not peaks:
        raise RuntimeError("no trial process was sampled (did the trials run under this process's Ray?)")
    rss = [(p.rss - idle.rss) / MB for p in peaks]
    anon = [(p.anon - idle.anon) / MB for p in peaks]
    uss = [(p.uss - idle.uss) / MB for p in peaks]
    shmem = [p.shmem / MB for p in peaks]
    dynamo = session.idle, session.idle_without_dynamo
    context = (f"{len(peaks)} trial processes in {raystudy.describe_reps(len(session.runs), reps)} on 2 CPUs (the "
               f"overhead benchmark's runs when both run); idle worker "
               f"RSS {idle.rss / MB:.0f} MB (anon {idle.anon / MB:.0f} MB), of which torch._dynamo (imported by "
               f"the first optimizer) {(dynamo[0].rss - dynamo[1].rss) / MB:.0f} MB; per trial: object-store pages "
               f"touched (shared) median {median(shmem):.0f} MB; USS above idle median {median(uss):.0f} MB "
               f"(max {max(uss):.0f}; USS moves with what else maps the same libraries)")
    return [
        Figure(name="memory_rss_above_idle_mb", value=max(rss), unit="MB", target=TARGET_MB, higher_is_better=False,
               reps=rss, notes=f"worst trial's peak RSS (VmHWM) minus the idle worker's RSS, median "
                               f"{median(rss):.0f} MB; includes the shared dataset pages; {context}"),
        Figure(name="memory_private_above_idle_mb", value=max(anon), unit="MB", target=TARGET_MB,
               higher_is_better=False, reps=anon,
               notes=f"worst trial's peak anonymous RSS (its own heap: model, optimizer, batches) minus the idle "
                     f"worker's, median {median(anon):.0f} MB; {context}"),
    ]
