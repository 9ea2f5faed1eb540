"""sweeps.schema / sweeps.specyaml: the shipped specs load in every profile, and bad
specs fail with one line naming the file and the key path at fault."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sweeps.schema import PROFILES, REQUIRED_PROFILES, cell_id, load_study
from sweeps.specyaml import SpecError, read_yaml

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable  # the venv running the tests, wherever it is (make VENV=...)
SPECS = sorted((REPO / "sweeps").glob("*.yaml"))

MINIMAL = {
    "name": "mini",
    "family": "classifier",
    "fixed": {"model": "mlp", "epochs": 1},
    "grid": {"lr": [0.01]},
}


def write_spec(tmp_path: Path, spec: dict | str, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(spec if isinstance(spec, str) else yaml.safe_dump(spec, sort_keys=False))
    return path


def spec_with(**changes) -> dict:
    """MINIMAL with top-level keys replaced (None removes a key)."""
    spec = copy.deepcopy(MINIMAL)
    for key, value in changes.items():
        if value is None:
            spec.pop(key, None)
        else:
            spec[key] = value
    return spec


# ------------------------------------------------------------ shipped specs


def test_there_are_shipped_specs():
    assert {p.stem for p in SPECS} >= {"wd", "lr"}


@pytest.mark.parametrize("spec", SPECS, ids=lambda p: p.stem)
@pytest.mark.parametrize("profile", [None, "quick", "smoke"])
def test_every_spec_loads_in_every_profile(spec, profile):
    study = load_study(spec, profile)
    assert set(REQUIRED_PROFILES) <= set(study.spec.profiles) <= set(PROFILES)
    assert study.profile == profile
    assert study.source == str(spec)
    assert study.cells, "a study must have at least one trial"
    assert study.study_name == (f"{study.spec.name}-{profile}" if profile else study.spec.name)
    for cell in study.cells:
        assert cell.get("epochs", 1) >= 1
        assert "lr" not in cell or cell["lr"] > 0
        # Defaults are filled in, so results carry every hyperparameter.
        assert "seed" in cell
        if study.spec.family in ("classifier", "interpolation", "trajectory"):
            for key in ("model", "dataset", "optimizer", "epochs", "weight_decay", "data_seed"):
                assert key in cell, key
            # the interpolation family trains two solutions, each with its own batch size
            assert "batch_size" in cell or {"batch_size_a", "batch_size_b"} <= set(cell)


@pytest.mark.parametrize("spec", SPECS, ids=lambda p: p.stem)
def test_smoke_profiles_are_tiny(spec):
    study = load_study(spec, "smoke")
    trials = study.spec.search.num_samples if study.spec.search else len(study.cells)
    assert 1 <= trials <= 4
    # a step budget (max_steps) replaces epochs where a spec sets one
    assert all(cell["epochs"] <= 2 if cell.get("max_steps") is None else cell["max_steps"] <= 100
               for cell in study.cells)
    full = load_study(spec)
    full_trials = full.spec.search.num_samples if full.spec.search else len(full.cells)
    assert trials <= full_trials


def test_wd_spec_grid_and_profiles():
    full = load_study(REPO / "sweeps" / "wd.yaml")
    assert len(full.cells) == 6 * 2 * 3
    assert {c["weight_decay"] for c in full.cells} == {0, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2}
    assert all(isinstance(c["weight_decay"], float) for c in full.cells)
    assert {c["train_size"] for c in full.cells} == {1000, 5000}
    assert {c["seed"] for c in full.cells} == {0, 1, 2}
    assert all(c["model"] == "cnn_overparam" and c["width"] == 1.0 and c["epochs"] == 30 for c in full.cells)
    smoke = load_study(REPO / "sweeps" / "wd.yaml", "smoke")
    assert [(c["weight_decay"], c["train_size"], c["epochs"], c["width"], c["head"]) for c in smoke.cells] == [
        (0.0, 200, 1, 0.25, 32), (0.01, 200, 1, 0.25, 32)]
    quick = load_study(REPO / "sweeps" / "wd.yaml", "quick")
    assert len(quick.cells) == 4 and all(c["epochs"] == 8 and c["test_size"] == 2000 for c in quick.cells)


def test_a_tuned_spec_has_a_search_per_grid_cell_on_the_first_seed(tmp_path):
    path = write_spec(tmp_path, spec_with(
        fixed={"model": "mlp", "epochs": 1, "val_size": 500}, grid={"weight_decay": [0, 0.01, 0.1]}, seeds=[3, 1],
        search={"space": {"lr": {"loguniform": [1e-3, 0.1]}}, "num_samples": 4, "baseline": {"lr": 0.01}}))
    study = load_study(path)
    assert len(study.cells) == 6  # 3 cells x 2 seeds, seeds innermost
    assert [c["seed"] for c in study.tuning_cells] == [3, 3, 3]
    assert [c["weight_decay"] for c in study.tuning_cells] == [0, 0.01, 0.1]
    assert study.tuning_ids == [cell_id("classifier", c) for c in study.tuning_cells]
    assert "lr" not in study.tuning_cells[0]  # the nuisance value is searched, not a cell value
    assert study.spec.search.metric == "val_acc"  # the family's metric, on the validation split
    assert study.spec.search.algo == "tpe" and study.spec.search.baseline == {"lr": 0.01}


def test_lr_spec_search_space_is_read_as_floats():
    study = load_study(REPO / "sweeps" / "lr.yaml")
    assert study.spec.search is not None
    assert study.spec.search.space["lr"].loguniform == (0.0001, 0.1)
    assert study.spec.search.num_samples == 20
    assert "lr" not in study.cells[0]  # searched, not fixed
    assert load_study(REPO / "sweeps" / "lr.yaml", "smoke").spec.search.num_samples == 2


# --------------------------------------------------------------- YAML 1.2


def test_yaml_floats_in_exponent_notation(tmp_path):
    path = write_spec(tmp_path, "a: 1e-4\nb: 3E-3\nc: 1e4\nd: 1.5e-2\ne: 10\nf: '1e-4'\ng: -2e-1\nh: .5\n")
    data = read_yaml(path)
    assert data == {"a": 0.0001, "b": 0.003, "c": 10000.0, "d": 0.015, "e": 10, "f": "1e-4", "g": -0.2, "h": 0.5}
    assert isinstance(data["a"], float) and isinstance(data["c"], float)
    assert isinstance(data["e"], int) and isinstance(data["f"], str)


def test_exponent_floats_reach_the_trial_configs(tmp_path):
    path = write_spec(tmp_path, "name: mini\nfamily: classifier\nfixed: {model: mlp, epochs: 1}\n"
                                "grid:\n  lr: [1e-4, 3e-2]\n  weight_decay: [0, 5e-4]\n")
    study = load_study(path)
    assert sorted({c["lr"] for c in study.cells}) == [0.0001, 0.03]
    assert sorted({c["weight_decay"] for c in study.cells}) == [0.0, 0.0005]
    assert len(study.cells) == 4


def test_profile_null_removes_a_grid_axis(tmp_path):
    spec = spec_with(grid={"lr": [0.01, 0.1], "weight_decay": [0.0, 0.1]},
                     profiles={"smoke": {"grid": {"weight_decay": None, "lr": [0.5]}, "fixed": {"train_size": 500}}})
    path = write_spec(tmp_path, spec)
    assert len(load_study(path).cells) == 4
    smoke = load_study(path, "smoke")
    assert [(c["lr"], c["weight_decay"], c["train_size"], c["model"]) for c in smoke.cells] == [(0.5, 0.0, 500, "mlp")]
    assert "weight_decay" not in smoke.spec.grid and smoke.study_name == "mini-smoke"


def test_minimal_spec_is_valid(tmp_path):
    study = load_study(write_spec(tmp_path, MINIMAL))
    assert len(study.cells) == 1
    cell = study.cells[0]
    assert cell["lr"] == 0.01 and cell["model"] == "mlp" and cell["epochs"] == 1 and cell["seed"] == 0
    assert cell["hidden"] == [512]  # the model's own defaults are filled in too


# ---------------------------------------------------------------- bad specs

BAD_SPECS = [
    # (id, spec (dict, or YAML text), profile, fragments the message must contain)
    ("malformed-yaml", "name: mini\nfamily: classifier\nfixed:\n  model: mlp\n   epochs: 1\ngrid: {lr: [0.01]}\n",
     None, ["malformed YAML", "line 5"]),
    ("unclosed-flow", "name: mini\nfamily: classifier\nfixed: {model: mlp, epochs: 1\n", None, ["line "]),
    ("not-a-mapping", "- name: mini\n", None, ["a spec is a mapping"]),
    ("unknown-top-key", spec_with(grid=None, gird={"lr": [0.01]}), None, ["gird", "did you mean 'grid'"]),
    ("unknown-fixed-key", spec_with(fixed={"model": "cnn_overparam", "epochs": 1, "widht": 0.5}), None,
     ["fixed.widht", "width"]),
    ("wrong-type", spec_with(fixed={"model": "mlp", "epochs": "ten"}), None, ["fixed.epochs", "'ten'"]),
    ("empty-grid-axis", spec_with(grid={"lr": []}), None, ["grid.lr", "empty"]),
    ("negative-lr", spec_with(grid={"lr": [0.01, -0.1]}), None, ["grid.lr[1]", "-0.1"]),
    ("zero-lr", spec_with(grid={"lr": [0.01, 0]}), None, ["grid.lr[1]"]),
    ("bad-second-axis", spec_with(grid={"lr": [0.01], "momentum": [0.5, 0.9, 1.5]}), None, ["grid.momentum[2]"]),
    ("negative-wd", spec_with(fixed={"model": "mlp", "epochs": 1, "weight_decay": -1e-4}), None,
     ["fixed.weight_decay"]),
    ("batch-over-train-size", spec_with(fixed={"model": "mlp", "epochs": 1, "train_size": 100, "batch_size": 128}),
     None, ["fixed.batch_size", "128"]),
    ("train-size-too-big", spec_with(fixed={"model": "mlp", "epochs": 1, "train_size": 59_000, "val_size": 5000}),
     None, ["fixed.train_size"]),
    ("unknown-family", spec_with(family="clasifier"), None, ["family", "clasifier", "did you mean 'classifier'"]),
    ("unknown-model", spec_with(fixed={"model": "resnet", "epochs": 1}), None, ["fixed.model", "resnet"]),
    ("unknown-model-in-grid", spec_with(fixed={"epochs": 1}, grid={"lr": [0.01], "model": ["mlp", "mpl"]}), None,
     ["grid.model[1]", "did you mean 'mlp'"]),
    ("unknown-dataset", spec_with(fixed={"model": "mlp", "epochs": 1, "dataset": "cifar100"}), None,
     ["fixed.dataset", "cifar100", "(did you mean 'cifar10'?)"]),
    ("unknown-optimizer", spec_with(fixed={"model": "mlp", "epochs": 1, "optimizer": "rmsprop"}), None,
     ["fixed.optimizer", "rmsprop"]),
    ("bad-model-arg", spec_with(fixed={"model": "mlp", "epochs": 1, "activation": "gelu"}), None,
     ["fixed.activation", "gelu"]),
    ("search-low-above-high", spec_with(grid=None, search={"space": {"lr": {"loguniform": [0.1, 0.001]}}}), None,
     ["search", "low", "lr"]),
    ("search-low-equals-high", spec_with(grid=None, search={"space": {"lr": {"uniform": [0.1, 0.1]}}}), None,
     ["search.space.lr: low 0.1 must be below high 0.1: the range is empty"]),
    ("search-missing-space", spec_with(grid=None, search={"spce": {"lr": {"uniform": [0.1, 0.2]}}}), None,
     ["search.space", "Field required"]),
    ("search-unknown-key", spec_with(grid=None, search={"space": {"lr": {"uniform": [0.1, 0.2]}}, "num_sample": 3}),
     None, ["search.num_sample", "did you mean 'num_samples'"]),
    ("search-unknown-distribution", spec_with(grid=None, search={"space": {"lr": {"normal": [0.1, 0.2]}}}), None,
     ["search.space.lr"]),
    # Scientific (grid) vs nuisance (search) values; the search's metric.
    ("nuisance-also-grid-axis", spec_with(fixed={"model": "mlp", "epochs": 1, "val_size": 500},
                                          search={"space": {"lr": {"loguniform": [1e-3, 0.1]}}}), None,
     ["search.space.lr: also a grid axis (grid.lr)", "scientific", "nuisance"]),
    ("nuisance-also-fixed", spec_with(grid=None, fixed={"model": "mlp", "epochs": 1, "val_size": 500, "lr": 0.1},
                                      search={"space": {"lr": {"loguniform": [1e-3, 0.1]}}}), None,
     ["fixed.lr: also set in grid/search"]),
    ("nuisance-in-a-variant", spec_with(fixed={"model": "mlp", "epochs": 1, "val_size": 500},
                                        grid={"opt": [{"name": "a", "lr": 0.1}, {"name": "b", "lr": 0.2}]},
                                        search={"space": {"lr": {"loguniform": [1e-3, 0.1]}}}), None,
     ["search.space.lr: also set by grid.opt[0].lr"]),
    ("search-on-test-metric", spec_with(grid={"weight_decay": [0, 0.01]}, fixed={"model": "mlp", "epochs": 1, "val_size": 500},
                                        search={"space": {"lr": {"loguniform": [1e-3, 0.1]}}, "metric": "test_acc"}),
     None, ["search.metric: test_acc is a test metric", "select on the test set", "val_acc"]),
    ("search-on-train-metric", spec_with(grid=None, fixed={"model": "mlp", "epochs": 1, "val_size": 500},
                                         search={"space": {"lr": {"loguniform": [1e-3, 0.1]}}, "metric": "train_loss",
                                                 "mode": "min"}),
     None, ["search.metric: train_loss is not a validation metric", "val_loss"]),
    ("search-without-val-split", spec_with(grid={"weight_decay": [0, 0.01]},
                                           search={"space": {"lr": {"loguniform": [1e-3, 0.1]}}}), None,
     ["search.metric: val_acc needs a validation split; set fixed.val_size"]),
    ("num-samples-zero", spec_with(grid=None, search={"space": {"lr": {"loguniform": [1e-3, 0.1]}}, "num_samples": 0}),
     None, ["search.num_samples", "greater than 0"]),
    ("grid-algo-without-values", spec_with(grid=None, search={"algo": "grid", "space": {"lr": {"loguniform": [1e-3, 0.1]}}}),
     None, ["search.space.lr: algo: grid runs every combination of listed values", "{choice: [...]}", "loguniform"]),
    ("grid-algo-more-samples-than-points", spec_with(grid=None, search={"algo": "grid", "num_samples": 5,
                                                                        "space": {"lr": {"choice": [0.01, 0.1]}}}),
     None, ["search.num_samples: 5 is more than the 2 combinations"]),
    ("randint-empty-range", spec_with(grid=None, search={"space": {"batch_size": {"randint": [32, 32]}}}), None,
     ["search.space.batch_size: low 32 must be below high 32: the range is empty"]),
    ("baseline-not-searched", spec_with(grid=None, search={"space": {"lr": {"loguniform": [1e-3, 0.1]}},
                                                            "baseline": {"momentum": 0.9}}), None,
     ["search.baseline.momentum: not a searched key"]),
    ("tuned-seed-twice", spec_with(grid=None, seeds=[0, 0], fixed={"model": "mlp", "epochs": 1, "val_size": 500},
                                   search={"space": {"lr": {"loguniform": [1e-3, 0.1]}}}), None,
     ["seeds[1]: 0 repeats seeds[0]; each value once"]),
    # 0 and 0.0 are one weight decay, as in a grid axis
    ("choice-repeats-a-number", spec_with(grid=None, search={"space": {"weight_decay": {"choice": [0, 0.0]}}}), None,
     ["search.space.weight_decay: choice lists a value twice"]),
    ("search-bad-bound", spec_with(grid=None, search={"space": {"momentum": {"uniform": [0.5, 1.5]}}}), None,
     ["search.space.momentum"]),
    ("unknown-profile-requested", spec_with(profiles={"smoke": {"fixed": {"epochs": 1}}}), "fast",
     ["unknown profile 'fast'"]),
    ("missing-profile", spec_with(), "smoke", ["profiles.smoke", "no 'smoke' profile"]),
    ("unknown-profile-in-file", spec_with(profiles={"fast": {"fixed": {"epochs": 1}}}), None,
     ["profiles.fast"]),
    ("profile-sets-name", spec_with(profiles={"smoke": {"name": "other"}}), "smoke", ["profiles.smoke.name"]),
    ("profile-bad-value", spec_with(profiles={"smoke": {"grid": {"lr": [0.01, -1.0]}}}), "smoke", ["grid.lr[1]"]),
    ("key-in-fixed-and-grid", spec_with(fixed={"model": "mlp", "epochs": 1, "lr": 0.1}), None,
     ["fixed.lr", "grid"]),
    ("seed-in-fixed", spec_with(fixed={"model": "mlp", "epochs": 1, "seed": 3}), None, ["fixed.seed", "seeds"]),
    ("negative-seed", spec_with(seeds=[0, -1]), None, ["seeds[1]"]),
    ("bad-name", spec_with(name="my study"), None, ["name"]),
    ("missing-family", spec_with(family=None), None, ["family", "Field required"]),
    ("bad-figure-column", spec_with(figures=[{"kind": "final", "x": "lrr", "y": ["test_acc"]}]), None,
     ["figures[0].x", "did you mean 'lr'"]),
    ("model-arg-in-grid", spec_with(grid={"lr": [0.01], "hidden": [[32], [0]]}), None, ["grid.hidden[1]"]),
    ("val-size-too-big", spec_with(fixed={"model": "mlp", "epochs": 1, "val_size": 60_000}), None,
     ["fixed.val_size"]),
    ("test-size-too-big", spec_with(fixed={"model": "mlp", "epochs": 1, "test_size": 20_000}), None,
     ["fixed.test_size", "10000"]),
    ("grid-axis-not-a-list", spec_with(grid={"lr": 0.01}), None, ["grid.lr", "list"]),
    # The failing member of the distribution union is 'loguniform' (its low bound
    # must be positive); the message must name that key, not another member's.
    ("loguniform-nonpositive-low", spec_with(grid=None, search={"space": {"lr": {"loguniform": [-0.1, 0.1]}}}),
     None, ["search.space.lr.loguniform[0]", "greater than 0"]),
    # Unknown keys inside list items get a suggestion like any other unknown key.
    ("figure-key-typo", spec_with(figures=[{"kind": "curves", "y": ["test_acc"], "huee": "lr"}]), None,
     ["figures[0].huee", "unknown key", "did you mean 'hue'"]),
    ("resources-typo", spec_with(resources={"cpus": 1}), None, ["resources.cpus", "did you mean 'cpu'"]),
]


@pytest.mark.parametrize("spec, profile, fragments", [b[1:] for b in BAD_SPECS], ids=[b[0] for b in BAD_SPECS])
def test_bad_spec_names_file_and_key_path(tmp_path, spec, profile, fragments):
    path = write_spec(tmp_path, spec)
    with pytest.raises(SpecError) as info:
        load_study(path, profile)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert "\n" not in message, message


def test_missing_spec_file(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(SpecError, match="no such spec file") as info:
        load_study(path)
    assert str(path) in str(info.value)


# ------------------------------------------------- repeated values and cells

MINI_YAML = "name: mini\nfamily: classifier\nfixed: {model: mlp, epochs: 1}\n"
TUNED_YAML = ("name: mini\nfamily: classifier\nfixed: {model: mlp, epochs: 1, val_size: 500}\n"
              "search: {space: {lr: {loguniform: [0.001, 0.1]}}, num_samples: 2}\n")


def refusal(path: Path) -> str:
    with pytest.raises(SpecError) as info:
        load_study(path)
    return str(info.value)


REPEATS = [
    # (id, spec text, the message after "{path}: ")
    ("seed", MINI_YAML + "grid: {lr: [0.01]}\nseeds: [0, 1, 0]\n", "seeds[2]: 0 repeats seeds[0]; each value once"),
    ("weight-decay-0-and-0.0", MINI_YAML + "grid: {weight_decay: [0, 0.0]}\n",
     "grid.weight_decay[1]: 0.0 repeats grid.weight_decay[0] (0); each value once"),
    ("exponent-spelling", MINI_YAML + "grid: {weight_decay: [0.001, 0.01, 1e-3]}\n",
     "grid.weight_decay[2]: 0.001 repeats grid.weight_decay[0]; each value once"),
    ("list-value", MINI_YAML + "grid: {hidden: [[32, 16], [64], [32.0, 16]]}\n",
     "grid.hidden[2]: [32.0, 16] repeats grid.hidden[0] ([32, 16]); each value once"),
    ("second-axis", MINI_YAML + "grid: {lr: [0.1, 0.2], optimizer: [sgd, adam, sgd]}\n",
     "grid.optimizer[2]: 'sgd' repeats grid.optimizer[0]; each value once"),
    ("variant-name", MINI_YAML + "grid:\n  opt:\n    - {name: a, lr: 0.1}\n    - {name: b, lr: 0.2}\n"
                                 "    - {name: a, lr: 0.3}\n",
     "grid.opt[2].name: 'a' repeats grid.opt[0].name; each variant needs its own name"),
    ("whole-named-variant", MINI_YAML + "grid:\n  opt: [{name: a, lr: 0.1}, {name: a, lr: 0.1}]\n",
     "grid.opt[1].name: 'a' repeats grid.opt[0].name; each variant needs its own name"),
    ("unnamed-variant", MINI_YAML + "grid:\n  opt: [{lr: 0.1, weight_decay: 0}, {weight_decay: 0.0, lr: 0.1}]\n",
     "grid.opt[1]: {'weight_decay': 0.0, 'lr': 0.1} repeats grid.opt[0] ({'lr': 0.1, 'weight_decay': 0}); "
     "each value once"),
    ("tuned-seed", TUNED_YAML + "grid: {weight_decay: [0, 0.01]}\nseeds: [2, 0, 2]\n",
     "seeds[2]: 2 repeats seeds[0]; each value once"),
    ("tuned-grid-value", TUNED_YAML + "grid: {weight_decay: [0.01, 0, 1e-2]}\n",
     "grid.weight_decay[2]: 0.01 repeats grid.weight_decay[0]; each value once"),
    # A variant without `name:` is named by its keys and values: the names clash, the variants differ.
    ("made-up-name", MINI_YAML + "grid:\n  opt: [{lr: 0.1}, {name: lr=0.1, lr: 0.2}]\n",
     "grid.opt[1]: name 'lr=0.1' is also grid.opt[0]'s (a variant without `name:` is named by its keys and "
     "values); give each variant a `name:`"),
]


@pytest.mark.parametrize("text, message", [r[1:] for r in REPEATS], ids=[r[0] for r in REPEATS])
def test_a_repeated_value_is_refused_naming_both_positions(tmp_path, text, message):
    path = write_spec(tmp_path, text)
    assert refusal(path) == f"{path}: {message}"


SAME_TRIALS = [
    # (id, spec text, the same config as a one-cell spec, the message after "{path}: " ({id}: its content id))
    # A quoted number is a distinct value that the family reads as the number.
    ("quoted-number", MINI_YAML + "grid: {weight_decay: [0.01, '0.01'], lr: [0.1, 0.2]}\nseeds: [0, 1]\n",
     MINI_YAML + "grid: {weight_decay: [0.01], lr: [0.1]}\n",
     "grid.weight_decay[1]: the cell {grid.weight_decay[1] = '0.01', grid.lr[0] = 0.1, seeds[0] = 0} is the same "
     "trial as the cell {grid.weight_decay[0] = 0.01, grid.lr[0] = 0.1, seeds[0] = 0}: the family resolves both to "
     "one config (content id {id}); each cell once"),
    # false and 0 are different values (a boolean is not a number), but the family reads 0 as false.
    ("false-and-0", MINI_YAML + "grid:\n  arch: [{name: small, hidden: [8]}, {name: big, hidden: [16]}]\n"
                                "  per_class: [false, 0]\n",
     MINI_YAML + "grid:\n  arch: [{name: small, hidden: [8]}]\n  per_class: [false]\n",
     "grid.per_class[1]: the cell {grid.arch[0] = variant 'small', grid.per_class[1] = 0, seeds[0] = 0} is the same "
     "trial as the cell {grid.arch[0] = variant 'small', grid.per_class[0] = False, seeds[0] = 0}: the family "
     "resolves both to one config (content id {id}); each cell once"),
    # A tuned study's cells (each searched on the first seed) are checked the same way.
    ("tuned", TUNED_YAML + "grid: {weight_decay: [0.01, '0.01']}\nseeds: [0, 1]\n",
     TUNED_YAML + "grid: {weight_decay: [0.01]}\n",
     "grid.weight_decay[1]: the cell {grid.weight_decay[1] = '0.01', seeds[0] = 0} is the same trial as the cell "
     "{grid.weight_decay[0] = 0.01, seeds[0] = 0}: the family resolves both to one config (content id {id}); "
     "each cell once"),
]


@pytest.mark.parametrize("text, twin, message", [r[1:] for r in SAME_TRIALS], ids=[r[0] for r in SAME_TRIALS])
def test_two_cells_that_resolve_to_one_trial_are_refused(tmp_path, text, twin, message):
    (content_id,) = load_study(write_spec(tmp_path, twin, "twin.yaml")).cell_ids
    path = write_spec(tmp_path, text)
    assert refusal(path) == f"{path}: " + message.replace("{id}", content_id)


def test_near_duplicates_are_distinct_values(tmp_path):
    # 0.001 and 0.0011, seeds 0 and 1, false and 1 (true): distinct. Two variants with their
    # own names and one config are a deliberate reference run (tests/test_faults.py): distinct cells.
    text = MINI_YAML + ("grid:\n  weight_decay: [0.001, 0.0011]\n  per_class: [false, 1]\n"
                        "  run: [{name: killed, lr: 0.05}, {name: reference, lr: 0.05}]\nseeds: [0, 1]\n")
    study = load_study(write_spec(tmp_path, text))
    assert len(study.cells) == len(set(study.cell_ids)) == 2 * 2 * 2 * 2
    assert {c["weight_decay"] for c in study.cells} == {0.001, 0.0011}
    assert {c["run"] for c in study.cells} == {"killed", "reference"}
    tuned = load_study(write_spec(tmp_path, TUNED_YAML + "grid: {weight_decay: [0.001, 0.0011]}\nseeds: [0, 1]\n",
                                  "tuned.yaml"))
    assert len(tuned.cells) == len(set(tuned.cell_ids)) == 4 and len(set(tuned.tuning_ids)) == 2
    # One digit less and it is a repeat.
    repeat = write_spec(tmp_path, text.replace("0.0011", "1e-3"), "repeat.yaml")
    assert refusal(repeat) == f"{repeat}: grid.weight_decay[1]: 0.001 repeats grid.weight_decay[0]; each value once"


# --------------------------------------------------------------------- CLI


def sweeps_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(PYTHON), "-m", "sweeps", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120)


def test_cli_validate_bad_spec_prints_one_error_line_and_exits_2(tmp_path):
    path = write_spec(tmp_path, spec_with(gird={"lr": [0.01]}, grid=None))
    proc = sweeps_cli("validate", str(path))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    assert str(path) in lines[0] and "gird" in lines[0] and "did you mean 'grid'" in lines[0]
    assert proc.stdout == ""


def test_cli_validate_error_found_by_the_family_is_one_line_too(tmp_path):
    # This error is found after the family (and Ray) is imported: still one line.
    path = write_spec(tmp_path, spec_with(grid={"lr": [0.01, -0.5]}))
    proc = sweeps_cli("validate", str(path))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [proc.stderr.strip()], proc.stderr
    assert proc.stderr.startswith(f"error: {path}: grid.lr[1]: ")


def test_cli_validate_shipped_specs_exits_0():
    proc = sweeps_cli("validate", "sweeps/wd.yaml", "sweeps/lr.yaml", "sweeps/wd_tuned.yaml")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "sweeps/wd.yaml: ok (wd: 36 grid cells x seeds)",
        "sweeps/lr.yaml: ok (lr: 1 grid cell(s), each its own tpe search of 20 trials over lr on seed 0 "
        "(val_acc, max): up to 20 trials)",
        # 12 cells x (12 search trials + 2 confirm runs + 3 baseline runs)
        "sweeps/wd_tuned.yaml: ok (wd_tuned: 12 grid cell(s), each its own qmc search of 12 trials over lr on "
        "seed 0 (val_acc, max), then its best on 2 more seed(s), and baseline lr=0.02 on every seed: up to 204 trials)",
    ]


def test_cli_profile_names_are_the_schemas():
    from sweeps import cli, schema

    assert cli.PROFILES == schema.PROFILES
