"""Packed tiny models (spec `pack: K` for the function_fit and critical_points
families): K regressions stepped together by one vmapped engine step give every
model the metrics it gets alone, within 1e-5 (float32, CPU). That covers the
gradient-norm phase (each model stops at its own step and is frozen while the
others go on), the vmapped Hessian analysis, the perturbation ratio, a member that
diverges in phase 1, and a restart in phase 2."""

from __future__ import annotations

import math

import pytest
import torch

from sweeps.planner import packs_for
from sweeps.schema import load_study
from trainables import critical_points as cp
from trainables import function_fit as ff
from trainables.contract import MEMBERS_KEY
from trainables.packed import PackedModels

CPU = torch.device("cpu")
TOL = 1e-5
COMPARED = ("train_loss", "test_loss", "gap_loss", "weight_norm", "grad_norm", "running_loss", "time_s")


def close(a, b) -> bool:
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return abs(a - b) <= TOL * max(1.0, abs(a))


def alone_and_packed(run_one, run_pack, configs):
    """Each config's reports alone, and the pack's reports split per member:
    ([rows of config i], {id: [rows]})."""
    ids = [f"cell{i}" for i in range(len(configs))]
    alone = [run_one(c) for c in configs]
    reports = run_pack(configs, ids)
    members = {i: [] for i in ids}
    for report in reports:
        for name, row in report[MEMBERS_KEY].items():
            members[name].append(row)
    return alone, [members[i] for i in ids], reports


def assert_same_rows(alone: list[dict], packed: list[dict], keys=COMPARED, exact=("epoch", "step", "status")):
    assert [tuple(r[k] for k in exact) for r in alone] == [tuple(r[k] for k in exact) for r in packed]
    for a, p in zip(alone, packed):
        assert set(a) == set(p)
        for key in keys:
            if key == "time_s" or key not in a:
                continue  # wall time: the pack's own
            assert close(a[key], p[key]), (key, a[key], p[key])
        if "steps" in a:
            assert a["steps"]["step"] == p["steps"]["step"]
            assert all(close(x, y) for x, y in zip(a["steps"]["loss"], p["steps"]["loss"]))
            assert all(close(x, y) for x, y in zip(a["steps"]["grad_norm"], p["steps"]["grad_norm"]))


# ---------------------------------------------------------------------------
# function_fit


def ff_configs() -> list[dict]:
    base = {"hidden": [6, 6], "train_size": 64, "test_size": 50, "batch_size": 16, "max_steps": 120,
            "eval_every": 10, "log_every_steps": 7, "curve_points": 20, "target": "square_wave"}
    return [ff.validate({**base, "seed": seed, "lr": lr}) for seed, lr in ((0, 3e-3), (1, 3e-3), (2, 1e-2))]


def ff_run(configs: list[dict], ids: list[str] | None) -> list[dict]:
    """function_fit.train_packed's body, without Ray: every report."""
    cfgs = [ff.parse(ff.FunctionFitConfig, c) for c in configs]
    splits = ff.make_splits(cfgs[0], CPU)
    models = ff.new_models(cfgs, CPU)
    reports: list[dict] = []
    report = ff.with_curve(lambda m, s: reports.append(m), ff.module_of(models, ids), cfgs[0], CPU)
    ff.fit(models, splits["train"], {"test": splits["test"]}, [ff.engine_config(c) for c in cfgs], report, names=ids)
    return reports


def test_function_fit_packed_equals_alone():
    alone, packed, _ = alone_and_packed(lambda c: ff_run([c], None), ff_run, ff_configs())
    for a, p in zip(alone, packed):
        assert len(a) == 3  # 120 steps, 4 per epoch (30 epochs): a report every 10 epochs
        assert_same_rows(a, p)
        assert a[-1]["curve_x"] == p[-1]["curve_x"]
        assert max(abs(x - y) for x, y in zip(a[-1]["curve_y"], p[-1]["curve_y"])) < TOL
    # the models are their own: different seeds and lr, different fits
    assert len({round(a[-1]["train_loss"], 6) for a in alone}) == 3


# ---------------------------------------------------------------------------
# critical_points


def cp_configs(lrs=(3e-3, 3e-3, 3e-3, 3e-3)) -> list[dict]:
    base = {"hidden": [4, 4], "train_size": 64, "test_size": 64, "max_steps": 150, "eval_every": 50,
            "gn_max_steps": 300, "gn_tolerance": 1.5e-2, "gn_lr": 3e-2, "log_every_steps": 10,
            "perturb_samples": 200}  # seeds 0-3 stop at steps 126, 0, never, never (measured)
    return [cp.validate({**base, "seed": seed, "lr": lr}) for seed, lr in enumerate(lrs)]


def cp_run(configs: list[dict], ids: list[str] | None, resume: dict | None = None, states: list | None = None):
    """critical_points.train_packed's body, without Ray: every report."""
    cfgs = [ff.parse(cp.CriticalPointsConfig, c) for c in configs]
    splits = ff.make_splits(cfgs[0], CPU)
    models = ff.new_models(cfgs, CPU)
    reports: list[dict] = []

    def on_epoch(metrics, state):
        reports.append(metrics)
        if states is not None:
            states.append(state)

    cp.run(cfgs if ids else cfgs[0], models, splits, on_epoch, resume=resume, names=ids)
    return reports


