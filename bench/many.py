"""Benchmark 8: a study of 1,000 short trials on 2 CPUs, as a user runs it
(`python -m sweeps run SPEC` in a new process: Ray start, every trial, the report).

The trials: function_fit, one 1-116-1 ReLU net (349 parameters) per seed fitting
sinc on 1,000 points, STEPS (300) Adam steps with an evaluation every 100 (about
0.15 s of compute each on one core here), 1 CPU each, two at a time; unpacked (one
seed per trial) and packed (`pack: 50`: 20 trials of 50 seeds).

- wall / ideal at 1,000 trials, where ideal = the trials' own compute seconds (the
  engine's `time_s` at its last report, trials.parquet's wall_s: a pack's once) / 2, and
  wall is the CLI process from start to exit (Ray start, data, the estimate's
  calibration, scheduling, checkpoints, Tune's experiment snapshots, the report);
  the notes also give it from the run's "starting" line (Ray up) to its end;
- the driver's peak memory (VmHWM of the CLI process, Linux /proc) at 100 and 1,000
  trials, and its growth exponent log(peak_1000 / peak_100) / log(10): below 1 is
  sub-linear.

What it needed: Tune gets the grid's trials from a searcher (sweeps/gridorder.py;
its grid_search deep-copied the whole grid per trial: 20 s of a 1,000-trial start),
and every trial's status comes from one parse of the experiment state (once per
trial, the report of 1,000 trials took over 5 min). What it still pays: Tune
snapshots the whole experiment (every trial's state, about 38 KB each here) after
every trial checkpoint, which keeps result rows and checkpoints in step for an exact
resume (sweeps/tuneconfig.py run_config), so the time per trial grows with the trials
already in the experiment (ray#11233).

    python -m bench --only many        # about 10 min
"""

from __future__ import annotations

import math
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.record import Figure

REPO = Path(__file__).resolve().parent.parent
TARGET_UNPACKED = 1.3
TARGET_PACKED = 1.1
STEPS = 300  # about 0.15 s of compute per trial on one core here
PACK = 50

SPEC = """\
name: many
family: function_fit
description: benchmark 8, 1,000 short trials (bench/many.py)
fixed: {{params: 350, shape: [1], target: sinc, max_steps: {steps}, eval_every: 100, train_size: 1000,
        test_size: 1000, curve_points: 50}}
seeds: {seeds}
resources: {{cpu: 1}}
pack: {pack}
"""


def peak_rss_mb(pid: int) -> float | None:
    """VmHWM (the process's peak resident set) in MiB, or None once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def run_study(trials: int, pack: int, steps: int) -> dict:
    """One study through the CLI: its wall seconds, ideal seconds and the driver's peak MiB."""
    import pandas as pd

    with tempfile.TemporaryDirectory(prefix="bench-many-") as tmp:
        spec = Path(tmp) / "many.yaml"
        spec.write_text(SPEC.format(steps=steps, seeds=list(range(trials)), pack=pack))
        results = Path(tmp) / "results"
        started = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "sweeps", "run", str(spec), "--results", str(results),
                                 "--progress-every", "600"], cwd=REPO, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        peak = [0.0]

        def sample() -> None:
            while proc.poll() is None:
                peak[0] = max(peak[0], peak_rss_mb(proc.pid) or 0.0)
                time.sleep(0.5)

        watcher = threading.Thread(target=sample, daemon=True)
        watcher.start()
        lines, ray_up = [], None
        for line in proc.stdout:  # the moment Ray is up and Tune starts: the "starting ..." line
            lines.append(line)
            if ray_up is None and line.startswith("starting "):
                ray_up = time.perf_counter() - started
        proc.wait()
        wall = time.perf_counter() - started
        output = "".join(lines)
        watcher.join()
        if proc.returncode != 0:
            raise RuntimeError(f"the study failed (exit {proc.returncode}):\n{output[-3000:]}")
        trials = pd.read_parquet(results / "many" / "trials.parquet")  # wall_s: the engine's time_s at the end
        per_trial = trials.groupby("pack_id")["wall_s"].first() if pack > 1 else trials["wall_s"]
        return {"wall_s": wall, "ideal_s": float(per_trial.sum()) / 2, "peak_mb": peak[0], "trials": len(per_trial),
                "after_ray_s": wall - (ray_up or 0.0)}


def run(reps: int, quick: bool) -> list[Figure]:
    big, small = (40, 4) if quick else (1000, 100)
    steps = 100 if quick else STEPS
    unpacked = run_study(big, 1, steps)
    packed = run_study(big, PACK if not quick else 10, steps)
    small_run = run_study(small, 1, steps)
    growth = math.log(unpacked["peak_mb"] / small_run["peak_mb"]) / math.log(big / small)

    def what(r: dict) -> str:
        return (f"wall {r['wall_s']:.0f} s, ideal {r['ideal_s']:.0f} s ({r['trials']} trials' compute / 2), "
                f"{r['after_ray_s'] / r['ideal_s']:.2f}x from Ray's start on, driver peak {r['peak_mb']:.0f} MiB")

    return [
        Figure.of("many_trials_ratio", [unpacked["wall_s"] / unpacked["ideal_s"]], unit="x", target=TARGET_UNPACKED,
                  higher_is_better=False, notes=f"{big} function_fit trials of {steps} steps, unpacked: {what(unpacked)}"),
        Figure.of("many_trials_packed_ratio", [packed["wall_s"] / packed["ideal_s"]], unit="x", target=TARGET_PACKED,
                  higher_is_better=False, notes=f"the same {big} seeds packed {PACK if not quick else 10} per trial: "
                                                f"{what(packed)}"),
        Figure.of("driver_peak_mb_100", [small_run["peak_mb"]], unit="MiB", notes=f"{small} trials: {what(small_run)}"),
        Figure.of("driver_peak_mb_1000", [unpacked["peak_mb"]], unit="MiB", notes=f"{big} trials"),
        Figure.of("driver_memory_growth", [growth], unit="", target=1.0, higher_is_better=False,
                  notes=f"log(peak at {big} / peak at {small}) / log({big // small}): below 1 is sub-linear"),
    ]
