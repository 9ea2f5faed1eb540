"""Refuse, before anything runs, a trial that cannot fit in memory.

`check_memory(study)` sizes every trial of the study (a cell, a pack of cells, a
tuned cell's trials: sweeps/estimate.py's `trial_units`) with its family's cost
model, memory only (trainables/cost.py `memory`: the models are built on torch's
meta device, so a model of billions of parameters is sized in milliseconds and
allocates nothing), and raises one SpecError line when a trial needs more than it
would get. The CLI calls it for every command that loads a spec (validate, run,
estimate, status, submit); the runner can call it again with a cluster node's
memory (`host_bytes`). A family without a cost model (`workload`) is not checked.

What a trial gets:
- on CPU, the whole node's memory (default: this machine's RAM). Ray places trials
  by CPUs, not by memory, so trials side by side share the node; but a trial that
  fits alone can still run (fewer at a time: more `resources.cpu` per trial), while
  one larger than the node never can. Only that is refused.
- on a GPU (`resources.gpu` > 0, or `auto` where the GPU is known), its share of one
  GPU's memory (the fraction x the GPU's memory): given (`gpu_bytes`), or this
  machine's smallest CUDA device. Without either the study runs elsewhere (a
  cluster) on GPUs unknown here, and there is no GPU check.

    >>> check_memory(load_study("sweeps/wd.yaml"))            # None, or SpecError
    >>> check_memory(study, host_bytes=64 * 10**9, machine="the cluster's largest node")
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sweeps.estimate import bytes_text, parts_text, trial_units
from sweeps.schema import Study, _where
from sweeps.specyaml import SpecError
from trainables.families import get_family

if TYPE_CHECKING:  # trainables.cost imports torch: loaded when a check runs
    from trainables.cost import Memory


@dataclass(frozen=True)
class Allowance:
    """The memory one trial gets, bytes, and how a message says so."""

    bytes: int
    text: str  # e.g. "this machine has 24 GB"
    advice: str  # what to change


def physical_memory() -> int:
    """This machine's RAM, bytes."""
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def cuda_memory() -> int | None:
    """Bytes of this machine's smallest CUDA device (a trial may land on any); None
    without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return None
    return min(torch.cuda.get_device_properties(i).total_memory for i in range(torch.cuda.device_count()))


def check_memory(study: Study, host_bytes: int | None = None, gpu_bytes: int | None = None,
                 machine: str = "this machine") -> None:
    """Raise SpecError when some trial's memory estimate exceeds what it would get
    (see the module docstring). `host_bytes`: a CPU trial's node memory (default this
    machine's RAM, which `machine` names in the message); `gpu_bytes`: one GPU's
    memory (default: this machine's CUDA device's, else no GPU check)."""
    from trainables import cost

    family = get_family(study.spec.family)
    if family.workload is None:
        return  # no cost model: nothing to size
    wanted = study.spec.resources.gpu
    if wanted == "auto" or wanted > 0:
        gpu_bytes = gpu_bytes if gpu_bytes is not None else cuda_memory()
        if gpu_bytes is None and wanted != "auto":
            return  # the GPUs are elsewhere: unknown here
    on_gpu = gpu_bytes is not None and (wanted == "auto" or wanted > 0)  # `auto` without GPUs runs on CPU
    host = host_bytes if host_bytes is not None else physical_memory()
    cpu = Allowance(host, f"{machine} has {bytes_text(host)}", "use a smaller model or a machine with more memory")
    for configs, _ in trial_units(study):
        try:
            workload = family.workload(configs)
        except Exception:  # noqa: BLE001 - a model the cost model cannot size (a plugin's op without a meta kernel)
            continue  # is left to the run, as before this check: the check refuses what it can size
        need = cost.memory(workload)
        get = gpu_allowance(wanted, gpu_bytes, need.parameters) if on_gpu else cpu
        if need.bytes > get.bytes:
            raise SpecError(f"{study.source}: {model_source(study, configs[0], workload.model_keys)}: "
                            f"{need_text(need, workload.models)} but {get.text}; {get.advice}"
                            + (" (or fewer cells per trial: pack)" if workload.models > 1 else ""))


def gpu_allowance(wanted: float | str, gpu_bytes: int, parameters: int) -> Allowance:
    """A trial's share of one GPU: `resources.gpu` (at most one GPU: a trial trains
    on one device), or for `auto` the runner's share for its parameter count."""
    if wanted == "auto":
        from sweeps.runner import auto_gpu_share

        share = auto_gpu_share(parameters)
        label = f"auto: {share:g}"
    else:
        share = min(float(wanted), 1.0)
        label = f"{share:g}"
    return Allowance(int(share * gpu_bytes), f"its share of a GPU is {bytes_text(share * gpu_bytes)} "
                                             f"(resources.gpu {label} x {bytes_text(gpu_bytes)})",
                     "use a smaller model, a larger GPU share (resources.gpu) or a GPU with more memory")


