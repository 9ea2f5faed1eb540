"""Plugins (trainables/plugins.py): a spec's own Python files register models,
datasets, probes, families and figure kinds through the public registries. No Ray:
the runs through the CLI, Ray and a cluster are in tests/test_own_experiments.py.

    .venv/bin/python -m pytest -q tests/test_plugins.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import gensweep
from sweeps.planner import plugin_changes
from sweeps.schema import load_study
from sweeps.specyaml import SpecError
from trainables import classifier, plugins
from trainables.models import MODELS, build_model, count_params

REPO = Path(__file__).resolve().parent.parent

MODEL = """import gensweep
from torch import nn


class Args(gensweep.ModelArgs):
    width: int = 8


@gensweep.register_model("{name}", Args)
def build(input_shape, num_classes, width):
    channels = input_shape[0]
    return nn.Sequential(nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(width, num_classes))
"""


def spec(folder: Path, plugin_entries: list[str], **fixed) -> Path:
    path = folder / "study.yaml"
    cells = {"epochs": 1, "train_size": 64, "test_size": 64, "batch_size": 32, **fixed}
    path.write_text(json.dumps({"name": "plug", "family": "classifier", "plugins": plugin_entries,
                                "fixed": cells, "seeds": [0]}))
    return path


@pytest.fixture(autouse=True)
def _clean_registries():
    """What a test's plugins register is removed again, so tests do not see each other's."""
    before = set(MODELS)
    yield
    for name in set(MODELS) - before:
        del MODELS[name]
    plugins.activate([])


def test_a_plugin_file_registers_a_model_that_the_spec_uses(tmp_path):
    (tmp_path / "mine.py").write_text(MODEL.format(name="mine_a"))
    study = load_study(spec(tmp_path, ["mine.py"], model="mine_a", width=4))
    [plugin] = study.plugins
    assert plugin.path == str(tmp_path / "mine.py") and plugin.entry == "mine.py"
    import hashlib

    assert plugin.sha256 == hashlib.sha256((tmp_path / "mine.py").read_bytes()).hexdigest()
    assert study.cells[0]["model"] == "mine_a" and study.cells[0]["width"] == 4
    assert MODELS.origin("mine_a") == str(tmp_path / "mine.py")
    assert plugins.provenance() == f"mine.py={plugin.sha256}"


def test_a_relative_path_is_relative_to_the_spec_folder_not_the_working_dir(tmp_path, monkeypatch):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "m.py").write_text(MODEL.format(name="mine_b"))
    monkeypatch.chdir(REPO)
    study = load_study(spec(tmp_path, ["sub/m.py"], model="mine_b"))
    assert study.plugins[0].path == str(tmp_path / "sub" / "m.py")


def test_a_module_name_is_imported_by_name(tmp_path, monkeypatch):
    (tmp_path / "my_models_pkg.py").write_text(MODEL.format(name="mine_c"))
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "specs").mkdir()
    study = load_study(spec(tmp_path / "specs", ["my_models_pkg"], model="mine_c"))
    assert study.plugins[0].source is None and study.plugins[0].path == str(tmp_path / "my_models_pkg.py")
    assert "my_models_pkg" in sys.modules


def test_two_files_registering_one_name_are_refused_naming_both(tmp_path):
    (tmp_path / "one.py").write_text(MODEL.format(name="twice"))
    (tmp_path / "two.py").write_text(MODEL.format(name="twice"))
    with pytest.raises(SpecError) as err:
        load_study(spec(tmp_path, ["one.py", "two.py"]))
    message = str(err.value)
    assert f"plugins[1]: {tmp_path}/two.py:9: importing the plugin raised ValueError: model 'twice' is registered " \
           f"twice: by {tmp_path}/one.py and by {tmp_path}/two.py" in message
    assert "\n" not in message


def test_one_file_registering_a_name_twice_is_refused(tmp_path):
    (tmp_path / "both.py").write_text(MODEL.format(name="again") + MODEL.format(name="again").split("\n", 2)[2])
    with pytest.raises(SpecError, match=r"model 'again' is registered twice: by .*both.py and by .*both.py"):
        load_study(spec(tmp_path, ["both.py"]))


def test_an_edited_plugin_replaces_what_its_old_version_registered(tmp_path):
    """A long-lived process (a notebook, a Ray worker reused across trials) imports the
    new version of a file: not a duplicate of itself."""
    path = tmp_path / "mine.py"
    path.write_text(MODEL.format(name="edited"))
    old = load_study(spec(tmp_path, ["mine.py"], model="edited"))
    path.write_text(MODEL.format(name="edited").replace("width: int = 8", "width: int = 5"))
    new = load_study(spec(tmp_path, ["mine.py"], model="edited"))
    assert old.plugins[0].sha256 != new.plugins[0].sha256
    assert old.cells[0]["width"] == 8 and new.cells[0]["width"] == 5


def test_a_trial_process_runs_the_source_the_driver_read_even_where_the_file_is_absent(tmp_path):
    """On another node the file may not exist: the text travels with the trainable."""
    path = tmp_path / "gone.py"
    path.write_text(MODEL.format(name="remote"))
    [plugin] = plugins.resolve(["gone.py"], tmp_path)
    path.unlink()
    plugins.activate([plugin])
    assert count_params(build_model("remote", input_shape=(3, 8, 8), num_classes=7, width=4)) == 3 * 9 * 4 + 4 + 4 * 7 + 7


def test_plugin_errors_name_the_file_and_line(tmp_path):
    (tmp_path / "bad.py").write_text("import gensweep\n\n\ndef f(:\n")
    with pytest.raises(plugins.PluginError, match=rf"^{tmp_path}/bad.py:4: syntax error: "):
        plugins.activate(plugins.resolve(["bad.py"], tmp_path))
    (tmp_path / "raises.py").write_text("def helper():\n    return 1 / 0\n\n\nhelper()\n")
    with pytest.raises(plugins.PluginError) as err:
        plugins.activate(plugins.resolve(["raises.py"], tmp_path))
    assert str(err.value) == f"{tmp_path}/raises.py:2: importing the plugin raised ZeroDivisionError: division by zero"
    with pytest.raises(plugins.PluginError, match="no such plugin module"):
        plugins.resolve(["not_a_module_anywhere"], tmp_path)
    (tmp_path / "folder.py").mkdir()
    with pytest.raises(plugins.PluginError, match="is a folder"):
        plugins.resolve(["folder.py"], tmp_path)


def test_a_model_that_does_not_fit_the_dataset_is_refused_at_validation_with_its_file(tmp_path):
    (tmp_path / "w.py").write_text("import gensweep\nfrom torch import nn\n\n\n@gensweep.register_model('fixed_in', "
                                   "gensweep.ModelArgs)\ndef b(input_shape, num_classes):\n"
                                   "    return nn.Sequential(nn.Flatten(), nn.Linear(3072, num_classes))\n")
    with pytest.raises(SpecError) as err:
        load_study(spec(tmp_path, ["w.py"], model="fixed_in"))
    assert f"fixed.model: 'fixed_in' ({tmp_path}/w.py) fails on the dataset's 1x28x28 images: RuntimeError: " \
           in str(err.value)
    # the wrong number of outputs is refused too
    (tmp_path / "o.py").write_text("import gensweep\nfrom torch import nn\n\n\n@gensweep.register_model('five_out', "
                                   "gensweep.ModelArgs)\ndef b(input_shape, num_classes):\n"
                                   "    return nn.Sequential(nn.Flatten(), nn.LazyLinear(5))\n")
    with pytest.raises(SpecError, match=r"'five_out' returns \(2, 5\) for a batch of 2 1x28x28 images; a classifier "
                                        r"returns \[batch, 10\] logits"):
        load_study(spec(tmp_path, ["o.py"], model="five_out"))


def test_a_changed_plugin_is_refused_unless_accepted_and_the_change_is_logged(tmp_path):
    (tmp_path / "mine.py").write_text(MODEL.format(name="versioned"))
    study = load_study(spec(tmp_path, ["mine.py"], model="versioned"))
    stored = {"plugins": [{"plugin": "mine.py", "path": "/elsewhere/mine.py", "sha256": "0" * 64}]}
    with pytest.raises(SpecError) as err:
        plugin_changes(study, tmp_path / "results" / "plug", stored, accept=False)
    assert str(err.value).startswith(f"{tmp_path}/mine.py: plugin changed since the cells in {tmp_path}/results/plug "
                                     f"ran (sha256 000000000000 -> {study.plugins[0].sha256[:12]}); run with --fresh")
    assert "--accept-plugin-change" in str(err.value)
    [change] = plugin_changes(study, tmp_path, stored, accept=True)
    assert change["plugin"] == "mine.py" and change["from"] == "0" * 64 and change["to"] == study.plugins[0].sha256
    # unchanged, new, or no record: nothing to say
    same = {"plugins": [p.record() for p in study.plugins], "plugin_changes": [change]}
    assert plugin_changes(study, tmp_path, same, accept=False) == [change]
    assert plugin_changes(study, tmp_path, None, accept=False) == []


def test_fresh_puts_a_study_with_a_changed_plugin_beside_the_old_one(tmp_path):
    from sweeps.planner import check_study_dir, study_dir_for
    from trainables.contract import write_record

    (tmp_path / "mine.py").write_text(MODEL.format(name="fresh_one"))
    study = load_study(spec(tmp_path, ["mine.py"], model="fresh_one"))
    old = tmp_path / "results" / study.study_name
    write_record(old, {"spec": json.loads(study.spec.model_dump_json()), "profile": None, "study": study.study_name,
                       "source": study.source, "n_cells": 1, "provenance": {},
                       "plugins": [{"plugin": "mine.py", "path": "x", "sha256": "0" * 64}]})
    with pytest.raises(SpecError, match="plugin changed since the cells"):
        plugin_changes(study, old, check_study_dir(study, old), accept=False)
    fresh = study_dir_for(study, tmp_path / "results", fresh=True)
    assert fresh != old and fresh.parent == old.parent and fresh.name.startswith(f"{study.study_name}-")
    assert check_study_dir(study, fresh) is None and plugin_changes(study, fresh, None, accept=False) == []


def test_plugins_from_outside_a_submitted_checkout_travel_as_a_package(tmp_path, monkeypatch):
    """`gensweep submit` bundles them (a py_module); in the job, `resolve` finds each
    by the entry the spec writes."""
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "far.py").write_text(MODEL.format(name="far"))
    checkout = tmp_path / "checkout"
    (checkout / "specs").mkdir(parents=True)
    (checkout / "specs" / "near.py").write_text(MODEL.format(name="near"))
    found = plugins.resolve(["../../elsewhere/far.py", "near.py"], checkout / "specs")
    name = plugins.bundle(found, checkout, tmp_path / "staging")
    package = tmp_path / "staging" / name
    assert sorted(p.name for p in package.iterdir()) == ["__init__.py", "manifest.json", "p0_far.py"]
    assert plugins.bundle(found[1:], checkout, tmp_path / "staging2") is None  # all inside: nothing to ship
    # in the job: another folder, the package on sys.path (Ray's py_modules)
    monkeypatch.syspath_prepend(str(tmp_path / "staging"))
    monkeypatch.setenv(plugins.JOB_PLUGINS_ENV, name)
    job = plugins.resolve(["../../elsewhere/far.py"], tmp_path / "job_working_dir" / "specs")
    assert job[0].path == str(package / "p0_far.py") and job[0].sha256 == found[0].sha256
    from sweeps.submit import runtime_env

    env = runtime_env(package)
    assert env["py_modules"] == [str(package)] and env["env_vars"][plugins.JOB_PLUGINS_ENV] == name


def test_the_public_api_is_the_registries_the_built_ins_use():
    from analysis.figures import KINDS
    from trainables.data import DATASETS
    from trainables.families import FAMILIES
    from trainables.probes import PROBES

    assert gensweep.register_figure("plugin_kind_for_test")(print) is print and KINDS["plugin_kind_for_test"] is print
    del KINDS["plugin_kind_for_test"]
    with pytest.raises(ValueError, match=r"figure kind 'curves' is registered twice: by analysis/figures.py"):
        gensweep.register_figure("curves")(lambda *a: None)
    with pytest.raises(ValueError, match=r"probe 'sharpness' is registered twice: by trainables/probes/geometry.py"):
        gensweep.register_probe("sharpness")(lambda *a: {})
    with pytest.raises(ValueError, match=r"family 'classifier' is registered twice: by trainables/classifier.py"):
        gensweep.register_family(gensweep.Family("classifier", classifier.validate, classifier.load_data, classifier.train))
    with pytest.raises(ValueError, match=r"dataset 'mnist' is registered twice"):
        gensweep.register_dataset("mnist", lambda root: None, DATASETS["mnist"].info)
    assert "classifier" in FAMILIES and "sharpness" in PROBES


@pytest.mark.parametrize("model", ["mlp", "linear", "cnn_small", "cnn_overparam", "plugin"])
def test_models_take_shape_and_classes_from_the_dataset(tmp_path, model):
    """A 3x32x32, 100-class .npz dataset, with no further keys."""
    rng = np.random.default_rng(0)
    file = tmp_path / "cifar_like.npz"
    np.savez(file, train_x=rng.integers(0, 256, (300, 3, 32, 32), dtype=np.uint8), train_y=np.arange(300) % 100,
             test_x=rng.integers(0, 256, (100, 3, 32, 32), dtype=np.uint8), test_y=np.arange(100) % 100)
    entries = []
    if model == "plugin":
        (tmp_path / "mine.py").write_text(MODEL.format(name="plugin"))
        entries = ["mine.py"]
    study = load_study(spec(tmp_path, entries, model=model, dataset={"npz": "cifar_like.npz"}, train_size=200,
                            test_size=100))
    cell = study.cells[0]
    assert cell["dataset"] == f"npz:{file}"
    info = classifier.dataset_info(cell["dataset"])
    cfg, args = classifier.parse_config(classifier.ClassifierConfig, cell)
    net = classifier.build_for(info, cfg, args)
    assert net(torch.zeros(4, 3, 32, 32)).shape == (4, 100)


def tutorial_blocks() -> list[str]:
    """The ```python blocks of docs/own-experiments.md."""
    page = (REPO / "docs" / "own-experiments.md").read_text()
    return [block.split("```", 1)[0] for block in page.split("```python\n")[1:]]


def test_a_plugin_dataset_is_validated_from_its_info_and_loaded_once_in_the_driver(tmp_path):
    from trainables.data import DATASETS

    """The tutorial's "A dataset in code" block, run as a plugin file."""
    [block] = [b for b in tutorial_blocks() if "register_dataset" in b]
    (tmp_path / "squares.py").write_text(block)
    try:
        study = load_study(spec(tmp_path, ["squares.py"], dataset="squares", model="linear", train_size=1000))
        with pytest.raises(SpecError, match=r"fixed.train_size: 5000 exceeds the 2000 training images"):
            load_study(spec(tmp_path, ["squares.py"], dataset="squares", train_size=5000))
        data = classifier.load_data(study.cells)
        assert data["squares"].input_shape == (1, 16, 16) and data["squares"].num_classes == 4
        cfg = classifier.ClassifierConfig(**{k: v for k, v in study.cells[0].items()
                                             if k in classifier.ClassifierConfig.model_fields})
        splits = classifier.make_splits(data["squares"], cfg, torch.device("cpu"))
        assert splits["train"].inputs(splits["train"].idx[:3]).shape == (3, 1, 16, 16)
        assert classifier.model_params(study.cells[0]) == 16 * 16 * 4 + 4
    finally:
        DATASETS.pop("squares", None)


def test_the_tutorials_code_is_the_examples_code_or_runs():
    """docs/own-experiments.md's Python: the model is examples/plugins/resmlp.py as it is
    (without its docstring); an excerpt's lines are all in one example plugin, in
    order; the dataset block runs (above); nothing else."""
    examples = {p.name: p.read_text() for p in (REPO / "examples" / "plugins").glob("*.py")}
    blocks = tutorial_blocks()
    body = examples["resmlp.py"].split('"""', 2)[2].lstrip("\n")
    assert blocks[0] == body and len(body.strip().splitlines()) <= 25  # "a model in about 20 lines"
    for block in blocks[1:]:
        if "register_dataset" in block or block.startswith("np.savez("):
            continue
        lines = [line.strip() for line in block.splitlines() if line.strip() and "..." not in line]
        homes = [name for name, text in examples.items() if _in_order(lines, [t.strip() for t in text.splitlines()])]
        assert homes, f"a tutorial block that is in no example plugin:\n{block}"


def _in_order(lines: list[str], text: list[str]) -> bool:
    position = 0
    for line in lines:
        try:
            position = text.index(line, position) + 1
        except ValueError:
            return False
    return True
