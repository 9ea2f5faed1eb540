"""Packed trials (spec `pack: K`, trainables/packed.py): K models trained together give
each model the metrics it gets when trained alone (float32, CPU, within 1e-5), keep
their own initialization, data order, hyperparameters, BatchNorm statistics and
divergence, resume exactly, and appear in the results as one row per cell."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import torch

from analysis.collect import last_model_state
from sweeps.planner import pack_cells, pack_id
from sweeps.schema import load_study
from sweeps.specyaml import SpecError
from trainables.checkpoint import load_state, save_state
from trainables.engine import EngineConfig, fit
from trainables.models import build_model
from trainables.packed import PackedModels, check_packable

REPO = Path(__file__).resolve().parent.parent
TOL = 1e-5
COMPARED = ("train_loss", "train_acc", "test_loss", "test_acc", "gap_acc", "gap_loss", "weight_norm", "grad_norm",
            "running_loss")
MLP = ("mlp", {"hidden": [32]})
BN_CNN = ("cnn_overparam", {"width": 0.125, "head": 16})


@pytest.fixture(scope="module")
def splits(make_splits):
    return make_splits(256, 256)


def build(spec, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)  # initialization, as classifier.train / train_packed do
    return build_model(spec[0], **spec[1])


def alone(splits, spec, cfg: EngineConfig) -> tuple[list[dict], torch.nn.Module]:
    train, test = splits
    model, reports = build(spec, cfg.seed), []
    fit(model, train, {"test": test}, cfg, lambda metrics, state: reports.append(metrics))
    return reports, model


def packed(splits, spec, cfgs, resume=None) -> tuple[list[dict], list[dict], PackedModels]:
    train, test = splits
    models = PackedModels([build(spec, c.seed) for c in cfgs])
    reports, states = [], []

    def on_epoch(report: dict, state: dict | None) -> None:
        reports.append(report)
        states.append(state)

    fit(models, train, {"test": test}, cfgs, on_epoch, resume=resume, names=[f"m{i}" for i in range(len(cfgs))])
    return reports, states, models


def assert_same(expected: list[dict], reports: list[dict], name: str) -> None:
    got = [r["members"][name] for r in reports if name in r["members"]]
    assert [m["epoch"] for m in got] == [m["epoch"] for m in expected]
    for want, have in zip(expected, got):
        assert have["status"] == want["status"]
        for key in COMPARED:
            # within 1e-5, absolute (relative for values above 1: norms, losses)
            assert have[key] == pytest.approx(want[key], rel=TOL, abs=TOL, nan_ok=True), (name, want["epoch"], key)


# Three models differing in every per-model key: seed (initialization, data order),
# lr, weight decay and momentum.
MEMBERS = [dict(seed=0, lr=0.05, weight_decay=0.0, momentum=0.9),
           dict(seed=1, lr=0.02, weight_decay=1e-3, momentum=0.5),
           dict(seed=2, lr=0.08, weight_decay=1e-2, momentum=0.0)]


@pytest.mark.parametrize("optimizer,l2_mode", [("sgd", "optimizer"), ("sgd", "penalty"), ("adam", "optimizer"),
                                               ("adam", "penalty")])
def test_packed_models_match_their_unpacked_runs(splits, optimizer, l2_mode):
    scale = 0.02 if optimizer == "adam" else 1.0  # Adam's steps are larger
    cfgs = [EngineConfig(optimizer=optimizer, l2_mode=l2_mode, batch_size=32, epochs=2, per_class=True,
                         log_every_steps=3, **{**m, "lr": m["lr"] * scale}) for m in MEMBERS]
    reports, _, _ = packed(splits, MLP, cfgs)
    for i, cfg in enumerate(cfgs):
        expected, _ = alone(splits, MLP, cfg)
        assert_same(expected, reports, f"m{i}")
        got = reports[-1]["members"][f"m{i}"]
        assert got["steps"]["step"] == expected[-1]["steps"]["step"]
        assert got["steps"]["grad_norm"] == pytest.approx(expected[-1]["steps"]["grad_norm"], abs=TOL)
        assert [got[f"test_acc_{c}"] for c in range(10)] == pytest.approx(
            [expected[-1][f"test_acc_{c}"] for c in range(10)], abs=TOL)
    # the models really differ (else matching would prove little)
    assert len({round(r["members"][n]["train_loss"], 4) for r in reports[-1:] for n in r["members"]}) == 3


def test_batchnorm_running_statistics_are_kept_per_model(splits):
    # BatchNorm's running mean/var are stacked buffers that vmap updates in place per
    # model. A few steps at a moderate lr: this CNN amplifies float32 rounding over
    # many steps (its own results change by ~1e-3 between 1 and 2 torch threads).
    cfgs = [EngineConfig(optimizer="sgd", seed=s, lr=0.01, weight_decay=wd, batch_size=32, max_steps=3)
            for s, wd in [(0, 0.0), (1, 1e-3)]]
    reports, _, models = packed(splits, BN_CNN, cfgs)
    for i, cfg in enumerate(cfgs):
        expected, model = alone(splits, BN_CNN, cfg)
        assert_same(expected, reports, f"m{i}")
        mine = models.module(i).state_dict()
        for name, value in model.state_dict().items():
            if "running" in name or "num_batches" in name:
                assert torch.allclose(mine[name].float(), value.float(), atol=TOL), (name, (mine[name].float() - value.float()).abs().max())
        assert int(mine["1.num_batches_tracked"]) == 3


def test_a_diverging_model_ends_alone_and_the_others_go_on(splits):
    cfgs = [EngineConfig(optimizer="sgd", seed=0, lr=0.05, batch_size=32, epochs=3),
            EngineConfig(optimizer="sgd", seed=1, lr=1e6, batch_size=32, epochs=3)]
    reports, _, _ = packed(splits, MLP, cfgs)
    blown = [r["members"]["m1"] for r in reports if "m1" in r["members"]]
    assert len(blown) == 1 and blown[0]["status"] == "diverged" and math.isnan(blown[0]["test_acc"])
    expected_blown, _ = alone(splits, MLP, cfgs[1])
    assert expected_blown[-1]["status"] == "diverged" and blown[0]["epoch"] == expected_blown[-1]["epoch"]
    expected, _ = alone(splits, MLP, cfgs[0])
    assert_same(expected, reports, "m0")
    assert reports[-1]["status"] == "ok" and reports[-1]["members"]["m0"]["status"] == "ok"


def test_a_pack_resumes_exactly_from_its_checkpoint(splits, tmp_path):
    cfgs = [EngineConfig(optimizer="adam", seed=s, lr=1e-3, weight_decay=wd, batch_size=32, epochs=3)
            for s, wd in [(0, 0.0), (1, 1e-3)]]
    straight, states, _ = packed(splits, MLP, cfgs)
    save_state(tmp_path, states[0])  # as a trial checkpoint, read back weights-only
    resumed, _, _ = packed(splits, MLP, cfgs, resume=load_state(tmp_path))
    assert [r["epoch"] for r in resumed] == [2, 3]
    for before, after in zip(straight[1:], resumed):
        for name in ("m0", "m1"):
            for key in COMPARED:
                assert after["members"][name][key] == before["members"][name][key], (name, key)


def test_only_per_model_keys_may_differ_within_a_pack():
    with pytest.raises(ValueError, match=r"differ in \['batch_size'\]"):
        check_packable([EngineConfig(batch_size=32), EngineConfig(batch_size=64, seed=1)])


def test_cells_group_by_everything_but_the_per_model_keys():
    cells = [{"train_size": n, "weight_decay": wd, "seed": s} for n in (100, 200) for wd in (0, 1e-3) for s in (0, 1, 2)]
    ids = [f"c{i}" for i in range(len(cells))]
    packs = pack_cells(cells, ids, 4)
    assert [len(p["cells"]) for p in packs] == [3, 3, 3, 3]  # 6 per train_size, balanced
    assert [c["train_size"] for c in packs[1]["cells"]] == [100, 100, 100]
    one_group = [{"weight_decay": i, "seed": 0} for i in range(21)]
    names = [f"g{i}" for i in range(21)]
    assert [len(p["cells"]) for p in pack_cells(one_group, names, 8)] == [7, 7, 7]  # not 8, 8, 5
    assert sorted(len(p["cells"]) for p in pack_cells(one_group[:7], names[:7], 3)) == [2, 2, 3]
    assert sorted(i for p in packs for i in p["ids"]) == sorted(ids)
    assert packs[0]["id"] == pack_id(["c0", "c1", "c2"]) != packs[2]["id"]
    assert pack_cells(cells, ids, 4) == packs  # stable


SPEC = """\
name: {name}
family: classifier
fixed: {{model: mlp, hidden: [32], train_size: 300, test_size: 200, epochs: 2, batch_size: 50, optimizer: sgd, lr: 0.05}}
grid:
  weight_decay: [0, 1e-3, 1e-2]