def need_text(need: Memory, models: int) -> str:
    """'a trial needs 1.27 TB (79.5 B parameters: weights 318 GB, ...)' (parts of 0 B left out)."""
    each = f" in {models} models" if models > 1 else ""
    return (f"a trial needs {bytes_text(need.bytes)} ({count_text(need.parameters)} parameters{each}: "
            f"{parts_text({name: n for name, n in need.parts.items() if n})})")


def count_text(n: int) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return str(n)


# ---------------------------------------------------------------------------
# Where a cell's model comes from in the spec


def model_source(study: Study, cell: dict, model_keys: tuple[str, ...]) -> str:
    """The spec keys that set the cell's model, for the message's key path: the
    family's model keys the spec sets, sizes (numbers, lists of numbers) before
    names (`model: mlp`), grid values before fixed ones; without any, the cell's grid
    values; without a grid, `fixed`."""
    combo = grid_position(study, cell)
    places = {key: place for key in model_keys if (place := key_place(study, combo, key)) is not None}
    chosen = [key for key in places if is_size(cell.get(key))] or list(places)
    chosen = [key for key in chosen if places[key].startswith("grid.")] or chosen
    if chosen:
        return ", ".join(places[key] for key in chosen)
    return ", ".join(f"grid.{axis}[{i}]" for axis, i in combo.items()) or "fixed"


def key_place(study: Study, combo: dict[str, int], key: str) -> str | None:
    """Where the spec sets `key` for the cell at grid position `combo`: a variant's
    `grid.arch[1].hidden`, a grid axis's `grid.hidden[2]`, or `fixed.hidden`; None
    when the spec leaves it to the family's default."""
    spec = study.spec
    for axis, i in combo.items():
        value = spec.grid[axis][i]
        if isinstance(value, dict) and key in value:
            return f"grid.{axis}[{i}].{key}"
    if key in spec.fixed or key in combo:
        return _where(key, spec, combo, 0)
    return None


def grid_position(study: Study, cell: dict) -> dict[str, int]:
    """The cell's index on each grid axis. `study.cells` is every grid combination
    (itertools.product order: the last axis fastest) times the seeds (innermost);
    `trial_units` hands out the study's own cell dicts."""
    index = next((j for j, c in enumerate(study.cells) if c is cell), None)
    flat = (study.cells.index(cell) if index is None else index) // len(study.spec.seeds)
    combo = {}
    for axis in reversed(list(study.spec.grid)):
        flat, combo[axis] = divmod(flat, len(study.spec.grid[axis]))
    return {axis: combo[axis] for axis in study.spec.grid}


def is_size(value: object) -> bool:
    """A number or a list of numbers (widths, layer sizes, multipliers), not a flag."""
    if isinstance(value, (list, tuple)):
        return bool(value) and all(is_size(v) for v in value)
    return isinstance(value, (int, float)) and not isinstance(value, bool)