ANALYSIS = ("critical_loss", "grad_norm_exact", "minimal_ratio", "minimal_ratio_curved", "minimal_ratio_perturb",
            "eig_min", "eig_max")


def test_critical_points_packed_equals_alone_with_its_own_stopping_step():
    alone, packed, reports = alone_and_packed(lambda c: cp_run([c], None), cp_run, cp_configs())
    gn_steps = []
    for a, p in zip(alone, packed):
        assert [r["phase"] for r in a] == [r["phase"] for r in p]
        assert_same_rows(a, p, keys=(*COMPARED, "last_grad_norm"))
        last_a, last_p = a[-1], p[-1]
        assert last_a["converged"] == last_p["converged"] and last_a["gn_steps"] == last_p["gn_steps"]
        for key in ANALYSIS:
            assert close(last_a[key], last_p[key]), (key, last_a[key], last_p[key])
        assert max(abs(x - y) for x, y in zip(last_a["eigenvalues"], last_p["eigenvalues"])) < TOL
        assert (last_a["n_positive"], last_a["n_negative"]) == (last_p["n_positive"], last_p["n_negative"])
        gn_steps.append(last_a["gn_steps"])
    # the case this test is for: models of one pack that stop at different steps
    assert len(set(gn_steps)) >= 2, gn_steps
    assert any(r[-1]["converged"] for r in alone) and 0 <= min(gn_steps) < 300
    assert reports[-1]["status"] == "ok" and all(r["status"] == "running" for r in reports[:-1])


def test_a_member_that_diverges_in_phase_one_is_left_out_of_phase_two():
    configs = cp_configs(lrs=(3e-3, 1e4, 3e-3))
    alone, packed, _ = alone_and_packed(lambda c: cp_run([c], None), cp_run, configs)
    assert alone[1][-1]["status"] == packed[1][-1]["status"] == "diverged"
    assert len(packed[1]) == len(alone[1])
    for i in (0, 2):
        assert_same_rows(alone[i], packed[i])
        assert close(alone[i][-1]["minimal_ratio"], packed[i][-1]["minimal_ratio"])


def test_a_pack_restarted_in_phase_two_ends_as_it_would_have():
    configs = cp_configs()
    ids = [f"cell{i}" for i in range(len(configs))]
    states: list = []
    whole = cp_run(configs, ids, states=states)
    # the first report of phase 2 whose state still holds every member
    k = next(i for i, r in enumerate(whole) if any(m.get("phase") == "min_grad_norm" for m in r[MEMBERS_KEY].values()))
    assert states[k]["phase"] == "min_grad_norm" and states[k]["members"] == ids
    again = cp_run(configs, ids, resume=states[k])
    last = {n: r for rep in whole for n, r in rep[MEMBERS_KEY].items() if r["status"] == "ok"}
    last_again = {n: r for rep in again for n, r in rep[MEMBERS_KEY].items() if r["status"] == "ok"}
    assert set(last_again) <= set(last) and last_again
    for name, row in last_again.items():
        assert row["step"] == last[name]["step"] and close(row["minimal_ratio"], last[name]["minimal_ratio"])


def test_the_perturbation_ratio_is_near_one_at_a_minimum_and_counts_raised_losses():
    # a quadratic bowl with one negative direction: half the directions raise it, roughly
    hess = torch.diag(torch.tensor([1.0, 1.0, -1.0, -1.0], dtype=torch.float64))
    loss = lambda t: 0.5 * t @ hess @ t  # noqa: E731
    theta = torch.zeros(4, dtype=torch.float64)
    ratio = cp.perturbation_ratio(loss, theta, 4000, 1e-2, seed=0)
    assert 0.45 < ratio < 0.55
    bowl = lambda t: 0.5 * t @ t  # noqa: E731
    assert cp.perturbation_ratio(bowl, theta, 100, 1e-2, seed=0) == 1.0
    assert cp.perturbation_ratio(bowl, theta, 100, 1e-2, seed=3) == cp.perturbation_ratio(bowl, theta, 100, 1e-2, seed=3)


@pytest.mark.parametrize("spec,cells,packs", [("function_fit", 30, 6), ("minimal_ratio", 100, 2)])
def test_the_full_tiny_model_studies_pack_their_seeds(tmp_path, spec, cells, packs):
    study = load_study(f"sweeps/{spec}.yaml")
    planned = packs_for(study, study.cells, tmp_path)
    assert len(study.cells) == cells and len(planned) == packs
    assert sum(len(p["ids"]) for p in planned) == cells
    # a pack's cells differ only in their seed
    for pack in planned:
        assert len({tuple(sorted((k, str(v)) for k, v in c.items() if k != "seed")) for c in pack["cells"]}) == 1


def test_packed_models_refuse_mixed_objectives():
    cfgs = [ff.parse(cp.CriticalPointsConfig, c) for c in cp_configs()[:2]]
    models = PackedModels([ff.new_model(c, CPU) for c in cfgs])
    train, gn = cp._phase_configs(cfgs[0])
    with pytest.raises(ValueError, match="objective"):
        models.prepare([train, gn], CPU)