seeds: [0, 1]
pack: {pack}
{extra}
"""


def _spec(tmp_path: Path, name: str = "packed", pack: int = 4, extra: str = "") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(SPEC.format(name=name, pack=pack, extra=extra))
    return path


def test_pack_is_refused_with_a_search_a_scheduler_or_an_unpackable_family(tmp_path):
    with pytest.raises(SpecError, match=r"lr\.yaml: pack: a search proposes one trial at a time"):
        load_study(REPO / "sweeps" / "lr.yaml", "smoke", pack=2)
    with pytest.raises(SpecError, match=r"pack: the scheduler stops single trials early"):
        load_study(_spec(tmp_path, extra="scheduler: {type: asha}"))
    with pytest.raises(SpecError, match=r"pack: family 'numpy_mlp' trains one model per trial; .*classifier"):
        load_study(REPO / "sweeps" / "numpy_mlp.yaml", "smoke", pack=2)
    assert load_study(REPO / "sweeps" / "lr.yaml", "smoke", pack=1).spec.pack == 1


# Both studies in one process: one Ray start (as tests/test_gpu_packing.py does).
DRIVER = textwrap.dedent("""
    import sys
    import ray
    from analysis.report import write_report
    from sweeps.planner import packs_for
    from sweeps.runner import run_study
    from sweeps.schema import load_study

    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    for spec in sys.argv[2:]:
        study = load_study(spec)
        outcome = run_study(study, sys.argv[1], progress_every=600, report=write_report)
        assert outcome.exit_code == 0, spec
        if study.spec.pack > 1:  # a rerun of these packs would continue from their checkpoints
            packs = packs_for(study, study.cells, outcome.folder)
            print("RESUMABLE", sum("_resume_from" in p["cells"][0] for p in packs), len(packs))
