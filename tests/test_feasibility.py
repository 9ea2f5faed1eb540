"""sweeps/feasibility.py and trainables/cost.py's `memory`: a trial whose memory
estimate exceeds what it would get (this machine's RAM on CPU, its share of a GPU)
is refused at validation in one line naming the spec key and the numbers, without
building the model for real.

Huge models are put into a loaded study's cells directly (`with_values`): loading a
spec validates each cell, and the classifier's validation runs the model on a tiny
batch, which builds it for real.

    .venv/bin/python -m pytest -q tests/test_feasibility.py
"""

from __future__ import annotations

import copy
import dataclasses
import resource
from pathlib import Path

import pytest
import yaml

from sweeps import cli, feasibility
from sweeps.estimate import bytes_text
from sweeps.feasibility import check_memory, count_text
from sweeps.schema import Study, load_study
from sweeps.specyaml import SpecError
from trainables import cost
from trainables.families import get_family

REPO = Path(__file__).resolve().parent.parent
SHIPPED = sorted((REPO / "sweeps").glob("*.yaml")) + sorted((REPO / "examples").glob("*.yaml"))
GB = 10**9
HUGE = 100_000_000  # hidden units: 79.5 B parameters
MNIST_BYTES = 70_000 * (784 + 8)  # the dataset a classifier trial holds: uint8 images, int64 labels

# A tiny classifier study (tests/test_bad_input.py's BASE); each test changes one thing.
BASE = {
    "name": "feas",
    "family": "classifier",
    "fixed": {"dataset": "mnist", "model": "mlp", "hidden": [8], "epochs": 1, "train_size": 64, "test_size": 64,
              "batch_size": 32, "lr": 0.05},
    "grid": {"weight_decay": [0, 0.01]},
    "seeds": [0],
}


@pytest.fixture(autouse=True)
def no_gpu_here(tmp_path, monkeypatch):
    """The same answers on a GPU box: no CUDA device unless a test gives one; and a
    private calibration cache."""
    monkeypatch.setattr(feasibility, "cuda_memory", lambda: None)
    monkeypatch.setenv("GENSWEEP_CACHE", str(tmp_path / "cache"))


def study_of(tmp_path: Path, **changes) -> Study:
    """BASE with top-level keys replaced, written to tmp_path and loaded."""
    spec = {**copy.deepcopy(BASE), **changes}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return load_study(path)


def with_values(study: Study, where: str, old, new) -> Study:
    """The study with the value `old` of `hidden` replaced by `new` in its cells and
    at `where` in its spec ("fixed", or a grid axis), skipping the family's check."""
    spec = study.spec.model_dump()
    if where == "fixed":
        spec["fixed"]["hidden"] = new
    else:
        spec["grid"][where] = [_replaced(v, old, new) for v in spec["grid"][where]]
    cells = [{**c, "hidden": new} if c["hidden"] == old else c for c in study.cells]
    return study.model_copy(update={"spec": type(study.spec)(**spec), "cells": cells})


def _replaced(value, old, new):
    if isinstance(value, dict):
        return {**value, "hidden": new} if value.get("hidden") == old else value
    return new if value == old else value


def refusal(study: Study, **kwargs) -> str:
    with pytest.raises(SpecError) as caught:
        check_memory(study, **kwargs)
    message = str(caught.value)
    assert "\n" not in message
    return message


def mlp_numbers(hidden: int, batch: int = 32, eval_batch: int = 256, models: int = 1) -> dict:
    """The memory of the classifier's `mlp` with one hidden layer, by formula (float32)."""
    params = (784 * hidden + hidden + hidden * 10 + 10) * models
    per_sample = 784 + hidden + hidden + 10  # Flatten, Linear, ReLU, Linear outputs
    activations = max(2 * batch, eval_batch) * per_sample * models  # kept for backward + gradients; an eval batch
    parts = {"weights": 4 * params, "gradients": 4 * params, "optimizer state": 4 * params,  # SGD momentum
             "activations": 4 * activations, "data": MNIST_BYTES}
    return {"params": params, "parts": parts, "total": sum(parts.values())}


def test_a_78b_parameter_mlp_is_refused_with_its_numbers_and_nothing_allocated(tmp_path):
    study = with_values(study_of(tmp_path), "fixed", [8], [HUGE])
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # peak so far, bytes
    message = refusal(study, host_bytes=24 * GB)
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_before
    n = mlp_numbers(HUGE)
    assert n["params"] == 79_500_000_010
    parts = ", ".join(f"{name} {bytes_text(b)}" for name, b in n["parts"].items())
    assert message == (f"{study.source}: fixed.hidden: a trial needs {bytes_text(n['total'])} "
                       f"({count_text(n['params'])} parameters: {parts}) but this machine has 24 GB; "
                       f"use a smaller model or a machine with more memory")
    assert "79.5 B parameters: weights 318 GB, gradients 318 GB" in message
    assert grown < 500 * 10**6, f"sizing the model grew the peak memory by {grown / 1e6:.0f} MB"
    assert cost.memory(get_family("classifier").workload(study.cells[:1])).bytes == n["total"]


