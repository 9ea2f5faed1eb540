"""`gensweep estimate` (sweeps/estimate.py, trainables/cost.py): trial counts, FLOPs
counted from the model, memory, the calibration cache and the one line `run` prints."""

from __future__ import annotations

from pathlib import Path

import pytest

from sweeps import cli
from sweeps import estimate as est
from sweeps.schema import load_study
from trainables import cost
from trainables.engine import EngineConfig

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GENSWEEP_CACHE", str(tmp_path / "cache"))


def test_steps_and_evaluations_follow_the_engine():
    assert cost.engine_steps(EngineConfig(batch_size=64, epochs=3), 1000) == 3 * 16
    assert cost.engine_steps(EngineConfig(batch_size=64, max_steps=50), 1000) == 50
    assert cost.evaluations(EngineConfig(epochs=10, eval_every=3), 1000) == 4  # epochs 3, 6, 9 and the last
    assert cost.evaluations(EngineConfig(epochs=10, eval_every=5), 1000) == 2
    assert cost.evaluations(EngineConfig(batch_size=100, max_steps=25, eval_every=1), 1000) == 3  # 3 epochs


def test_schedule_starts_trials_in_order_on_the_first_free_worker():
    assert est.schedule([5, 4, 3, 3, 3], 2) == 10  # [5, 3] and [4, 3, 3]: the fifth starts at 7
    assert est.schedule([1, 1, 10], 2) == 11  # the long one last waits for a free worker
    assert est.schedule([10, 1, 1], 2) == 10
    assert est.schedule([2.0] * 6, 3) == 4
    assert est.schedule([], 2) == 0


def test_trial_units_are_cells_packs_or_a_tuned_cells_trials():
    l2 = load_study(REPO / "sweeps" / "l2_linear.yaml")  # 21 cells, pack: 8 -> packs of 7
    assert [len(configs) for configs, _ in est.trial_units(l2)] == [7, 7, 7]
    lr = load_study(REPO / "sweeps" / "lr.yaml")  # one cell, 20 search samples, one seed
    assert [(len(c), n) for c, n in est.trial_units(lr)] == [(1, 20)]
    wd_tuned = load_study(REPO / "sweeps" / "wd_tuned.yaml", "quick")
    units = est.trial_units(wd_tuned)
    assert sum(n for _, n in units) == 21  # the quick profile's 21 trials (README)


def test_an_mlp_step_counts_about_three_forward_passes_of_flops(tmp_path):
    study = load_study(REPO / "sweeps" / "l2_mlp.yaml", "smoke")
    result = est.estimate(study, cpus=2, budget_s=0.02)
    cfg = study.cells[0]
    hidden = cfg["hidden"][0]
    forward = 2 * (784 * hidden + hidden * 10)  # FLOPs per image (multiply-adds x 2)
    steps = -(-cfg["train_size"] // cfg["batch_size"]) * cfg["epochs"]
    trained = steps * cfg["batch_size"] * forward * len(study.cells)
    # backward: gradients of the weights (1 forward's worth) and of the hidden layer's input
    assert 2.0 * trained <= result.train_flops <= 3.05 * trained
    assert result.trials == len(study.cells) and result.cells == len(study.cells)
    weights = 784 * hidden + hidden + hidden * 10 + 10
    sgd_momentum = 1
    assert result.memory_parts["weights_and_optimizer"] == weights * 4 * (2 + sgd_momentum)
    assert result.memory_parts["data"] == 70_000 * (784 + 8)  # MNIST, uint8, plus int64 labels
    assert result.cpu_s > est.STUDY_OVERHEAD_S and result.gpu_s > est.STUDY_OVERHEAD_S


def test_calibrations_are_cached_per_machine(monkeypatch):
    study = load_study(REPO / "sweeps" / "l2_mlp.yaml", "smoke")
    first = est.estimate(study, cpus=2, budget_s=0.02)
    assert cost.cache_path().exists()
    timed = []
    monkeypatch.setattr(cost, "_time", lambda fn, budget, threads=1: timed.append(fn) or 1.0)
    again = est.estimate(study, cpus=2, budget_s=0.02)
    assert timed == [] and again.cpu_s == first.cpu_s  # nothing timed again
    monkeypatch.setattr(cost, "machine_id", lambda threads: "another machine")
    est.estimate(study, cpus=2, budget_s=0.02)
    assert timed, "another machine calibrates anew"


def test_packed_tiny_models_and_numpy_have_cost_models():
    for spec, profile in (("minimal_ratio", "smoke"), ("function_fit", "smoke"), ("numpy_mlp", "smoke")):
        result = est.estimate(load_study(REPO / "sweeps" / f"{spec}.yaml", profile), cpus=2, budget_s=0.02)
        assert result is not None and result.train_flops > 0 and result.cpu_s > 0
    mr = est.estimate(load_study(REPO / "sweeps" / "minimal_ratio.yaml", "smoke"), cpus=2, budget_s=0.02)
    assert mr.upper_bound and mr.trials == 1 and mr.cells == 2  # one pack of the 2 smoke runs
    sizes = [784, 500, 250, 100, 10]
    numpy = load_study(REPO / "sweeps" / "numpy_mlp.yaml", "smoke")
    cfg = numpy.cells[0]
    steps = -(-cfg["train_size"] // cfg["batch_size"]) * cfg["epochs"]
    forward = 2 * sum(a * b for a, b in zip(sizes, sizes[1:]))
    result = est.estimate(numpy, cpus=2, budget_s=0.02)
    assert result.train_flops == pytest.approx(3 * forward * cfg["batch_size"] * steps * len(numpy.cells))


def test_the_estimate_command_prints_each_part(capsys):
    assert cli.main(["estimate", str(REPO / "sweeps" / "capacity_mlp.yaml"), "--profile", "smoke", "--gpu", "h200"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("capacity_mlp-smoke: 2 trial(s) (2 result cells)")
    for part in ("compute:", "memory per trial:", "this machine:", "one H200:", "assumed efficiency of 10%"):
        assert part in out


def test_a_long_study_is_warned_about_and_a_failed_estimate_does_not_stop_a_run(monkeypatch, capsys):
    long = est.Estimate(study="x", trials=3, cells=3, train_flops=1e15, eval_flops=0, memory_bytes=1, memory_parts={},
                        cpu_s=2 * 3600, slots=2, threads=1, gpu="h100", gpu_s=60, upper_bound=False)
    assert est.warning(long).startswith("warning: x will take about 2.0 h here")
    assert est.warning(est.Estimate(**{**vars(long), "cpu_s": 600})) is None
    study = load_study(REPO / "sweeps" / "l2_mlp.yaml", "smoke")
    monkeypatch.setattr(est, "estimate", lambda study: (_ for _ in ()).throw(RuntimeError("no such op")))
    cli._announce(study)
    assert capsys.readouterr().out.strip() == "estimate: not available (RuntimeError: no such op)"
