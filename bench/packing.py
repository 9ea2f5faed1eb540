"""Benchmark 6: packed trials (`pack: K`) against one model per trial.

Per-model training throughput of small MLPs (784-128-10, SGD, batch 64, 2,000 MNIST
images, 2 epochs, 1,000 test images: the size of a quick profile's cell), measured
two ways in the same run:

- study: cells per second of wall time through `sweeps.runner.run_study` on 2 CPUs
  (Ray started once, before; each study writes its report, as users' studies do).
  One model per trial: 16 cells as 16 trials, 1 CPU each, two at a time. K=8: the
  same 16 cells as 2 packed trials, 1 CPU each, side by side. K=32: 32 cells as one
  packed trial with both CPUs. This is the comparison users see: a trial's process,
  imports, data, checkpoints and bookkeeping are paid once per pack.
- compute: model-steps per second inside one process on one thread, `engine.fit` of
  one model vs `engine.fit` of a `PackedModels` of K models (no Ray, no evaluation): what
  vectorizing buys once trial overheads are gone. On a CPU a 784-128-10 step already
  keeps the core's vector units busy, so this stays near 1x; on a GPU a small
  model's step is launch-bound and packing multiplies throughput (docs/performance.md).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from bench.record import Figure, median, repeat
from bench.raystudy import run_once, start_ray

SPEC = """\
name: bench-pack-{name}
family: classifier
description: packed-trial benchmark (bench/packing.py)
fixed: {{dataset: mnist, model: mlp, hidden: [128], train_size: {train_size}, test_size: {test_size}, epochs: {epochs},
        batch_size: 64, optimizer: sgd, lr: 0.05}}
grid: {{weight_decay: [0.0, 0.0001, 0.001, 0.01]}}
seeds: {seeds}
pack: {pack}
resources: {{cpu: {cpu}}}
"""

FULL = {"train_size": 2000, "test_size": 1000, "epochs": 2}
QUICK = {"train_size": 300, "test_size": 200, "epochs": 1}
# (name, seeds, pack, CPUs per trial): 4 decays x seeds cells.
LAYOUTS = (("unpacked", 4, 1, 1), ("k8", 4, 8, 1), ("k32", 8, 32, 2))
UNPACKED_REPS = 3  # a 16-trial study takes about 35 s: what fits the 15-minute `make bench`
TARGET_K8 = 2.5


def _write(folder: Path, name: str, seeds: int, pack: int, cpu: int, sizes: dict) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(SPEC.format(name=name, seeds=list(range(seeds)), pack=pack, cpu=cpu, **sizes))
    return path


def _study_rates(reps: int, quick: bool) -> dict[str, list[float]]:
    """Cells per second of each layout's study, per repetition (Ray up once)."""
    import ray

    tmp = Path(tempfile.mkdtemp(prefix="gensweep-bench-pack-"))
    sizes = QUICK if quick else FULL
    rates: dict[str, list[float]] = {}
    try:
        start_ray(2)
        try:
            for name, seeds, pack, cpu in LAYOUTS:
                spec = _write(tmp, name, 1 if quick else seeds, min(pack, 4) if quick else pack, cpu, sizes)
                cells = 4 * (1 if quick else seeds)
                runs = 1 if quick else (min(reps, UNPACKED_REPS) if pack == 1 else reps)
                run_once(spec, tmp / f"{name}-warmup", sample_memory=False)  # worker pool, page cache, imports
                rates[name] = [cells / run_once(spec, tmp / f"{name}-{i}", sample_memory=False).wall_s
                               for i in range(runs)]
        finally:
            ray.shutdown()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return rates


def compute_rates(reps: int, quick: bool) -> dict[int, list[float]]:
    """Model-steps per second in-process on one thread, for K = 1, 8, 32."""
    import torch

    from trainables import data as D
    from trainables.classifier import ClassifierConfig, make_splits
    from trainables.engine import EngineConfig, fit
    from trainables.models import build_model
    from trainables.packed import PackedModels

    torch.set_num_threads(1)
    sizes = QUICK if quick else FULL
    data_cfg = ClassifierConfig(train_size=sizes["train_size"], test_size=sizes["test_size"])
    train = make_splits(D.load_dataset("mnist"), data_cfg, torch.device("cpu"))["train"]  # as a trial builds it

    def models(k: int) -> tuple[list, list[EngineConfig]]:
        cfgs = [EngineConfig(optimizer="sgd", lr=0.05, weight_decay=1e-4 * i, seed=i, batch_size=64,
                             epochs=sizes["epochs"]) for i in range(k)]
        built = []
        for cfg in cfgs:
            torch.manual_seed(cfg.seed)
            built.append(build_model("mlp", hidden=[128]))
        return built, cfgs

    def run(k: int) -> float:
        built, cfgs = models(k)
        started = time.perf_counter()
        if k == 1:
            fit(built[0], train, {}, cfgs[0], lambda m, s: None)
        else:
            fit(PackedModels(built), train, {}, cfgs, lambda r, s: None, names=[str(i) for i in range(k)])
        steps = cfgs[0].epochs * -(-len(train) // 64)
        return k * steps / (time.perf_counter() - started)

    return {k: repeat(lambda: run(k), reps=1 if quick else reps) for k in (1, 8, 32)}


def run(reps: int, quick: bool) -> list[Figure]:
    study = _study_rates(reps, quick)
    base = median(study["unpacked"])
    compute = compute_rates(reps, quick)
    one = median(compute[1])
    cells = "16 cells" if not quick else "4 cells (quick)"
    return [
        Figure.of("packed_unpacked_cells_per_s", study["unpacked"], unit="cells/s",
                  notes=f"{cells} of a 784-128-10 MLP as one trial each, 1 CPU, 2 at a time; study wall incl. report"),
        Figure.of("packed_k8_study_speedup", [r / base for r in study["k8"]], unit="x", target=TARGET_K8,
                  notes="per-model throughput (cells/s) of the same cells packed 8 per trial vs one model per trial"),
        Figure.of("packed_k32_study_speedup", [r / base for r in study["k32"]], unit="x",
                  notes="32 cells packed into one trial with both CPUs vs one model per trial (per-model rates)"),
        Figure.of("packed_k8_compute_speedup", [r / one for r in compute[8]], unit="x",
                  notes="in-process, 1 thread, no evaluation: model-steps/s of 8 packed models vs engine.fit of one"),
        Figure.of("packed_k32_compute_speedup", [r / one for r in compute[32]], unit="x",
                  notes="as above with 32 packed models"),
    ]
