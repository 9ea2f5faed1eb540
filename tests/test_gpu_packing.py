"""Fractional GPUs without a GPU: Ray with logical GPUs schedules 0.25-GPU trials four
to a GPU, all at once; trials record the GPU id Ray gave them, fall back to the CPU
(one warning) because CUDA is absent, and say so in `device`. A spec asking for more
GPUs than the cluster has is refused before anything runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from sweeps.runner import AUTO_GPU_SHARES, auto_gpu_share

REPO = Path(__file__).resolve().parent.parent

SPEC = """\
name: gpu-packing
family: classifier
description: eight small MLPs, a quarter GPU each
fixed: {{dataset: mnist, model: mlp, hidden: [32], train_size: 600, test_size: 200, epochs: 3, batch_size: 50}}
grid: {{}}
seeds: [0, 1, 2, 3, 4, 5, 6, 7]
resources: {{cpu: 1, gpu: {gpu}}}
"""

# Runs in its own process: Ray starts in it with 8 logical CPUs and 2 logical GPUs.
DRIVER = textwrap.dedent("""
    import json, sys
    import ray
    from ray.tune import Callback
    from analysis.report import write_report
    from sweeps.runner import run_study, trial_resources
    from sweeps.schema import load_study

    class Concurrency(Callback):
        running = peak = 0
        def on_trial_start(self, iteration, trials, trial, **info):
            Concurrency.running += 1
            Concurrency.peak = max(Concurrency.peak, Concurrency.running)
        def on_trial_complete(self, iteration, trials, trial, **info):
            Concurrency.running -= 1

    ray.init(num_cpus=8, num_gpus=2, include_dashboard=False, logging_level="WARNING")
    auto = trial_resources(load_study(sys.argv[3]))
    outcome = run_study(load_study(sys.argv[1]), sys.argv[2], callbacks=[Concurrency()], progress_every=600,
                        report=write_report)
    print("RESULT " + json.dumps({"exit": outcome.exit_code, "folder": str(outcome.folder),
                                  "peak": Concurrency.peak, "auto_gpu": auto["gpu"]}))
""")


@pytest.fixture(scope="module")
def packed_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gpu")
    (tmp / "quarter.yaml").write_text(SPEC.format(gpu=0.25))
    (tmp / "auto.yaml").write_text(SPEC.format(gpu="auto"))
    # Ray folds repeated log lines from different trials into one; count them all here.
    env = {**os.environ, "RAY_DEDUP_LOGS": "0"}
    proc = subprocess.run([sys.executable, "-c", DRIVER, str(tmp / "quarter.yaml"), str(tmp / "results"),
                           str(tmp / "auto.yaml")], cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT "):]), proc


@pytest.mark.study  # runs a study on Ray: left out of `make test-fast`
def test_eight_quarter_gpu_trials_run_at_once_four_per_gpu(packed_run):
    result, _ = packed_run
    assert result["exit"] == 0
    assert result["peak"] == 8  # all eight started before any finished
    trials = pd.read_parquet(Path(result["folder"]) / "trials.parquet")
    assert len(trials) == 8 and (trials["status"] == "ok").all()
    assert sorted(trials["gpu_ids"]) == ["0"] * 4 + ["1"] * 4


@pytest.mark.study  # runs a study on Ray: left out of `make test-fast`
def test_without_cuda_trials_fall_back_to_cpu_with_one_warning_each(packed_run):
    result, proc = packed_run
    trials = pd.read_parquet(Path(result["folder"]) / "trials.parquet")
    assert (trials["device"] == "cpu").all() and (trials["gpu_name"] == "").all()
    warnings = [line for line in (proc.stdout + proc.stderr).splitlines() if "CUDA is not available" in line]
    assert len(warnings) == 8, warnings


@pytest.mark.study  # runs a study on Ray: left out of `make test-fast`
def test_gpu_auto_gives_small_models_an_eighth_of_a_gpu(packed_run):
    result, _ = packed_run
    assert result["auto_gpu"] == 0.125  # the 32-unit MLP has 25k parameters


def test_auto_share_rule():
    assert [auto_gpu_share(n) for n in (10_000, 1_000_000, 3_584_202, 50_000_000, 10**9)] == [
        0.125, 0.125, 0.25, 0.5, 1.0]
    assert [share for _, share in AUTO_GPU_SHARES] == sorted(share for _, share in AUTO_GPU_SHARES)


@pytest.mark.study  # runs a study on Ray: left out of `make test-fast`
def test_more_gpus_than_the_cluster_has_is_refused_before_launch(tmp_path):
    spec = tmp_path / "greedy.yaml"
    spec.write_text(SPEC.format(gpu=1))
    results = tmp_path / "results"
    proc = subprocess.run([sys.executable, "-m", "sweeps", "run", str(spec), "--results", str(results)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    error = proc.stderr.strip().splitlines()[-1]
    assert error.startswith("error: ") and "resources.gpu: 1 GPU per trial" in error and "no node" in error
    assert not results.exists()  # nothing written, nothing launched
