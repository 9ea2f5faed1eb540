"""What one trial costs: FLOPs, memory and seconds, before it runs.

A family describes a trial as a `Workload` (its `Family.workload(configs)`): the
phases it trains, each with its optimizer steps, the samples its evaluations forward,
and factories for one training step and one evaluation batch of the trial's own
model on random data of the trial's shapes. `measure` then
- counts FLOPs by running one step and one evaluation batch under torch's
  FlopCounterMode (matmuls and convolutions: what dominates; a family whose step is
  not torch gives its counts itself);
- times the step and the evaluation batch for a fraction of a second (after a
  warm-up), with as many torch threads as the trial gets CPUs (CPU seconds for one
  thread: a busy machine does not inflate them);
- caches both per machine (host, CPU, torch version, thread count) and step
  signature, so a second estimate of the same models takes no time.

Memory (`memory`, no timing and no FLOPs: sweeps/feasibility.py's check and
`measure` both use it): weights, gradients and optimizer state from the parameter
count, batch activations from the outputs of every module in one forward pass (a
training batch's kept for the backward pass, and their gradients; an evaluation
batch's), the dataset the trial holds, and what a phase declares beyond these. The
models are sized on torch's meta device (shapes, no storage; a small one also runs
one real sample, see `model_sizes`), so sizing a model too big for the machine
allocates nothing.

    >>> phase = engine_phase("mlp-512", lambda: [build_model("mlp")], cfg, (1, 28, 28), classes=10, ...)
    >>> measure(Workload([phase], data_bytes=47e6))   # -> Cost
    >>> memory(Workload([phase], data_bytes=47e6)).bytes   # memory only: milliseconds
"""

from __future__ import annotations

import json
import os
import platform
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

from trainables.data import TensorSplit
from trainables.engine import EngineConfig, ModelSet, SingleModel

# Seconds each calibration spends timing (after its warm-up): a few per study.
CALIBRATION_S = 0.25
WARMUP_STEPS = 2
BYTES_PER_FLOAT = 4  # float32
OPTIMIZER_STATES = {"adam": 2, "sgd": 1}  # tensors the size of the weights (moments, momentum)
CACHE_VERSION = 2  # 2: CPU seconds for one thread
# Models (all K of a trial) up to this many parameters, 80 MB of float32, have their
# activations counted in a real forward pass of one sample (milliseconds); larger ones
# on the meta device only (no storage, but torch's first meta forward pass imports
# torch._dynamo: about 2 s, once per process).
REAL_PROBE_PARAMS = 20_000_000


@dataclass(frozen=True)
class Phase:
    """One stretch of training with one step: `steps` optimizer steps, and
    `eval_samples` samples forwarded by its evaluations (in batches of `eval_batch`)."""

    key: str  # the step's identity for the cache: model, shapes, batch, optimizer, objective, K
    steps: int
    eval_samples: int
    eval_batch: int
    make_step: Callable[[], Callable[[], None]]  # -> one training step (forward, backward, update)
    make_eval: Callable[[], Callable[[], None]] | None  # -> one evaluation batch (forward only); None: none
    weights: int = 0  # parameters trained (all K models)
    optimizer_states: int = 1  # tensors the size of the weights kept by the optimizer
    activations: int = 0  # floats one training batch keeps for backward
    eval_activations: int = 0  # floats one evaluation batch holds (every module's output: an upper bound)
    extra_bytes: dict[str, int] = field(default_factory=dict)  # other memory by name, bytes (e.g. Hessians)
    flops: tuple[float, float] | None = None  # (per step, per eval batch) when not counted from torch


@dataclass(frozen=True)
class Workload:
    phases: list[Phase]
    data_bytes: int = 0  # the dataset the trial holds (images as uint8, targets)
    models: int = 1  # models trained together (a pack's K)
    # Config keys the trial's model is built from (a too-big model's error names where
    # the spec sets them: sweeps/feasibility.py).
    model_keys: tuple[str, ...] = ()


