"""`gensweep estimate SPEC [--profile P]`: what a study will cost before it runs.

Every trial (a cell, a pack of cells, or a tuned cell's search, confirm and baseline
trials) is described by its family's cost model (`Family.workload`,
trainables/cost.py): FLOPs counted from the model and data sizes, memory from the
parameter count, batch activations and the dataset, and seconds from a fraction of a
second's calibration of the model's own step on this machine (cached per machine).
The study's wall time on this machine is the trials scheduled on its CPUs (in grid
order, as many at a time as `resources.cpu` allows), plus a start-up and report
cost per study and a start cost per trial. On a GPU it is the FLOPs over a named
GPU's peak times an efficiency factor, both printed: nothing here was measured on
a GPU.

Schedulers (ASHA) and early stops (stop_grad_norm) end trials early, so for such
studies the estimate is an upper bound, and says so.
"""

from __future__ import annotations

import heapq
import os
from dataclasses import dataclass

from sweeps.schema import Study
from trainables.contract import trials_per_cell
from trainables.families import get_family

# Seconds a study pays whatever its trials: Ray start, data loading, Tune's set-up and
# the report (about 20-30 s measured for the smoke and quick profiles on 2 cores).
STUDY_OVERHEAD_S = 25.0
# Seconds each trial pays beyond its steps: a worker process's imports, the model's
# build, checkpoints and Tune's bookkeeping (bench/overhead.py: about 1-3 s).
TRIAL_OVERHEAD_S = 2.0
# fp32 peaks (FLOP/s, dense, no tensor cores) of the GPUs to plan for. MNIST-sized
# models reach a small part of it: GPU_EFFICIENCY is an assumption, not a measurement.
GPU_PEAKS = {"h100": 67e12, "h200": 67e12, "a100": 19.5e12, "l4": 30.3e12, "a10": 31.2e12}
GPU_EFFICIENCY = 0.10
WARN_AFTER_S = 3600.0


@dataclass
class Estimate:
    study: str
    trials: int  # Tune trials (a pack is one)
    cells: int  # results rows (a pack's cells count one each)
    train_flops: float
    eval_flops: float
    memory_bytes: int  # the largest trial's
    memory_parts: dict
    cpu_s: float  # predicted wall on this machine
    slots: int
    threads: int
    gpu: str
    gpu_s: float
    upper_bound: bool

    @property
    def flops(self) -> float:
        return self.train_flops + self.eval_flops

    def line(self) -> str:
        """The one line `gensweep run` prints before it starts."""
        bound = "at most " if self.upper_bound else "about "
        return (f"estimate: {self.trials} trial(s), {flops_text(self.flops)}, up to {bytes_text(self.memory_bytes)} "
                f"per trial; {bound}{duration(self.cpu_s)} on this machine's {self.slots * self.threads} CPU(s) "
                f"(gensweep estimate for details)")

    def lines(self) -> list[str]:
        parts = parts_text(self.memory_parts)
        bound = " (an upper bound: a scheduler or an early stop ends some trials sooner)" if self.upper_bound else ""
        return [
            f"{self.study}: {self.trials} trial(s) ({self.cells} result cells){bound}",
            f"  compute: {flops_text(self.train_flops)} training + {flops_text(self.eval_flops)} evaluation",
            f"  memory per trial: up to {bytes_text(self.memory_bytes)} ({parts}), plus about 0.5 GB for the "
            f"trial's process (Python, torch)",
            f"  this machine: {duration(self.cpu_s)} ({self.slots} trial(s) at a time, {self.threads} thread(s) each; "
            f"from a calibration of each model's step, cached in {_cache_text()})",
            f"  one {self.gpu.upper()}: {duration(self.gpu_s)} (fp32 peak {GPU_PEAKS[self.gpu] / 1e12:g} TFLOP/s x an "
            f"assumed efficiency of {GPU_EFFICIENCY:.0%} for MNIST-sized models, plus {TRIAL_OVERHEAD_S:g} s per "
            f"trial; not measured on a GPU)",
        ]


def _cache_text() -> str:
    from trainables.cost import cache_path

    return str(cache_path())


