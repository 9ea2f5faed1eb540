"""Benchmark 7: packed tiny models (`pack:` in sweeps/minimal_ratio.yaml and
sweeps/function_fit.yaml) against one model at a time.

Per-model throughput of the two full studies' own models, in one process on one
thread (a trial's share: 1 CPU), the same configs packed at the spec's K and alone:

- minimal_ratio: the 1-12-12-1 tanh MLP (193 parameters) on 1,000 points, a whole
  `critical_points.run`: full-batch Adam (phase 1), gradient-norm descent by
  double backward (phase 2) and the Hessian analysis with the perturbation ratio.
  Steps are cut to 300 + 200 (no early stop), so one repetition takes seconds; the
  full run's 3,000 + up to 2,000 steps have the same per-step costs.
- function_fit: the deep 1-(5 layers)-1 ReLU net of about 350 parameters on minibatches
  of 100 points, 2,000 Adam steps, evaluations and curves as in the spec.

Then the full minimal_ratio study as a user runs it (`python -m sweeps run
sweeps/minimal_ratio.yaml` in a new process: Ray start, 2 packs of 50 on 2 CPUs,
report), timed once. The target there is the issue's: under 45 s. What limits it:
both phases are compute, not per-op overhead, at 1,000 points a step
(tanh over [K, 1000, 12] and 12 x 12 batched matmuls), so K models cost about K/3
of one model's time.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.record import Figure, median, repeat

REPO = Path(__file__).resolve().parent.parent
TARGET_SPEEDUP = 10.0
TARGET_STUDY_S = 45.0
ALONE = 3  # models timed one at a time (their mean is the unpacked rate)


def _minimal_ratio_seconds(k: int, quick: bool) -> float:
    """Seconds per model of `critical_points.run` for the spec's first k runs, packed
    (k > 1) or alone (k == 1: the mean of ALONE models)."""
    import torch

    from sweeps.schema import load_study
    from trainables import critical_points as cp
    from trainables import function_fit as ff

    cut = {"max_steps": 30 if quick else 300, "gn_max_steps": 20 if quick else 200, "gn_tolerance": 1e-12,
           "eval_every": 100}
    cells = load_study(REPO / "sweeps" / "minimal_ratio.yaml").cells
    cfgs = [ff.parse(cp.CriticalPointsConfig, {**c, **cut}) for c in cells[: max(k, ALONE)]]
    device = torch.device("cpu")
    splits = ff.make_splits(cfgs[0], device)

    def train(group: list, models, names: list[str] | None) -> None:
        cp.run(group if names else group[0], models, splits, lambda m, s: None, names=names)

    return _seconds_per_model(k, cfgs, train)


def _function_fit_seconds(k: int, quick: bool) -> float:
    """Seconds per model of a function_fit run (deep net, square wave) for k seeds."""
    import torch

    from sweeps.schema import load_study
    from trainables import function_fit as ff

    cells = [c for c in load_study(REPO / "sweeps" / "function_fit.yaml").cells
             if c["architecture"] == "deep" and c["target"] == "square_wave"]
    cut = {"max_steps": 200 if quick else 2000}
    cfgs = [ff.parse(ff.FunctionFitConfig, {**c, **cut}) for c in cells[: max(k, ALONE)]]
    device = torch.device("cpu")
    splits = ff.make_splits(cfgs[0], device)

    def train(group: list, models, names: list[str] | None) -> None:
        report = ff.with_curve(lambda m, s: None, ff.module_of(models, names), group[0], device)
        ff.fit(models, splits["train"], {"test": splits["test"]}, [ff.engine_config(c) for c in group], report,
               names=names)

    return _seconds_per_model(k, cfgs, train)


def _seconds_per_model(k: int, cfgs: list, train) -> float:
    """Seconds per model of `train(configs, models, names)`: k configs packed, or
    (k == 1) the mean of ALONE configs trained one at a time. Model building untimed."""
    import torch

    from trainables import function_fit as ff

    device = torch.device("cpu")

    def once(group: list) -> float:
        models = ff.new_models(group, device)
        names = [str(i) for i in range(len(group))] if len(group) > 1 else None
        started = time.perf_counter()
        train(group, models, names)
        return time.perf_counter() - started

    if k == 1:
        return sum(once([c]) for c in cfgs[:ALONE]) / ALONE
    return once(cfgs[:k]) / k


def _spec_pack(name: str) -> int:
    from sweeps.schema import load_study

    return load_study(REPO / "sweeps" / f"{name}.yaml").spec.pack


def study_seconds(quick: bool) -> float:
    """Wall seconds of `python -m sweeps run sweeps/minimal_ratio.yaml` (the smoke
    profile with --quick) in a new process, into a temporary folder."""
    with tempfile.TemporaryDirectory(prefix="gensweep-bench-tiny-") as folder:
        command = [sys.executable, "-m", "sweeps", "run", "sweeps/minimal_ratio.yaml", "--results", folder]
        if quick:
            command += ["--profile", "smoke"]
        started = time.perf_counter()
        subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
        return time.perf_counter() - started


def run(reps: int, quick: bool) -> list[Figure]:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        reps = 1 if quick else reps
        figures = []
        for study, seconds in (("minimal_ratio", _minimal_ratio_seconds), ("function_fit", _function_fit_seconds)):
            k = min(_spec_pack(study), 4) if quick else _spec_pack(study)
            alone = repeat(lambda: seconds(1, quick), reps=reps)
            packed = repeat(lambda: seconds(k, quick), reps=reps)
            figures.append(Figure.of(
                f"tiny_{study}_pack_speedup", [a / p for a, p in zip(alone, packed)], unit="x", target=TARGET_SPEEDUP,
                notes=f"per-model throughput, {k} packed (the spec's pack) vs one at a time, 1 thread; "
                      f"median s/model: alone {median(alone):.3f}, packed {median(packed):.3f}"))
    finally:
        torch.set_num_threads(threads)
    walls = [study_seconds(quick)]
    figures.append(Figure.of("tiny_minimal_ratio_study_s", walls, unit="s", target=TARGET_STUDY_S, higher_is_better=False,
                             notes=("smoke profile (quick)" if quick else "the full study, 100 runs in 2 packs of 50")
                             + ", `python -m sweeps run` in a new process: Ray start, training, report"))
    return figures