@dataclass(frozen=True)
class Memory:
    """A trial's memory at its peak (the largest of its phases'), bytes by part."""

    parameters: int  # trained, all K models
    parts: dict[str, int]  # weights, gradients, optimizer_state, activations, data, and phases' own

    @property
    def bytes(self) -> int:
        return sum(self.parts.values())


@dataclass
class PhaseCost:
    step_s: float
    eval_s: float  # per evaluation batch
    step_flops: float
    eval_flops: float  # per evaluation batch


@dataclass
class Cost:
    """A trial's totals."""

    seconds: float  # compute on this machine (steps and evaluations), no process start
    train_flops: float
    eval_flops: float
    memory_bytes: int
    models: int = 1
    parts: dict = field(default_factory=dict)  # memory by kind, bytes


# ---------------------------------------------------------------------------
# Phases of torch models trained by the engine


def random_split(n: int, input_shape: Sequence[int], classes: int | None, device: torch.device) -> TensorSplit:
    """n random inputs and targets (labels, or regression targets) of the trial's shapes."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(n, *input_shape, generator=generator)
    y = torch.randint(0, classes, (n,), generator=generator) if classes else torch.randn(n, 1, generator=generator)
    return TensorSplit(x.to(device), y.to(device), torch.arange(n, device=device))


def model_set(models: list[nn.Module]) -> ModelSet:
    if len(models) == 1:
        return SingleModel(models[0])
    from trainables.packed import PackedModels

    return PackedModels(models)


def activation_floats(model: nn.Module, input_shape: Sequence[int], batch: int) -> int:
    """Floats of every module's output in one forward pass of `batch` samples: what
    autograd keeps for the backward pass (leaf modules only, so nothing twice)."""
    total = 0

    def hook(module, inputs, output):
        nonlocal total
        if isinstance(output, torch.Tensor):
            total += output[0].numel() * batch

    handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    device = next((p.device for p in model.parameters()), torch.device("cpu"))  # meta: shapes only
    try:
        with torch.no_grad():
            was_training = model.training
            model.eval()
            model(torch.zeros(1, *input_shape, device=device))
            model.train(was_training)
    finally:
        for h in handles:
            h.remove()
    return total


def on_meta(build: Callable[[], list[nn.Module]]) -> list[nn.Module]:
    """The models `build()` makes, on the meta device: shapes without storage, so
    billions of parameters take milliseconds and no memory. Real ones when the meta
    device cannot build them (e.g. a plugin's model that computes with its weights)."""
    try:
        with torch.device("meta"):
            return build()
    except Exception:  # noqa: BLE001 - any error of the model's own code: it is built as before
        return build()


def model_sizes(build: Callable[[], list[nn.Module]], input_shape: Sequence[int], identity: str) -> tuple[int, int, int]:
    """(K, parameters of one model, activation floats of one sample through one model)
    of the models `build()` makes (built on the meta device), `identity` naming their
    architecture (engine_phase's name and shapes). The activations come from one
    forward pass, once per architecture and process: of a real model up to
    REAL_PROBE_PARAMS (faster than torch's first meta forward pass), else on the meta
    device, so a huge model is never allocated."""
    models = on_meta(build)
    k, params = len(models), sum(p.numel() for p in models[0].parameters())
    key = f"{identity}|params={params}"
    if key not in _PER_SAMPLE:
        probe = models[0] if params * k > REAL_PROBE_PARAMS else build()[0]
        with torch.device(next((p.device for p in probe.parameters()), torch.device("cpu"))):  # what forward makes, too
            _PER_SAMPLE[key] = activation_floats(probe, input_shape, 1)
    return k, params, _PER_SAMPLE[key]


# Activation floats of one sample by architecture (model_sizes): a grid's cells share
# a few models, and one forward pass of a CNN takes tens of milliseconds on a laptop.
_PER_SAMPLE: dict[str, int] = {}


def engine_phase(name: str, build: Callable[[], list[nn.Module]], cfg: EngineConfig, input_shape: Sequence[int],
                 classes: int | None, steps: int, eval_samples: int) -> Phase:
    """A phase of `engine.fit`: `build()` makes the trial's model(s) (K > 1: packed),
    `cfg` the phase's engine config, `classes` None for a regression."""
    device = torch.device("cpu")
    k, params, per_sample = model_sizes(build, input_shape, f"{name}|in={tuple(input_shape)}|classes={classes}")
    batch = cfg.batch_size
    key = (f"{name}|in={tuple(input_shape)}|classes={classes}|k={k}|batch={batch}|eval={cfg.eval_batch_size}"
           f"|{cfg.optimizer}|{cfg.objective}|{cfg.criterion}|{cfg.l2_mode if cfg.weight_decay else 'no-l2'}")

    def prepared(n: int) -> tuple[ModelSet, TensorSplit]:
        """The trial's model(s), ready to step, and n random samples of its shapes."""
        models = model_set(build())
        models.prepare([cfg.model_copy(update={"seed": i}) for i in range(k)], device)
        return models, random_split(n, input_shape, classes, device)

    def make_step() -> Callable[[], None]:
        models, split = prepared(batch)
        models.shuffle(split)

        def step() -> None:
            models.gradients(split, 0, batch)
            models.update()

        return step

    def make_eval() -> Callable[[], None]:
        models, split = prepared(cfg.eval_batch_size)
        return lambda: models.evaluate(split, cfg.eval_batch_size)

    return Phase(key=key, steps=steps, eval_samples=eval_samples, eval_batch=cfg.eval_batch_size,
                 make_step=make_step, make_eval=make_eval, weights=params * k,
                 optimizer_states=OPTIMIZER_STATES[cfg.optimizer] + (1 if cfg.objective == "grad_norm_sq" else 0),
                 activations=per_sample * batch * k, eval_activations=per_sample * cfg.eval_batch_size * k)


def evaluations(cfg: EngineConfig, train_size: int) -> int:
    """How many evaluations `engine.fit` makes: every `eval_every` epochs and the last."""
    last = cfg.last_epoch(train_size)
    return last // cfg.eval_every + (0 if last % cfg.eval_every == 0 else 1)


def engine_steps(cfg: EngineConfig, train_size: int) -> int:
    """Optimizer steps of a full `engine.fit` (no early stop)."""
    per_epoch = -(-train_size // cfg.batch_size)
    return cfg.max_steps if cfg.max_steps is not None else per_epoch * cfg.epochs


# ---------------------------------------------------------------------------
# Memory


def memory(workload: Workload) -> Memory:
    """The trial's memory from its phases' sizes: nothing is built, timed or counted
    here (the phases were sized when the workload was made). Each part is its largest
    phase's (the phases run one after the other; parts of different phases summed: a
    bound a little above the peak when phases differ)."""
    phases = workload.phases
    floats = {
        "weights": max((p.weights for p in phases), default=0),
        "gradients": max((p.weights for p in phases), default=0),  # every phase trains all its weights
        "optimizer_state": max((p.weights * p.optimizer_states for p in phases), default=0),
        # a training batch's outputs kept for backward, and their gradients; or an evaluation batch's
        "activations": max((max(2 * p.activations, p.eval_activations) for p in phases), default=0),
    }
    parts = {name: n * BYTES_PER_FLOAT for name, n in floats.items()}
    parts["data"] = workload.data_bytes
    for name in dict.fromkeys(name for p in phases for name in p.extra_bytes):  # in order, once each
        parts[name] = max(p.extra_bytes.get(name, 0) for p in phases)
    return Memory(parameters=floats["weights"], parts=parts)


# The parts `measure` (and `gensweep estimate`) show as one: what scales with the model.
WEIGHT_PARTS = ("weights", "gradients", "optimizer_state")


# ---------------------------------------------------------------------------
# Measuring, with a per-machine cache


def machine_id(threads: int) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{socket.gethostname()}|{cpu}|{os.cpu_count()} cpus|torch {torch.__version__}|{threads} threads"


def cache_path() -> Path:
    base = os.environ.get("GENSWEEP_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "gensweep")
    return Path(base) / "calibration.json"


def _read_cache() -> dict:
    try:
        data = json.loads(cache_path().read_text())
        return data if data.get("version") == CACHE_VERSION else {"version": CACHE_VERSION}
    except (OSError, ValueError):
        return {"version": CACHE_VERSION}


def _write_cache(data: dict) -> None:
    path = cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, path)
    except OSError:
        pass  # an unwritable cache only costs a calibration next time


def _time(fn: Callable[[], None], budget_s: float, threads: int = 1) -> float:
    """Seconds per call of fn: WARMUP_STEPS untimed, then calls for about budget_s.
    With one thread (what a trial with `cpu: 1` gets) this is the process's CPU time,
    so other work on the machine does not inflate it; with more, the wall time."""
    clock = time.process_time if threads == 1 else time.perf_counter
    for _ in range(WARMUP_STEPS):
        fn()
    calls, started, wall = 0, clock(), time.perf_counter()
    while True:
        fn()
        calls += 1
        if time.perf_counter() - wall >= budget_s and calls >= 3:
            return (clock() - started) / calls


def _flops(fn: Callable[[], None]) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def calibrate(phase: Phase, threads: int = 1, budget_s: float = CALIBRATION_S, cache: dict | None = None) -> PhaseCost:
    """The phase's step and evaluation batch timed (and FLOPs counted) on this
    machine with `threads` torch threads; from `cache` (a dict, updated) when known."""
    entry_key = f"{machine_id(threads)}|{phase.key}"
    if cache is not None and entry_key in cache.get("entries", {}):
        return PhaseCost(**cache["entries"][entry_key])
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        from threadpoolctl import threadpool_limits  # NumPy's BLAS too (numpy_mlp), as in a trial

        blas = threadpool_limits(threads)
    except ImportError:  # a box without it (the GPU check's): BLAS keeps its own count
        blas = None
    try:
        step = phase.make_step()
        evaluate = phase.make_eval() if phase.make_eval is not None else None
        step_flops, eval_flops = phase.flops or (_flops(step), _flops(evaluate) if evaluate else 0.0)
        cost = PhaseCost(step_s=_time(step, budget_s, threads),
                         eval_s=_time(evaluate, budget_s / 2, threads) if evaluate else 0.0,
                         step_flops=step_flops, eval_flops=eval_flops)
    finally:
        torch.set_num_threads(before)
        if blas is not None:
            blas.restore_original_limits()
    if cache is not None:
        cache.setdefault("entries", {})[entry_key] = dict(vars(cost))
    return cost


def measure(workload: Workload, threads: int = 1, budget_s: float = CALIBRATION_S,
            cache: dict | None = None) -> Cost:
    """A trial's seconds, FLOPs and memory (see the module docstring)."""
    seconds = train_flops = eval_flops = 0.0
    for phase in workload.phases:
        c = calibrate(phase, threads, budget_s, cache)
        batches = -(-phase.eval_samples // phase.eval_batch) if phase.eval_samples else 0
        seconds += phase.steps * c.step_s + batches * c.eval_s
        train_flops += phase.steps * c.step_flops
        eval_flops += batches * c.eval_flops
    mem = memory(workload)
    parts = {"weights_and_optimizer": sum(mem.parts[name] for name in WEIGHT_PARTS),
             **{name: n for name, n in mem.parts.items() if name not in WEIGHT_PARTS}}
    return Cost(seconds=seconds, train_flops=train_flops, eval_flops=eval_flops, memory_bytes=mem.bytes,
                models=workload.models, parts=parts)


class Calibrations:
    """The per-machine cache as a context: read once, written back at the end."""

    def __enter__(self) -> dict:
        self.data = _read_cache()
        self.size = len(self.data.get("entries", {}))
        return self.data

    def __exit__(self, *exc) -> None:
        if len(self.data.get("entries", {})) != self.size:
            _write_cache(self.data)
