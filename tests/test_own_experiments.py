"""Your own experiments through the real CLI on a local Ray: a plugin model and the
built-ins on a CIFAR-shaped .npz dataset (3x32x32, 100 classes), the plugins' hashes
in every trial's results, and a changed plugin refused on rerun unless accepted
(--fresh, a new folder beside it, is tests/test_plugins.py's). The example study (examples/own.yaml) runs in tests/test_e2e.py and,
submitted to a two-node cluster, in tests/test_cluster.py.

    .venv/bin/python -m pytest -q tests/test_own_experiments.py
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

pytestmark = pytest.mark.study  # runs studies on Ray: left out of `make test-fast`

REPO = Path(__file__).resolve().parent.parent

PLUGIN = """import gensweep
from torch import nn


class Args(gensweep.ModelArgs):
    width: int = 8  # conv channels


@gensweep.register_model("tiny_conv", Args)
def tiny_conv(input_shape, num_classes, width):
    return nn.Sequential(nn.Conv2d(input_shape[0], width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                         nn.Flatten(), nn.Linear(4 * width, num_classes))


@gensweep.register_figure("params_bars")
def params_bars(history, trials, fig_spec, path):
    import matplotlib.pyplot as plt
    from analysis.figures import save_figure

    fig, ax = plt.subplots(figsize=(5, 3))
    ax.bar(trials["arch"].astype(str), trials["n_params"])
    ax.set_yscale("log")
    save_figure(fig, fig_spec, path)
    return path
"""


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sweeps", *args], cwd=REPO, capture_output=True, text=True, timeout=400)


@pytest.fixture(scope="module")
def cifar_like(tmp_path_factory):
    """A study folder trained on a tiny 3x32x32, 100-class .npz with four models."""
    folder = tmp_path_factory.mktemp("own")
    rng = np.random.default_rng(0)
    # learnable: each class has its own mean colour
    train_y, test_y = np.arange(400) % 100, np.arange(200) % 100
    colours = rng.integers(0, 256, (100, 3, 1, 1))
    noise = lambda n: rng.integers(-40, 40, (n, 3, 32, 32))  # noqa: E731
    np.savez(folder / "cifar_like.npz",
             train_x=np.clip(colours[train_y] + noise(400), 0, 255).astype(np.uint8), train_y=train_y,
             test_x=np.clip(colours[test_y] + noise(200), 0, 255).astype(np.uint8), test_y=test_y)
    (folder / "tiny_conv.py").write_text(PLUGIN)
    spec = {"name": "cifar_like", "family": "classifier", "plugins": ["tiny_conv.py"],
            "fixed": {"dataset": {"npz": "cifar_like.npz"}, "epochs": 2, "batch_size": 50, "lr": 0.05},
            "grid": {"arch": [{"name": "mlp", "model": "mlp", "hidden": [32]}, {"name": "linear", "model": "linear"},
                              {"name": "cnn_small", "model": "cnn_small", "channels": [8, 16]},
                              {"name": "tiny_conv", "model": "tiny_conv"}]},
            "seeds": [0], "figures": [{"kind": "final", "x": "arch", "y": ["test_acc"]}, {"kind": "params_bars"}]}
    (folder / "cifar_like.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    proc = cli("run", str(folder / "cifar_like.yaml"), "--results", str(folder / "results"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return folder, proc


def test_a_cifar_shaped_npz_trains_the_built_ins_and_a_plugin_model(cifar_like):
    folder, _ = cifar_like
    trials = pd.read_parquet(folder / "results" / "cifar_like" / "trials.parquet").set_index("arch")
    assert sorted(trials.index) == ["cnn_small", "linear", "mlp", "tiny_conv"] and (trials["status"] == "ok").all()
    # built for 3x32x32 inputs and 100 classes, with no keys saying so
    assert trials.loc["linear", "n_params"] == 3 * 32 * 32 * 100 + 100
    assert trials.loc["mlp", "n_params"] == 3072 * 32 + 32 + 32 * 100 + 100
    assert trials.loc["cnn_small", "n_params"] == (27 * 8 + 8) + (72 * 16 + 16) + (16 * 100 + 100)
    assert trials.loc["tiny_conv", "n_params"] == (27 * 8 + 8) + (32 * 100 + 100)
    # 100 classes of distinct colours: every model's training loss falls over the two
    # epochs, and the dense ones are well above chance (1%) already
    history = pd.read_parquet(folder / "results" / "cifar_like" / "history.parquet")
    by_epoch = history.pivot(index="arch", columns="epoch", values="train_loss")
    assert (by_epoch[2] < by_epoch[1]).all(), by_epoch
    assert (trials.loc[["linear", "mlp"], "final_train_acc"] > 0.1).all(), trials["final_train_acc"]
    sha = hashlib.sha256((folder / "tiny_conv.py").read_bytes()).hexdigest()
    assert (trials["plugin_sha256"] == f"tiny_conv.py={sha}").all()


def test_report_draws_the_plugins_figure_kind_from_the_study_record(cifar_like, tmp_path):
    """`gensweep report` alone (a new process, no spec) imports the plugins that
    study.json records; without the file, that kind is refused by name."""
    folder, _ = cifar_like
    study = folder / "results" / "cifar_like"
    png = study / "report" / "02-params_bars.png"
    assert png.stat().st_size > 5_000
    png.unlink()
    proc = cli("report", str(study))
    assert proc.returncode == 0 and png.exists(), proc.stderr[-2000:]
    moved = tmp_path / "tiny_conv.py"
    (folder / "tiny_conv.py").rename(moved)
    try:
        proc = cli("report", str(study))
    finally:
        moved.rename(folder / "tiny_conv.py")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0] == ("error: figure kind 'params_bars' is not registered: the plugin that adds it "
                        "(see study.json's plugins) is missing")


def test_a_changed_plugin_is_refused_then_accepted_and_recorded(cifar_like):
    folder, _ = cifar_like
    study = folder / "results" / "cifar_like"
    record = json.loads((study / "study.json").read_text())
    old = record["plugins"][0]["sha256"]
    plugin = folder / "tiny_conv.py"
    plugin.write_text(PLUGIN.replace("width: int = 8", "width: int = 8  # unchanged value, changed file"))
    new = hashlib.sha256(plugin.read_bytes()).hexdigest()
    before = sorted((p.name, p.stat().st_mtime_ns) for p in study.rglob("*"))
    refused = cli("run", str(folder / "cifar_like.yaml"), "--results", str(folder / "results"))
    lines = refused.stderr.strip().splitlines()
    assert refused.returncode == 2 and len(lines) == 1, refused.stderr
    assert lines[0] == (f"error: {plugin}: plugin changed since the cells in {study} ran (sha256 {old[:12]} -> "
                        f"{new[:12]}); run with --fresh to start a new study, or with --accept-plugin-change "
                        f"to keep its results and record the change")
    assert sorted((p.name, p.stat().st_mtime_ns) for p in study.rglob("*")) == before  # nothing touched
    accepted = cli("run", str(folder / "cifar_like.yaml"), "--results", str(folder / "results"), "--accept-plugin-change")
    assert accepted.returncode == 0, accepted.stderr[-2000:]
    assert "plugin changed" in accepted.stdout and "all 4 trials are done" in accepted.stdout
    record = json.loads((study / "study.json").read_text())
    assert record["plugins"][0]["sha256"] == new
    [change] = record["plugin_changes"]
    assert (change["plugin"], change["from"], change["to"]) == ("tiny_conv.py", old, new)
    # now the recorded version: a plain rerun goes through
    again = cli("run", str(folder / "cifar_like.yaml"), "--results", str(folder / "results"))
    assert again.returncode == 0, again.stderr[-2000:]