def flops_text(flops: float) -> str:
    for unit, scale in (("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9)):
        if flops >= scale:
            return f"{flops / scale:.3g} {unit}"
    return f"{flops / 1e6:.3g} MFLOP"


def bytes_text(n: float) -> str:
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{int(n)} B"


def parts_text(parts: dict[str, float]) -> str:
    """Memory by part, bytes -> 'weights 1.2 MB, activations 300 kB, ...'."""
    return ", ".join(f"{name.replace('_', ' ')} {bytes_text(n)}" for name, n in parts.items())


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def trial_units(study: Study) -> list[tuple[list[dict], int]]:
    """(configs trained together, how many such trials): a cell, a pack, or a
    tuned cell's trials (searched values do not change the cost)."""
    from sweeps.planner import pack_cells
    from sweeps.schema import cell_id

    spec = study.spec
    if spec.search is not None:
        seeds = len(spec.seeds)
        per_cell = trials_per_cell(spec.search.num_samples, seeds, spec.search.baseline is not None)
        firsts = study.cells[::seeds]  # cells are grid cell x seed, seeds innermost
        return [([cell], per_cell) for cell in firsts]
    if spec.pack > 1:
        packs = pack_cells(study.cells, [cell_id(spec.family, c) for c in study.cells], spec.pack)
        return [(pack["cells"], 1) for pack in packs]
    return [([cell], 1) for cell in study.cells]


def schedule(durations: list[float], slots: int) -> float:
    """Wall seconds of running `durations` on `slots` workers in the given order, each
    trial on the first worker free (as Tune starts a study's trials: in grid order)."""
    finish = [0.0] * max(1, slots)
    for d in durations:
        heapq.heapreplace(finish, finish[0] + d)  # the worker free first takes the next trial
    return max(finish) if durations else 0.0


def estimate(study: Study, cpus: int | None = None, gpu: str = "h100", budget_s: float | None = None) -> Estimate | None:
    """The study's estimate; None when its family has no cost model."""
    from trainables import cost

    family = get_family(study.spec.family)
    if family.workload is None:
        return None
    cpus = cpus or os.cpu_count() or 1
    per_trial = study.spec.resources.cpu
    threads = max(1, int(per_trial))
    slots = max(1, int(cpus // per_trial))
    durations, cells = [], 0
    train_flops = eval_flops = 0.0
    memory, parts = 0, {}
    with cost.Calibrations() as cache:
        measured: dict[str, cost.Cost] = {}
        for configs, count in trial_units(study):
            workload = family.workload(configs)
            key = "|".join(p.key for p in workload.phases) + f"|steps={[p.steps for p in workload.phases]}" \
                  f"|evals={[p.eval_samples for p in workload.phases]}"
            if key not in measured:
                measured[key] = cost.measure(workload, threads, budget_s or cost.CALIBRATION_S, cache)
            c = measured[key]
            durations += [c.seconds + TRIAL_OVERHEAD_S] * count
            cells += len(configs) * count
            train_flops += c.train_flops * count
            eval_flops += c.eval_flops * count
            if c.memory_bytes > memory:
                memory, parts = c.memory_bytes, c.parts
    cpu_s = STUDY_OVERHEAD_S + schedule(durations, slots)
    gpu_s = STUDY_OVERHEAD_S + (train_flops + eval_flops) / (GPU_PEAKS[gpu] * GPU_EFFICIENCY) \
        + TRIAL_OVERHEAD_S * len(durations) / max(1, slots)
    upper = study.spec.scheduler is not None or study.spec.family == "critical_points"
    return Estimate(study=study.study_name, trials=len(durations), cells=cells, train_flops=train_flops,
                    eval_flops=eval_flops, memory_bytes=memory, memory_parts=parts, cpu_s=cpu_s, slots=slots,
                    threads=threads, gpu=gpu, gpu_s=gpu_s, upper_bound=upper)


def warning(est: Estimate) -> str | None:
    """A line for `gensweep run` when the study will take more than an hour here."""
    if est.cpu_s <= WARN_AFTER_S:
        return None
    return (f"warning: {est.study} will take {'up to ' if est.upper_bound else 'about '}{duration(est.cpu_s)} here; "
            f"its quick profile (--profile quick), a GPU box or a cluster (docs/operations.md) is faster")