""")


@pytest.mark.study  # runs a study on Ray: left out of `make test-fast`
def test_a_packed_study_reports_one_row_per_cell_like_the_unpacked_one(tmp_path):
    results = tmp_path / "results"
    figures = "figures: [{kind: weight_templates}]"  # reads each cell's weights from its (packed) checkpoint
    specs = [_spec(tmp_path, "packed", 4, figures), _spec(tmp_path, "unpacked", 1, figures)]
    proc = subprocess.run([sys.executable, "-c", DRIVER, str(results), *map(str, specs)], cwd=REPO,
                          capture_output=True, text=True, timeout=300, env={"RAY_AUTH_MODE": "token", **_env()})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "packed: 6 trials packed into 2 (up to 4 models)" in proc.stdout
    assert "RESUMABLE 2 2" in proc.stdout
    done = [line for line in proc.stdout.splitlines() if line.startswith("[packed ") and " done: " in line]
    assert len(done) == 6 and done[-1].split(" done: ")[0].endswith("6/6"), done
    tables = {name: pd.read_parquet(results / name / "trials.parquet").set_index("trial_id").sort_index()
              for name in ("packed", "unpacked")}
    mine, theirs = tables["packed"], tables["unpacked"]
    assert list(mine.index) == list(theirs.index) and len(mine) == 6  # the same cell ids
    assert (mine["status"] == "ok").all() and sorted(mine["pack_size"].tolist()) == [3] * 6
    for key in ("final_train_loss", "final_test_acc", "final_weight_norm", "final_grad_norm"):
        assert mine[key].to_numpy() == pytest.approx(theirs[key].to_numpy(), abs=TOL), key
    for column in ("weight_decay", "seed", "n_params", "device"):
        assert mine[column].tolist() == theirs[column].tolist(), column
    history = pd.read_parquet(results / "packed" / "history.parquet")
    assert len(history) == 12 and set(history["trial_id"]) == set(mine.index)
    assert (results / "packed" / "report" / "01-weight_templates.png").exists()
    for trial_id, pack in mine["pack_id"].items():
        weights = last_model_state(results / "packed", trial_id, pack)
        alone = last_model_state(results / "unpacked", trial_id)
        assert weights.keys() == alone.keys()
        for name, value in alone.items():
            assert torch.allclose(weights[name], value, atol=TOL), (trial_id, name)


def _env() -> dict:
    return {k: v for k, v in os.environ.items() if k != "GENSWEEP_RESULTS"}