def test_the_key_named_is_where_the_cell_gets_its_model(tmp_path):
    fixed = {k: v for k, v in BASE["fixed"].items() if k != "hidden"}
    grid = with_values(study_of(tmp_path, grid={"hidden": [[8], [16]]}, fixed=fixed), "hidden", [16], [HUGE])
    assert ": grid.hidden[1]: a trial needs" in refusal(grid, host_bytes=24 * GB)
    variants = [{"name": "small", "hidden": [8]}, {"name": "big", "hidden": [16]}]
    arch = with_values(study_of(tmp_path, grid={"arch": variants, "weight_decay": [0, 0.01]}, fixed=fixed),
                       "arch", [16], [HUGE])
    assert ": grid.arch[1].hidden: a trial needs" in refusal(arch, host_bytes=24 * GB)


def test_a_trial_gets_its_share_of_a_gpu(tmp_path):
    hidden = 250_000  # 199 M parameters: about 3 GB with SGD momentum, activations and the data
    study = with_values(study_of(tmp_path, resources={"cpu": 1, "gpu": 0.25}), "fixed", [8], [hidden])
    need = mlp_numbers(hidden)["total"]
    assert 2.5 * GB < need < 3.5 * GB
    message = refusal(study, gpu_bytes=8 * GB)
    assert f"a trial needs {bytes_text(need)} (" in message
    assert "but its share of a GPU is 2 GB (resources.gpu 0.25 x 8 GB); use a smaller model, a larger GPU share" \
        in message
    check_memory(study, gpu_bytes=16 * GB)  # 4 GB: fits
    check_memory(study, host_bytes=1)  # no GPU known here: the study runs elsewhere, not checked
    auto = with_values(study_of(tmp_path, resources={"cpu": 1, "gpu": "auto"}), "fixed", [8], [HUGE])
    assert "but its share of a GPU is 80 GB (resources.gpu auto: 1 x 80 GB)" in refusal(auto, gpu_bytes=80 * GB)
    on_cpu = with_values(study_of(tmp_path), "fixed", [8], [hidden])
    assert "but this machine has 2 GB" in refusal(on_cpu, host_bytes=2 * GB)  # on CPU: the node's memory


def test_a_pack_holds_k_models(tmp_path):
    single = study_of(tmp_path, seeds=[0, 1])
    packed = study_of(tmp_path, seeds=[0, 1], pack=4)  # weight_decay x seeds: one trial of 4 models
    workload = get_family("classifier").workload
    one = cost.memory(workload(single.cells[:1]))
    four = cost.memory(workload(packed.cells))
    assert four.parameters == 4 * one.parameters == 4 * mlp_numbers(8)["params"]
    for part in ("weights", "gradients", "optimizer_state", "activations"):
        assert four.parts[part] == 4 * one.parts[part]
    assert four.parts["data"] == one.parts["data"]  # one dataset per trial
    between = (one.bytes + four.bytes) // 2
    check_memory(single, host_bytes=between)
    message = refusal(packed, host_bytes=between)
    assert f"a trial needs {bytes_text(four.bytes)} ({count_text(four.parameters)} parameters in 4 models:" in message
    assert message.endswith("(or fewer cells per trial: pack)")


@pytest.mark.parametrize("spec", SHIPPED, ids=lambda p: p.stem)
@pytest.mark.parametrize("profile", [None, "quick"])
def test_every_shipped_spec_fits_this_machine(spec, profile):
    check_memory(load_study(spec, profile))


def test_the_memory_only_estimate_is_measures(tmp_path):
    study = study_of(tmp_path)
    workload = get_family("classifier").workload(study.cells[:1])
    mem = cost.memory(workload)
    measured = cost.measure(workload, budget_s=0.01)
    assert mem.bytes == measured.memory_bytes == mlp_numbers(8)["total"]
    assert measured.parts == {"weights_and_optimizer": sum(mem.parts[p] for p in cost.WEIGHT_PARTS),
                              "activations": mem.parts["activations"], "data": mem.parts["data"]}


def test_families_without_torch_models_or_cost_models(tmp_path):
    numpy = load_study(REPO / "sweeps" / "numpy_mlp.yaml", "smoke")
    assert ": a trial needs" in refusal(numpy, host_bytes=1000)  # its own sizes, no torch model
    check_memory(load_study(REPO / "sweeps" / "interpolation.yaml", "smoke"), host_bytes=1)  # no cost model


def test_a_trial_the_cost_model_cannot_size_is_left_to_the_run(tmp_path, monkeypatch):
    def unsizable(configs):
        raise NotImplementedError("no meta kernel for a plugin's op")

    family = dataclasses.replace(get_family("classifier"), workload=unsizable)
    monkeypatch.setattr(feasibility, "get_family", lambda name: family)
    check_memory(study_of(tmp_path), host_bytes=1)


def test_every_command_that_loads_a_spec_refuses_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(feasibility, "physical_memory", lambda: 10**6)  # a 1 MB machine
    monkeypatch.setenv("RAY_AUTH_MODE", "token")  # what `run` sets; restored afterwards
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(BASE, sort_keys=False))
    for command in (["validate", str(path)], ["estimate", str(path)], ["status", str(path)],
                    ["submit", str(path), "--no-wait"], ["run", str(path), "--results", str(tmp_path / "results")]):
        assert cli.main(command) == cli.EXIT_BAD_INPUT
        err = capsys.readouterr().err
        assert err.startswith(f"error: {path}: fixed.hidden: a trial needs ") and err.count("\n") == 1
        assert "but this machine has 1 MB" in err
    assert not (tmp_path / "results").exists()
